"""Shared fixtures: a small slice of Multi30k, a tiny transformer, and helpers that run fairseq's CLIs."""
import argparse
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(ROOT, "fairseq_slt")
MULTI30K = os.environ.get("MULTI30K_DIR", os.path.join(ROOT, "..", "shared", "data", "multi30k"))
BIN = os.path.dirname(sys.executable)
# fairseq-train/-generate/-preprocess and fairseq-slt run through tests/launcher.py (a fork server: fairseq imported once); the
# shims on PATH make every caller, the iterate driver included, use it. FAIRSEQ_SLT_TEST_LAUNCHER=0: plain.
SHIMS = tempfile.mkdtemp(prefix="slt-shims-")
LAUNCHED = ("fairseq-train", "fairseq-generate", "fairseq-preprocess", "fairseq-slt")
USE_LAUNCHER = os.environ.get("FAIRSEQ_SLT_TEST_LAUNCHER", "1") != "0"

TINY_MODEL = (
    "--arch transformer --encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 32 --decoder-embed-dim 32 "
    "--encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 --encoder-attention-heads 2 "
    "--decoder-attention-heads 2 --share-all-embeddings"
).split()
TRAINING = (
    "--optimizer adam --adam-betas (0.9,0.98) --lr 0.003 --lr-scheduler inverse_sqrt --warmup-updates 4 "
    "--weight-decay 0.01 --max-tokens 1500 --label-smoothing 0.1 --seed 1 --cpu --num-workers 0 "
    "--no-progress-bar --log-interval 2 --log-format simple --no-epoch-checkpoints"
).split()


def env():
    variables = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    variables["PATH"] = os.pathsep.join([SHIMS, BIN, variables.get("PATH", "")])
    return variables


@pytest.fixture(scope="session", autouse=True)
def launcher():
    """Starts the fork server and writes the shims (one per tool in LAUNCHED) that use it."""
    socket_path = os.path.join(SHIMS, "server.sock")
    server = None
    if USE_LAUNCHER:
        server = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "launcher.py"), "serve", socket_path],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env(), text=True)
        for line in server.stdout:  # fairseq logs a line or two while it is imported
            if line.strip() == "ready":
                break
        assert server.poll() is None, "the launcher did not start"
    for tool in LAUNCHED:
        target = (f'"{sys.executable}" "{os.path.join(ROOT, "tests", "launcher.py")}" run "{socket_path}" {tool}'
                  if server else f'"{os.path.join(BIN, tool)}"')
        with open(os.path.join(SHIMS, tool), "w") as shim:
            shim.write(f'#!/bin/sh\nexec {target} "$@"\n')
        os.chmod(os.path.join(SHIMS, tool), 0o755)
    yield
    if server:
        server.stdin.close()
        server.wait(timeout=60)
    shutil.rmtree(SHIMS, ignore_errors=True)


def tool_path(tool):
    return os.path.join(SHIMS if tool in LAUNCHED else BIN, tool)


# scoring the tiny models of a few updates: they never end a sentence, and fairseq's default 200 steps a
# hypothesis were most of each scoring's time (2.5 of 4 s); 20 tokens give the same pipeline
SHORT_HYPOTHESES = "--max-len-a 0 --max-len-b 20"


def short_generate(tool=None):
    """A --generate-command (or the recipes' GENERATE_COMMAND) that cuts hypotheses at 20 tokens; fairseq-generate
    through the tests' fork server unless ``tool`` names another command."""
    return f"{tool or tool_path('fairseq-generate')} {SHORT_HYPOTHESES}"


def run_tool(tool, *args, cwd=None, check=True, extra_env=None):
    result = subprocess.run([tool_path(tool), *map(str, args)], cwd=cwd or ROOT, env={**env(), **(extra_env or {})},
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{tool} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def train(data, save_dir, *extra, check=True, max_update=12, model=TINY_MODEL, cwd=None, extra_env=None, cpu=True):
    return run_tool("fairseq-train", *train_args(data, save_dir, *extra, max_update=max_update, model=model, cpu=cpu),
                    check=check, cwd=cwd, extra_env=extra_env)


def train_args(data, save_dir, *extra, max_update=12, model=TINY_MODEL, cpu=True):
    training = TRAINING if cpu else [a for a in TRAINING if a != "--cpu"]
    return [data, "--user-dir", USER_DIR, "--task", "translation_slt", "--criterion", "label_smoothed_cross_entropy_slt",
            *model, *training, "--max-update", max_update, "--save-dir", save_dir, *extra]


def wait_until_unlocked(folder, timeout=60):
    """Until no live run holds ``folder``'s lock (a killed trainer may take a moment to go)."""
    deadline = time.time() + timeout
    fd = os.open(folder, os.O_RDONLY)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.time() < deadline, f"{folder} is still locked"
                time.sleep(0.05)
    finally:
        os.close(fd)


def train_killed_when(data, save_dir, appears, *extra, max_update=12):
    """fairseq-train killed (SIGKILL) as soon as the file ``appears`` exists: an interrupted run."""
    process = subprocess.Popen([tool_path("fairseq-train"), *map(str, train_args(data, save_dir, *extra,
                                                                                 max_update=max_update))],
                               cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not os.path.exists(appears) and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, f"the run ended before {appears} appeared:\n{process.communicate()[0][-3000:]}"
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0]
    wait_until_unlocked(save_dir)
    return output


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_ranks(data, save_dir, *extra, world_size=2, max_update=12, timeout=300, rank_extra=None, kill_when=None):
    """fairseq-train as ``world_size`` CPU processes over gloo on 127.0.0.1 (one per rank); their results.

    ``rank_extra``: rank -> more options for that rank only; ``kill_when``: a file whose appearance ends
    every rank (SIGKILL), as an interrupted job."""
    port, processes = free_port(), []
    for rank in range(world_size):
        args = train_args(data, save_dir, *extra, *(rank_extra or {}).get(rank, []), "--distributed-world-size",
                          world_size, "--distributed-rank", rank, "--distributed-no-spawn", "--distributed-backend",
                          "gloo", "--distributed-init-method", f"tcp://127.0.0.1:{port}", max_update=max_update)
        processes.append(subprocess.Popen([tool_path("fairseq-train"), *map(str, args)], cwd=ROOT, env=env(),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        if kill_when:
            deadline = time.time() + timeout
            while not os.path.exists(kill_when) and all(p.poll() is None for p in processes):
                assert time.time() < deadline, f"{kill_when} did not appear"
                time.sleep(0.02)
            for process in processes:
                process.send_signal(signal.SIGKILL)
        for process in processes:
            stdout, stderr = process.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
        if kill_when:
            wait_until_unlocked(save_dir)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


def load(path):
    torch.serialization.add_safe_globals([argparse.Namespace])
    return torch.load(path, map_location="cpu", weights_only=True)


def log_values(stdout, key):
    return [float(v) for v in re.findall(rf"\b{key}[ =]([-\d.e]+)", stdout)]


def bits(tensor):
    """An fp32 tensor's bits as int32 (equal bits, not equal values: -0.0 is not +0.0); others as they are."""
    return tensor.view(torch.int32) if tensor.dtype == torch.float32 else tensor


def one_error_line(result, *fragments):
    """A tool's refusal: not status 0, no traceback, one line on stderr holding every fragment."""
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(fragment in lines[0] for fragment in fragments), result.stderr[-2000:]


@pytest.fixture(scope="session", autouse=True)
def user_dir_is_this_checkout(launcher):
    """'--user-dir fairseq_slt' (relative) resolves beside fairseq's package: link it to this checkout, so no test
    depends on which checkout the virtualenv's link pointed at before."""
    import fairseq

    run_tool("fairseq-slt", "link-user-dir")
    beside = os.path.join(os.path.dirname(os.path.dirname(fairseq.__file__)), "fairseq_slt")
    assert os.path.realpath(beside) == os.path.realpath(USER_DIR), f"{beside} is not this checkout's plugin"


@pytest.fixture(scope="session")
def data_bin(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi30k")
    run_tool("fairseq-slt", "prepare", "--raw-dir", MULTI30K, "--out", out, "--train-lines", 2000,
             "--eval-lines", 100, "--vocab-size", 1000)
    return str(out / "data-bin")


@pytest.fixture(scope="session")
def dense_run(data_bin, tmp_path_factory):
    """A dense run that saved rewind points 0 and 4, and kept checkpoints at updates 8 and 16 (a curve)."""
    save = str(tmp_path_factory.mktemp("dense"))
    result = train(data_bin, save, "--prune-method", "none", "--save-rewind-points", "0,4", "--save-interval-updates",
                   8, "--keep-interval-updates", -1, max_update=16)
    return {"dir": save, "stdout": result.stdout, "best": os.path.join(save, "checkpoint_best.pt"),
            "last": os.path.join(save, "checkpoint_last.pt"),
            "rewind0": os.path.join(save, "checkpoint_rewind_0.pt"),
            "rewind4": os.path.join(save, "checkpoint_rewind_4.pt")}


@pytest.fixture(scope="session")
def slt_run(data_bin, dense_run, tmp_path_factory):
    """SLT at 80 % from the dense run, saving its own rewind point 0 (its starting weights)."""
    save = str(tmp_path_factory.mktemp("slt"))
    result = train(data_bin, save, "--prune-method", "slt", "--prune-sparsity", "0.8",
                   "--prune-mask-from", dense_run["best"], "--prune-rewind-from", dense_run["rewind4"],
                   "--save-rewind-points", "0,4")
    return {"dir": save, "stdout": result.stdout, "best": os.path.join(save, "checkpoint_best.pt")}


@pytest.fixture(scope="module")
def slt_model(data_bin, slt_run):
    """The SLT run's best checkpoint loaded in eval mode with its translation_slt task (test subset loaded), prepared
    for inference as fairseq-generate does: (task, model)."""
    from fairseq import checkpoint_utils
    from omegaconf import OmegaConf
    import fairseq_slt.tasks  # noqa: F401  (registers translation_slt)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([slt_run["best"]], arg_overrides={"data": data_bin})
    task.load_dataset("test")
    model = models[0].eval()
    model.prepare_for_inference_(OmegaConf.create({"generation": {"beam": 5}}))
    return task, model
