"""``fairseq-slt unpack``: an archive of ``fairseq-slt pack`` -> the run folder again, every checkpoint a
standard fairseq checkpoint (bit-identical fp32 weights and mask, no optimizer state)."""
import os
import shutil
import tarfile
import tempfile

from ..checkpoints import from_compact
from ..pruning import UserError, atomic_save, safe_load
from ..pruning.io import TEMPORARY
from ..pruning.compact import is_compact
from ..run import folder as run_folder
from .pack import SAME_WEIGHTS


def add_arguments(parser):
    parser.add_argument("archive", metavar="ARCHIVE", help="an archive written by fairseq-slt pack")
    parser.add_argument("run", metavar="RUN", help="the run folder to restore it to (must not exist, or be empty)")
    parser.add_argument("--force", action="store_true", help="replace RUN if it has files")


def main(args):
    count = unpack(args.archive, args.run, args.force)
    print(f"unpacked {args.archive}: {count} files in {args.run}")
    return 0


def unpack(archive_path: str, run: str, force: bool = False) -> int:
    if not os.path.isfile(archive_path):
        raise UserError(f"archive not found: {archive_path}")
    if os.path.isdir(run) and os.listdir(run) and not force:
        raise UserError(f"{run} exists and has files; pass --force to replace it")
    if os.path.exists(run) and not os.path.isdir(run):
        raise UserError(f"{run} exists and is not a folder")
    if os.path.isdir(run):
        run_folder.lock(run, "run folder")  # never replaced under a live run
    parent = os.path.dirname(os.path.abspath(run))
    made = None  # the highest folder this call creates: removed again if the archive is refused
    if not os.path.exists(parent):
        made = parent
        while not os.path.exists(os.path.dirname(made)):
            made = os.path.dirname(made)
        os.makedirs(parent)
    staging = tempfile.mkdtemp(prefix=TEMPORARY + "unpack-", dir=parent)  # filled whole, then renamed into place
    try:
        count = _extract(archive_path, staging)
        if os.path.isdir(run):
            old = tempfile.mkdtemp(prefix=TEMPORARY + "replaced-", dir=parent)
            os.replace(run, os.path.join(old, "run"))
            os.replace(staging, run)
            shutil.rmtree(old)
        else:
            os.replace(staging, run)
    except BaseException:
        if made:
            shutil.rmtree(made, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return count


def _extract(archive_path: str, into: str) -> int:
    try:
        with tarfile.open(archive_path, "r:gz") as archive:
            members = archive.getmembers()
            for member in members:
                if not member.isfile():
                    raise UserError(f"{archive_path} holds {member.name!r}, which is not a plain file: not an "
                                    "archive of fairseq-slt pack")
            archive.extractall(into, filter="data")  # refuses absolute paths and paths leaving the folder
    except (tarfile.TarError, EOFError, OSError) as err:
        raise UserError(f"cannot read archive {archive_path}: {type(err).__name__}: {err}") from None
    compact = {}  # member -> its compact state, for the members that refer to its weights
    for member in members:
        path = os.path.join(into, member.name)
        if not path.endswith(".pt"):
            continue
        what = f"{member.name} in {archive_path}"
        state = safe_load(path, what)
        if isinstance(state, dict) and state.get("format") == SAME_WEIGHTS:
            if state.get("weights_of") not in compact:
                raise UserError(f"{what} refers to weights the archive does not hold before it: not an archive "
                                "of fairseq-slt pack")
            state = dict(compact[state["weights_of"]], checkpoint=state.get("checkpoint"))
        if is_compact(state):
            compact[member.name] = state
            atomic_save(from_compact(state, what), path)
            os.utime(path, (member.mtime, member.mtime))
    return len(members)
