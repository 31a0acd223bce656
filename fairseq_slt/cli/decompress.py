"""``fairseq-slt decompress``: a compact checkpoint -> a standard fairseq checkpoint (no optimizer state)."""
import os
import sys

from ..pruning import PruningError, atomic_save, safe_load
from ..pruning.compact import expand


def add_arguments(parser):
    parser.add_argument("input", metavar="IN", help="a compact checkpoint (fairseq-slt compress)")
    parser.add_argument("output", metavar="OUT", help="the fairseq checkpoint to write "
                        "(weights bit-identical to the original's with fp32 values)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def main(args):
    try:
        if os.path.exists(args.output) and not args.force:
            raise PruningError(f"{args.output} exists; pass --force to overwrite it")
        atomic_save(load_compact(args.input), args.output)
    except PruningError as err:
        sys.exit(f"fairseq-slt decompress: error: {err}")
    print(f"wrote {args.output} ({os.path.getsize(args.output):,} bytes)")
    return 0


def load_compact(path: str, mmap: bool = False) -> dict:
    """A compact checkpoint file as the fairseq checkpoint it was made from (checksum verified)."""
    source = f"compact checkpoint {path}"
    state = safe_load(path, "compact checkpoint", mmap=mmap)
    return dict(state.get("checkpoint") or {}, model=expand(state, source)) if isinstance(state, dict) \
        else expand(state, source)
