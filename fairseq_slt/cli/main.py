"""``fairseq-slt``: the package's own tools as subcommands (training stays ``fairseq-train``)."""
import argparse
import importlib
import os
import sys

# subcommand -> (module under fairseq_slt.cli, one-line help)
SUBCOMMANDS = {
    "prepare": ("prepare", "prepare Multi30k-style parallel text: SentencePiece + fairseq-preprocess"),
    "iterate": ("iterate", "iterative pruning: one fairseq-train run per sparsity level (resumable)"),
    "launch": ("launch", "fairseq-train as N data-parallel processes per machine (fairseq's own rank options)"),
    "analyze": ("analyze", "per-layer sparsity, mask overlap and sign agreement of masks/checkpoints"),
    "options": ("options", "list the --prune-* options the plugin adds to fairseq-train, with defaults and help"),
    "results": ("results", "finished runs -> the paper's Table 1 (Markdown), a BLEU-vs-sparsity plot and JSON"),
    "curve": ("curve", "a run's learning curve (valid/test BLEU of every interval checkpoint) and the protocol's T"),
    "compress": ("compress", "a pruned checkpoint -> a compact file: per matrix a coded bitmap + kept values"),
    "average": ("average", "fairseq's checkpoint averaging for pruned runs: one mask in all inputs, kept exactly in "
                "the average"),
    "decompress": ("decompress", "a compact file -> a standard fairseq checkpoint (bit-identical fp32 weights)"),
    "export-ct2": ("export_ct2", "a pruned checkpoint or compact file -> a CTranslate2 model (int8 etc.), verified "
                   "against fairseq-generate"),
    "pack": ("pack", "a finished run folder -> one archive (checkpoints compact, no optimizer state) to keep or move"),
    "unpack": ("unpack", "an archive of pack -> the run folder again (bit-identical weights and masks)"),
    "user-dir": (None, "print the absolute --user-dir path of the installed plugin"),
    "link-user-dir": (None, "make '--user-dir fairseq_slt' work from any folder after an editable install"),
}


def _user_dir() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _link_user_dir() -> int:
    """fairseq also resolves a relative --user-dir beside its own package folder: link ours there."""
    from .. import beside_fairseq

    target = beside_fairseq()
    if target is None:
        sys.exit("fairseq-slt link-user-dir: error: fairseq is not installed")
    source = _user_dir()
    if os.path.realpath(target) == os.path.realpath(source):
        print(f"{target} is the plugin already")
        return 0
    if os.path.lexists(target) and not os.path.islink(target):
        sys.exit(f"fairseq-slt link-user-dir: error: {target} exists and is not a link; remove it first")
    link = f"{target}.{os.getpid()}.tmp"  # made beside and renamed over: two processes linking at once both succeed
    os.symlink(source, link)
    os.replace(link, target)
    print(f"linked {target} -> {source}")
    return 0


class _Parser(argparse.ArgumentParser):
    """A usage error is one line, as every other refusal of the package (status 2, as argparse's)."""

    def error(self, message):
        from ..pruning.io import usage_exit

        usage_exit(self, message)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one and the help does not state it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fairseq-slt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  formatter_class=_HelpFormatter)
        if module:
            importlib.import_module(f"fairseq_slt.cli.{module}").add_arguments(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "user-dir":
        print(_user_dir())
        return 0
    if args.command == "link-user-dir":
        return _link_user_dir()
    module = importlib.import_module(f"fairseq_slt.cli.{SUBCOMMANDS[args.command][0]}")
    from ..pruning.io import Failure, UserError

    try:
        return module.main(args) or 0
    except BrokenPipeError:  # output piped into head & co: stop quietly, as other Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except UserError as err:  # the user's to fix
        return _error(args.command, err, 2)
    except (Failure, OSError) as err:  # a tool it ran, its own check, the disk
        return _error(args.command, err, 1)


def _error(command: str, err: Exception, status: int) -> int:
    text = str(err) if not isinstance(err, OSError) or not err.filename else f"{err.strerror}: {err.filename}"
    from ..pruning.io import one_line

    print(f"fairseq-slt {command}: error: {one_line(text)}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
