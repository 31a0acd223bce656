"""Stop fairseq's batch-prefetch threads before the interpreter shuts down.

fairseq's ``BufferedIterator`` fills its queue from a daemon thread. When ``fairseq-train`` returns
while that thread is inside a torch op (collating a batch), the interpreter kills the thread in the
middle of C++ code and the process aborts with "terminate called without an active exception"
(exit status -6) after an otherwise successful run, which breaks ``set -e`` recipes. At exit, this
module lets every such thread finish the batch in hand and return, by draining its queue.
"""
import atexit
import queue
import threading
import time

_installed = False


def stop_prefetch_threads(timeout: float = 10.0) -> int:
    """Let every live fairseq prefetch thread return; returns how many were still running."""
    from fairseq.data.iterators import BackgroundConsumer

    consumers = [t for t in threading.enumerate() if isinstance(t, BackgroundConsumer) and t.is_alive()]
    for thread in consumers:
        thread._max_len = 1  # its loop breaks after the next put, then it puts its end marker and returns
    deadline = time.monotonic() + timeout
    for thread in consumers:
        while thread.is_alive() and time.monotonic() < deadline:
            _drain(thread._queue)  # a full queue would block that put forever
            thread.join(0.01)
    return len(consumers)


def _drain(items: queue.Queue) -> None:
    try:
        while True:
            items.get_nowait()
    except queue.Empty:
        pass


def install() -> None:
    """Register the exit hook once (atexit runs before daemon threads are torn down)."""
    global _installed
    if not _installed:
        atexit.register(stop_prefetch_threads)
        _installed = True
