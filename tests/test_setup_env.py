"""scripts/setup_env.sh: one setup of a virtualenv at a time (two commands started at once in a fresh clone,
the tests and the demo, used to build one venv twice and fail with "No module named pip")."""
import fcntl
import hashlib
import os
import subprocess
import sys
import time

from conftest import ROOT


def test_a_second_setup_waits_for_the_first(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")
    with open(os.path.join(ROOT, "setup.py"), "rb") as a, open(os.path.join(ROOT, "scripts", "setup_env.sh"), "rb") as b:
        stamp = hashlib.sha256(a.read() + b.read()).hexdigest()[:16]
    (venv / ".fairseq-slt-installed").write_text(stamp + "\n")  # set up already: the script only prints it
    command = ["bash", os.path.join(ROOT, "scripts", "setup_env.sh")]
    environment = dict(os.environ, SLT_VENV=str(venv))
    assert subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60).stdout == f"{venv}\n"

    first = os.open(venv / ".setup.lock", os.O_WRONLY | os.O_CREAT)  # a setup in progress holds the lock
    fcntl.flock(first, fcntl.LOCK_EX)
    try:
        second = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, text=True)
        time.sleep(2)
        assert second.poll() is None  # waits instead of building the same venv beside the first
    finally:
        os.close(first)
    assert second.communicate(timeout=60)[0] == f"{venv}\n" and second.returncode == 0
