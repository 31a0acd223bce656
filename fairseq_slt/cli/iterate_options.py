"""``fairseq-slt iterate``'s options: declared, parsed and checked before anything is written."""
import os
import shlex
import sys

from ..checkpoints import rewind_point_path
from ..pruning import UserError
from ..pruning.methods import COMBINABLE, COMBINED, TABLE
from ..pruning.schedule import check_schedule

COMBINATIONS = tuple(COMBINED.values())  # --combine's choices besides none

DEFAULT_LEVELS = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.85,0.9,0.95,0.98"
RESERVED = ("--save-dir", "--prune-", "--save-rewind-points", "--restore-file")  # set by the driver for every level


def add_arguments(parser):
    parser.add_argument("--work-dir", required=True, help="one folder per level goes here, plus summary.json")
    parser.add_argument("--levels", default=DEFAULT_LEVELS, help="increasing sparsities (the paper's by default)")
    parser.add_argument("--method", choices=[m.name for m in TABLE.values() if m.from_checkpoints], default="slt",
                        help="method of every level")
    parser.add_argument("--rewind-k", type=int, default=0, help="update k of the rewind point theta_k (slt, clt)")
    parser.add_argument("--rewind-source", choices=("previous", "dense"), default="previous",
                        help="theta_k of the previous level's run (paper) or of the dense run (Frankle et al.)")
    parser.add_argument("--dense-dir", help="a finished dense run with checkpoint_best.pt and its rewind points; "
                                            "default: the driver trains one in WORK/dense")
    parser.add_argument("--combine", choices=("none", *COMBINATIONS), default="none",
                        help="slt-mp: SLT levels up to --intermediate, then MP to the last level; "
                             "mp-slt: MP to --intermediate, then SLT levels above it")
    parser.add_argument("--pattern-group", type=int, default=0, metavar="M",
                        help="N:M levels: each level L keeps M*(1-L) of every M weights (--prune-pattern); 0: unstructured")
    parser.add_argument("--intermediate", type=float, help="the intermediate sparsity s_i of --combine")
    parser.add_argument("--mp-start", type=int, default=0, help="MP stage: --prune-start")
    parser.add_argument("--mp-end", type=int, default=0, help="MP stage: --prune-end")
    parser.add_argument("--mp-frequency", type=int, default=100, help="MP stage: --prune-frequency")
    parser.add_argument("--bleu", action="store_true",
                        help="also score each level on the valid set (sacreBLEU on detokenized output, as results)")
    parser.add_argument("--beam", type=int, default=4, help="--bleu: beam size")
    parser.add_argument("--batch-size", type=int, default=128, help="--bleu: sentences a batch")
    parser.add_argument("--remove-bpe", default="sentencepiece", help="--bleu: fairseq-generate --remove-bpe")
    parser.add_argument("--train-command", default=f"{sys.executable} -m fairseq_cli.train",
                        help="how to run fairseq-train, e.g. a cluster or torchrun wrapper (default: this Python's)")
    parser.add_argument("--generate-command", default=f"{sys.executable} -m fairseq_cli.generate",
                        help="how to run fairseq-generate for --bleu (default: this Python's)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and commands, run nothing")
    parser.add_argument("train_args", nargs="*", metavar="-- DATA FAIRSEQ_TRAIN_OPTIONS",
                        help="after --: the data folder and fairseq-train options shared by every run")


def parse_levels(text: str):
    try:
        levels = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--levels must be comma-separated sparsities, got {text!r}") from None
    if not levels or any(not 0.0 < v < 1.0 for v in levels):
        raise UserError(f"--levels must be sparsities in (0, 1), got {text!r}")
    if any(b <= a for a, b in zip(levels, levels[1:])):
        raise UserError(f"--levels must be strictly increasing, got {text!r}")
    return levels


def option_value(args, option: str):
    """The value of ``--option V`` or ``--option=V`` in an argument list (the last one wins), else None."""
    value = None
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
    return value


def validate(args, levels):
    if not args.train_args or args.train_args[0].startswith("-"):
        raise UserError("give the data folder and fairseq-train options after --")
    data = args.train_args[0]
    if not os.path.isdir(data) or not any(n.startswith("dict.") for n in os.listdir(data)):
        raise UserError(f"the data folder (the first argument after --) {data} "
                        f"{'holds no fairseq dictionaries (dict.*.txt)' if os.path.isdir(data) else 'is not a folder'}")
    if os.path.exists(args.work_dir) and not os.path.isdir(args.work_dir):
        raise UserError(f"--work-dir {args.work_dir} exists and is not a folder")
    max_update = option_value(args.train_args, "--max-update")
    try:
        max_update = int(max_update) if max_update is not None else 0
    except ValueError:
        raise UserError(f"--max-update must be a number of updates, got {max_update!r}") from None
    if max_update > 0:
        for option, update in (("--rewind-k", args.rewind_k), ("--mp-end", args.mp_end)):
            if update > max_update:
                raise UserError(f"{option} {update} is beyond --max-update {max_update}: every run stops before "
                                   "update " + str(update))
    for arg in args.train_args:
        if arg.startswith(RESERVED):
            raise UserError(f"{arg} is set by the driver for every level; leave it out")
    for option in ("train_command", "generate_command"):
        if not shlex.split(getattr(args, option)):
            raise UserError(f"--{option.replace('_', '-')} is empty")
    if TABLE[args.method].rewind_to == "theta_k" and args.rewind_k <= 0:
        raise UserError(f"--method {args.method} needs --rewind-k > 0 (about 5 % of a run's updates)")
    if args.pattern_group:
        if args.pattern_group < 2:
            raise UserError(f"--pattern-group must be at least 2, got {args.pattern_group}")
        odd = [level for level in levels if abs(level * args.pattern_group - round(level * args.pattern_group)) > 1e-9]
        if odd:
            raise UserError(f"--pattern-group {args.pattern_group}: level {odd[0]} is not a whole number of weights "
                            f"of every {args.pattern_group} (use levels k/{args.pattern_group})")
    if args.combine in COMBINATIONS:
        if args.intermediate is None:
            raise UserError(f"--combine {args.combine} needs --intermediate")
        if args.method not in COMBINABLE:
            raise UserError(f"--combine {args.combine} combines MP with --method {'/'.join(COMBINABLE)}")
        if args.intermediate >= levels[-1]:
            raise UserError(f"--intermediate {args.intermediate} must be below the last level {levels[-1]}")
        check_schedule(args.intermediate, levels[-1], args.mp_start, args.mp_end, args.mp_frequency,
                       ("--intermediate", "the last of --levels", "--mp-start", "--mp-end", "--mp-frequency"))
    if args.dense_dir:
        for update in sorted({0, args.rewind_k}):
            for path in (os.path.join(args.dense_dir, "checkpoint_best.pt"), rewind_point_path(args.dense_dir, update)):
                if not os.path.isfile(path):
                    raise UserError(f"--dense-dir lacks {path}")
