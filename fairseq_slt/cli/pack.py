"""``fairseq-slt pack``: a finished run folder -> one archive to keep or move (``fairseq-slt unpack`` restores it).

Every checkpoint in it becomes a compact file (bit-exact fp32 weights, the mask as its matrices' bitmaps, tied
tensors once) without what only training needs (optimizer state, meters); every other file is kept as it is.
A run restored from it is scored, reported and used as a mask or rewind source as the original; it is not
trained further. A gzipped tar of plain files, so ``tar -tzf`` lists it."""
import io
import os
import tarfile

import torch

from ..checkpoints import Checkpoint, inference_state
from ..pruning import UserError, atomic_write_stream, safe_load
from ..pruning.compact import aliases, compress, is_compact
from ..pruning.enforce import bits
from ..pruning.io import TEMPORARY, refuse_overwrite
from ..run import folder as run_folder
from .results import finished

SAME_WEIGHTS = "fairseq-slt-pack-same-weights"  # a checkpoint whose weights and mask are an earlier one's


def add_arguments(parser):
    parser.add_argument("run", metavar="RUN", help="a finished run's save dir (fairseq-train --save-dir)")
    parser.add_argument("output", metavar="OUT", help="the archive to write (e.g. run.tar.gz)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def main(args):
    refuse_overwrite(args.output, args.force)
    report = pack(args.run, args.output)
    print(f"packed {report['files']} files of {args.run} ({report['checkpoints']} checkpoints compact): "
          f"{report['bytes_before']:,} -> {report['bytes_after']:,} bytes in {args.output}")
    return 0


def pack(run: str, output: str) -> dict:
    if not os.path.isdir(run):
        raise UserError(f"no such run folder: {run}")
    if run_folder.read_manifest(run) is None:
        raise UserError(f"{run} is not a run folder (no {run_folder.MANIFEST} or {run_folder.LAST})")
    why = finished(run)
    if why is not None:
        raise UserError(f"{run} is not finished ({why}): pack keeps no optimizer state, so only a finished run "
                        "can be packed")
    run_folder.lock(run, "run folder")  # no live run writes into it while it is read
    buffer, files, checkpoints, before = io.BytesIO(), 0, 0, 0
    packed = {}  # checksum of a compact state -> the archive member holding it (best and last are often equal)
    ties = _ties(run)
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path, name in _files(run):
            data, compacted = _packed(path, name, packed, ties)
            info = tarfile.TarInfo(name)
            stat = os.stat(path)
            info.size, info.mtime, info.mode = len(data), int(stat.st_mtime), stat.st_mode & 0o777
            archive.addfile(info, io.BytesIO(data))
            files, checkpoints, before = files + 1, checkpoints + compacted, before + stat.st_size
    buffer.seek(0)
    atomic_write_stream(buffer, output)
    return {"files": files, "checkpoints": checkpoints, "bytes_before": before, "bytes_after": os.path.getsize(output)}


def _files(run: str):
    """(path, name in the archive) of every file under ``run``, sorted; anything but plain files is refused."""
    for root, dirs, files in os.walk(run):
        dirs.sort()
        for entry in sorted(dirs + files):
            path = os.path.join(root, entry)
            if os.path.islink(path) or not (os.path.isdir(path) or os.path.isfile(path)):
                raise UserError(f"{path} is not a plain file or folder: pack takes only those")
        for entry in sorted(files):
            if not entry.startswith(TEMPORARY):
                yield os.path.join(root, entry), os.path.relpath(os.path.join(root, entry), run)


def _ties(run: str) -> dict:
    """name -> the name it is tied to, as the run's fairseq checkpoints store them (one tensor, several names)."""
    path = os.path.join(run, "checkpoint_best.pt")
    if not os.path.isfile(path):
        return {}
    return {name: first for name, first in aliases(Checkpoint(path, mmap=True).model).items() if first != name}


def _packed(path: str, name: str, packed: dict, ties: dict):
    """(bytes to store, whether they are a compacted checkpoint); a checkpoint whose weights and mask were
    packed already refers to them."""
    if path.endswith(".pt"):
        state = safe_load(path, "checkpoint")
        if isinstance(state, dict) and isinstance(state.get("model"), dict) and not is_compact(state):
            model = state["model"]
            for tied, first in ties.items():  # rewind points written before they kept ties: one copy again
                if tied in model and first in model and model[tied].shape == model[first].shape and torch.equal(
                        bits(model[tied]), bits(model[first])):  # equal bits: -0.0 is not +0.0
                    model[tied] = model[first]
            checkpoint = Checkpoint(path, state=state)
            mask = checkpoint.mask()
            compact, _ = compress(checkpoint.model, inference_state(state), "fp32",
                                  masks=mask if mask is not None else {}, dense_ok=True)
            if compact["sha256"] in packed:  # the checksum covers every weight's bits and the mask's
                compact = {"format": SAME_WEIGHTS, "weights_of": packed[compact["sha256"]],
                           "checkpoint": compact["checkpoint"]}
            else:
                packed[compact["sha256"]] = name
            data = io.BytesIO()
            torch.save(compact, data)
            return data.getvalue(), True
    with open(path, "rb") as handle:
        return handle.read(), False
