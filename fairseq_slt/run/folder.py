"""A save dir belongs to one run: a lock while a run is live, and the run's identity in ``run.json``.

The identity is what makes a run this run (method, sparsity, sources, schedule, controls, seeds,
dictionaries). A command whose identity differs from the one recorded in its save dir is refused
before anything is written. No fairseq import here.
"""
import fcntl
import importlib.metadata
import json
import logging
import os
import platform
import re
import sys
import time
from typing import List, Optional

from ..checkpoints import Checkpoint
from ..pruning import UserError, atomic_write_json, atomic_write_stream, atomic_write_text
from .options import identity_default, option_of

logger = logging.getLogger(__name__)

MANIFEST = "run.json"
DONE = ".done"  # written when a run or stage has finished (by iterate and the recipes' train_stage)
LAST = "checkpoint_last.pt"

_held = {}  # path -> fd: locks live as long as the process


def lock(folder: str, what: str = "save dir") -> None:
    """Exclusive lock on ``folder`` for this process's life (flock on the folder itself: no file written).

    Released by the kernel when the process ends, however it ends."""
    path = os.path.realpath(folder)
    if path in _held:
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"{what} {folder} is in use by another live run; wait for it to end or use another "
                           f"{what}") from None
    _held[path] = fd


def read_manifest(save_dir: str, hint: str = "it records which run owns this folder") -> Optional[dict]:
    """The record of the run that owns ``save_dir`` (identity, command, when it started): run.json, else
    for dirs written before run.json existed the identity stored in checkpoint_last.pt (a checkpoint
    without plugin state is a dense run). None for a dir no run has claimed yet; ``hint``: what the
    one-line error about a broken run.json tells the user to do."""
    manifest = os.path.join(save_dir, MANIFEST)
    if os.path.isfile(manifest):
        try:
            with open(manifest) as handle:
                recorded = json.load(handle)
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise UserError(f"{manifest} is not a readable JSON file ({type(err).__name__}): {hint}") from None
        if not isinstance(recorded, dict) or not isinstance(recorded.get("identity"), dict):
            raise UserError(f"{manifest} has no run identity: {hint}")
        return recorded
    last = os.path.join(save_dir, LAST)
    if os.path.isfile(last):
        state = Checkpoint(last, "checkpoint", mmap=True).task_state
        return {"identity": state.get("identity") or state.get("fingerprint") or {"method": "none"}, "command": None}
    return None


def recorded_identity(save_dir: str) -> Optional[dict]:
    record = read_manifest(save_dir)
    return record["identity"] if record is not None else None


def is_done(folder: str) -> bool:
    """A run or stage the recipes, iterate and results count as finished (its ``.done`` marker)."""
    return os.path.isfile(os.path.join(folder, DONE))


def mark_done(folder: str) -> None:
    atomic_write_text("", os.path.join(folder, DONE))


def differences(recorded: dict, current: dict) -> List[str]:
    """'--option: A in the save dir, B here' for each identity key that differs. Of the same method, a key
    only one side records (one given only when set, as --prune-pattern, or newer than the other's version)
    counts as its option's default on the other side; of another method, the method's line says it."""
    same_method = recorded.get("method") == current.get("method")
    keys = list(current) + [k for k in recorded if k not in current] if same_method else \
        [k for k in current if k in recorded]
    lines = []
    for key in keys:
        there, here = (side[key] if key in side else identity_default(key) for side in (recorded, current))
        if there != here:
            lines.append(f"{option_of(key)} {_show(there)} there, {_show(here)} here")
    return lines


def claim(save_dir: str, identity: dict, is_master: bool, writes: bool = True) -> bool:
    """Lock the save dir (rank 0) and check that it belongs to this run; True when it already does
    (a run to resume), False for a dir nobody has claimed. Writes nothing. ``writes``: False for a run that
    will write nothing there (--no-save): no lock, and a torn checkpoint_last.pt is left as it is."""
    if not is_master:  # rank 0 owns the dir; other ranks are checked against rank 0 by checksums at start
        return os.path.isfile(os.path.join(save_dir, LAST))
    os.makedirs(save_dir, exist_ok=True)  # as fairseq-train does first; a model built in a script may come first
    if writes:
        lock(save_dir)
    recorded = recorded_identity(save_dir)
    if recorded is None:
        return False
    changed = differences(recorded, identity)
    if changed:
        raise UserError(f"--save-dir {save_dir} belongs to another run ({'; '.join(changed)}): use another "
                           "--save-dir, or the options that run was started with")
    if writes:
        recover_last(save_dir, recorded)
    return True


def recover_last(save_dir: str, identity: dict) -> Optional[str]:
    """fairseq saves one checkpoint whole, then copies it to the others (``checkpoint_last.pt`` last). A save
    stopped in between (a full disk, a kill) leaves ``checkpoint_last.pt`` older than that checkpoint, or
    missing, and fairseq would resume from the older state or from scratch. The newest whole checkpoint of
    this run (more updates, written later) becomes ``checkpoint_last.pt`` again; returns its path."""
    last = os.path.join(save_dir, LAST)
    newest_updates, newest_time, existed = -1, 0.0, os.path.isfile(last)
    if existed:
        newest_updates = _updates(last)
        newest_time = os.path.getmtime(last) if newest_updates >= 0 else 0.0  # torn: any whole one is newer
    found = None
    for path in _saved_checkpoints(save_dir):
        if os.path.getmtime(path) <= newest_time:
            continue
        try:
            checkpoint = Checkpoint(path, "checkpoint", mmap=True)
        except UserError:
            continue  # not whole: not a state to resume
        owner = checkpoint.task_state.get("identity") or {"method": "none"}
        updates = checkpoint.num_updates
        if updates is not None and updates > newest_updates and not differences(owner, identity):
            found, newest_updates = path, updates
    if found is not None:
        with open(found, "rb") as source:
            atomic_write_stream(source, last)
        why = "was older than it (a save that did not finish)" if existed else "was missing (--no-last-checkpoints?)"
        logger.info(f"resuming from update {newest_updates} of {os.path.basename(found)}: {LAST} {why}")
    return found


def _saved_checkpoints(save_dir: str) -> List[str]:
    """checkpoint_best.pt, the newest interval checkpoint (checkpoint_E_U.pt) and the newest epoch one."""
    names = os.listdir(save_dir)
    interval = [(int(m.group(1)), n) for n in names if (m := re.fullmatch(r"checkpoint_\d+_(\d+)\.pt", n))]
    epoch = [(int(m.group(1)), n) for n in names if (m := re.fullmatch(r"checkpoint(\d+)\.pt", n))]
    chosen = [n for n in ["checkpoint_best.pt"] if n in names] + [max(group)[1] for group in (interval, epoch) if group]
    return [os.path.join(save_dir, name) for name in chosen]


def _updates(path: str) -> int:
    try:
        return Checkpoint(path, "checkpoint", mmap=True).num_updates or 0
    except UserError:
        return -1  # torn: any whole checkpoint is newer


def write_manifest(save_dir: str, identity: dict) -> None:
    """Record the run's identity (once: an existing manifest of the same run is kept as it is)."""
    path = os.path.join(save_dir, MANIFEST)
    if os.path.isfile(path):
        return
    atomic_write_json({"format": "fairseq-slt-run", "version": 1, "identity": identity, "command": sys.argv,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": environment()}, path)


def environment() -> dict:
    """What the same command's floats depend on besides the seed: the processor and the kernels torch picks
    for it, the threads, the library versions (the same run on two processors differs measurably)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for package in ("torch", "fairseq-fixed", "fairseq"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(), **versions}


def _show(value) -> str:
    return "none" if value is None else str(value)
