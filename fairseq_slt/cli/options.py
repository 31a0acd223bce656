"""``fairseq-slt options``: the plugin's fairseq-train options, from the task's dataclass (their one source).

``fairseq-train --help`` cannot list them: fairseq prints its help before it adds a task's options.
"""
import dataclasses
import textwrap

from omegaconf import MISSING


def add_arguments(parser):
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (as in the README)")


def plugin_options():
    """(--option, default, help) of every option the plugin adds to fairseq-train, in declaration order."""
    from fairseq.tasks.translation import TranslationConfig

    from ..tasks.translation_slt import TranslationSLTConfig

    inherited = {f.name for f in dataclasses.fields(TranslationConfig)}
    rows = []
    for field in dataclasses.fields(TranslationSLTConfig):
        if field.name in inherited or "help" not in field.metadata:  # fairseq's own, or read from its other groups
            continue
        default = field.default if field.default is not MISSING else None
        rows.append((f"--{field.name.replace('_', '-')}", "" if default is None else str(default),
                     field.metadata["help"]))
    return rows


def main(args):
    rows = plugin_options()
    if args.markdown:
        print("| option | default | meaning |\n| --- | --- | --- |")
        for option, default, help_text in rows:
            print(f"| `{option}` | {default} | {help_text} |")
        return 0
    print("fairseq-train --user-dir fairseq_slt --task translation_slt adds these options "
          "(fairseq-train --help does not show them):\n")
    width = max(len(option) for option, _, _ in rows)
    for option, default, help_text in rows:
        lines = textwrap.wrap(help_text + (f" (default: {default})" if default else ""), 100 - width - 4)
        print(f"  {option:<{width}}  {lines[0]}")
        for line in lines[1:]:
            print(f"  {'':<{width}}  {line}")
    return 0
