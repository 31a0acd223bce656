"""A results table next to the paper's Table 1: every cell's test BLEU (the mean over its seeds) and its change
from dense, beside Brix et al. (2020)'s En-De BLEU and change from their dense 26.8.
   python paper_comparison.py RESULTS_JSON        (RESULTS_JSON: `fairseq-slt results --json`)"""
import json
import statistics
import sys

PAPER_DENSE = 26.8
PAPER = {  # Table 1 of the paper (En-De newstest2014 BLEU), as ../shared/paper/brix2020.md gives it
    "mp": {50: 26.4, 80: 24.8, 90: 22.9, 95: 20.2, 98: 15.8},
    "lt": {50: 25.4, 80: 23.2, 90: 20.9, 95: 18.1, 98: 13.3},
    "slt": {50: 26.6, 80: 24.8, 90: 21.7, 95: 17.4, 98: 11.0},
    "clt": {50: 26.7, 80: 24.1, 90: 21.6, 95: 18.2, 98: 14.6},
    "slt-mp": {80: 25.6, 90: 23.5, 95: 20.5, 98: 16.1},
    "mp-slt": {80: 24.6, 90: 22.4, 95: 18.5, 98: 13.5},
}
LEVELS = (50, 80, 90, 95, 98)


def table(rows) -> str:
    cells = {}
    for row in rows:
        cells.setdefault((row["label"], round(100 * row["target_sparsity"])), []).append(row["score"]["bleu"])
    dense = statistics.mean(next(bleu for (_, sparsity), bleu in cells.items() if sparsity == 0))

    def cell(bleu, base):
        return f"{bleu:.1f} ({bleu - base:+.1f})"

    lines = [f"| sparsity | {' | '.join(PAPER)} |", f"|---|{'---|' * len(PAPER)}"]
    for level in LEVELS:
        ours = [cell(statistics.mean(cells[(m, level)]), dense) if (m, level) in cells else "-" for m in PAPER]
        paper = [cell(PAPER[m][level], PAPER_DENSE) if level in PAPER[m] else "-" for m in PAPER]
        lines.append(f"| {level} % | {' | '.join(f'{o} / {p}' for o, p in zip(ours, paper))} |")
    lines.append(f"\nCells: ours / the paper's, test BLEU (change from dense); dense: ours {dense:.1f}, "
                 f"the paper {PAPER_DENSE}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python paper_comparison.py RESULTS_JSON")
    try:
        with open(sys.argv[1]) as handle:
            rows = [r for r in json.load(handle)["rows"] if r.get("score")]
    except OSError as error:
        sys.exit(f"error: cannot read {sys.argv[1]}: {error.strerror}")
    except (ValueError, KeyError, TypeError, AttributeError):
        sys.exit(f"error: {sys.argv[1]} is not the JSON of `fairseq-slt results --json`")
    if not any(r["target_sparsity"] == 0 for r in rows):
        sys.exit(f"error: {sys.argv[1]} has no scored dense row to compare against")
    print(table(rows), end="")
