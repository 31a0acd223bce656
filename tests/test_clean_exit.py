"""fairseq's batch-prefetch thread must not abort the process at exit (seen as fairseq-train exit -6)."""
import subprocess
import sys
import textwrap
import threading

import torch
from fairseq.data.iterators import BackgroundConsumer, BufferedIterator

from fairseq_slt import clean_exit

# A prefetch thread busy in a long torch op (GIL released) when the main thread returns.
SCRIPT = textwrap.dedent("""
    import sys, torch
    from fairseq.data.iterators import BufferedIterator
    from fairseq_slt import clean_exit
    if sys.argv[1] == "guarded":
        clean_exit.install()
    x = torch.randn(1200, 1200)
    class Batches:  # each item is a long torch op, computed when the prefetch thread asks for it
        def __len__(self):
            return 1000
        def __iter__(self):
            return (x @ x for _ in range(1000))
    items = BufferedIterator(2, Batches())
    next(items)
""")


def test_guarded_exit_is_clean_while_the_unguarded_one_aborts():
    runs = [(mode, subprocess.Popen([sys.executable, "-c", SCRIPT, mode], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True, env={"OMP_NUM_THREADS": "1"}))
            for mode in ("plain", "guarded", "plain", "guarded")]  # in parallel: each import of fairseq takes ~8 s
    codes = {"plain": [], "guarded": []}
    for mode, process in runs:
        stderr = process.communicate(timeout=300)[1]
        codes[mode].append((process.returncode, stderr[-300:]))
    assert all(code == 0 for code, _ in codes["guarded"]), codes["guarded"]
    assert any(code == -6 and "terminate called" in err for code, err in codes["plain"]), codes["plain"]  # the bug is real


def test_stop_prefetch_threads_ends_a_blocked_consumer():
    items = BufferedIterator(3, list(range(100)))  # the queue fills up and the thread blocks in put
    assert next(items) == 0
    assert clean_exit.stop_prefetch_threads(timeout=5) == 1
    assert not any(isinstance(t, BackgroundConsumer) for t in threading.enumerate())
    assert torch.equal(torch.ones(1), torch.ones(1))  # torch still usable afterwards
