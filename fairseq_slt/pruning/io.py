"""Atomic writes and safe (weights-only) loads.  No fairseq import here."""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Any

import torch

# The only pickled global a fairseq checkpoint needs beyond tensors and containers.
SAFE_GLOBALS = [argparse.Namespace]


class UserError(ValueError):
    """What the user must fix (an option, an input file, an output that exists): one line, exit status 2."""


class Failure(RuntimeError):
    """What went wrong although the input was good (a tool it runs failed, a check of its own result):
    one line, exit status 1. A full disk and other OSErrors are reported the same way."""


TEMPORARY = ".tmp-"  # what every temporary file or folder of the package is named from: never a result

def one_line(message) -> str:
    """An error message as one line: a newline in a path (or anywhere) is shown as \\n."""
    return str(message).replace("\r", "\\r").replace("\n", "\\n")


def usage_exit(parser, message: str):
    """An argparse usage error as one line (status 2, as argparse's), for fairseq-slt's parser and fairseq's."""
    parser.exit(2, f"{parser.prog}: error: {one_line(message)} (see {parser.prog} --help)\n")


def user_exit(message) -> SystemExit:
    """Inside fairseq-train/-generate: the refusal's one line on stderr, and the exit (status 2) to raise."""
    print(f"fairseq-slt: error: {one_line(message)}", file=sys.stderr, flush=True)
    return SystemExit(2)


def allow_fairseq_globals() -> None:
    """Allow-list what fairseq checkpoints need for ``torch.load(weights_only=True)``."""
    torch.serialization.add_safe_globals(SAFE_GLOBALS)


def safe_load(path: str, what: str = "checkpoint", mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``; every failure becomes one UserError line.

    ``mmap``: map the file instead of reading it (only the tensors used are read from disk)."""
    if not path or not os.path.isfile(path):
        raise UserError(f"{what} {path} is not a file" if path and os.path.exists(path) else f"{what} not found: {path}")
    # not the safe_globals() context manager: on exit it would drop the process-wide allow-list
    allow_fairseq_globals()
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # any failure to unpickle (garbage bytes raise IndexError, KeyError, ...)
        foreign = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", str(err))
        if foreign:
            raise UserError(f"refusing to load {what} {path}: it carries the pickled global {foreign.group(1)}, "
                               "which is not allow-listed (only tensors, containers and argparse.Namespace are)") from None
        raise UserError(f"cannot read {what} {path}: not a readable torch file ({type(err).__name__})") from None


def refuse_overwrite(path: str, force: bool) -> None:
    """A tool's output file that exists is only replaced with --force."""
    if os.path.exists(path) and not force:
        raise UserError(f"{path} exists; pass --force to overwrite it")


def _atomic_write(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMPORARY, suffix=os.path.basename(path), dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a file written normally gets the user's umask
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    _atomic_write(path, lambda handle: _torch_save(obj, handle))


def _torch_save(obj: Any, handle) -> None:
    """torch.save, but a failed write (a full disk) is raised as itself, not as torch's "unexpected pos"."""
    failures = []

    class Recorded:
        def write(self, data):
            try:
                return handle.write(data)
            except OSError as err:
                failures.append(err)
                raise

        def flush(self):
            handle.flush()

    try:
        torch.save(obj, Recorded())
    except RuntimeError:
        if failures:
            raise failures[0] from None
        raise


def atomic_write_json(obj: Any, path: str) -> None:
    _atomic_write(path, lambda handle: handle.write((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()))


def atomic_write_text(text: str, path: str) -> None:
    _atomic_write(path, lambda handle: handle.write(text.encode()))


def atomic_write_lines(lines, path: str) -> None:
    """Each line and a newline, streamed (a large corpus is never held whole)."""
    def write(handle):
        for line in lines:
            handle.write(line.encode() + b"\n")
    _atomic_write(path, write)


def atomic_write_stream(source, path: str) -> None:
    """Copies an open binary stream (a download, another file) to ``path`` atomically."""
    _atomic_write(path, lambda handle: shutil.copyfileobj(source, handle, 1 << 20))
