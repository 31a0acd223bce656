"""``fairseq-slt decompress``: a compact checkpoint -> a standard fairseq checkpoint (no optimizer state;
the mask, if it was pruned by the plugin, restored from the masked matrices' bitmaps)."""
import os

from ..checkpoints import from_compact
from ..pruning import atomic_save, safe_load
from ..pruning.io import refuse_overwrite


def add_arguments(parser):
    parser.add_argument("input", metavar="IN", help="a compact checkpoint (fairseq-slt compress)")
    parser.add_argument("output", metavar="OUT", help="the fairseq checkpoint to write "
                        "(weights bit-identical to the original's with fp32 values)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def main(args):
    refuse_overwrite(args.output, args.force)
    state = safe_load(args.input, "compact checkpoint")
    atomic_save(from_compact(state, f"compact checkpoint {args.input}"), args.output)
    print(f"wrote {args.output} ({os.path.getsize(args.output):,} bytes)")
    return 0
