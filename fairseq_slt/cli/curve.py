"""``fairseq-slt curve``: the learning curve of one or more runs (seeds) and the protocol's T.

Scores every kept interval checkpoint of each run (``checkpoint_E_U.pt``, from fairseq-train's
``--save-interval-updates N --keep-interval-updates -1``) on the valid and test subsets with the scorer
``results`` uses (cached beside the run), and picks T by the rule in :func:`pick_t`, applied to the
seeds' mean valid BLEU at the updates every run has reached.
"""
import argparse
import os
import re
import statistics
import sys
from typing import Dict, List, Optional

from ..checkpoints import Checkpoint, weights_digest
from ..pruning import UserError, atomic_write_json
from ..pruning.io import refuse_overwrite
from . import figures
from .scoring import score

INTERVAL = re.compile(r"^checkpoint_\d+_(\d+)\.pt$")
MIN_GAIN, WINDOW = 0.3, 0.25
RULE = (f"T is the first checkpoint after which valid BLEU gains less than {MIN_GAIN} over the next "
        f"{WINDOW:.0%} of T (the best valid BLEU of the checkpoints after T up to the first one at or past "
        f"{1 + WINDOW:g}·T, minus valid BLEU at T)")


def add_arguments(parser):
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run dirs with interval checkpoints (checkpoint_E_U.pt): one per seed")
    parser.add_argument("--references-dir", required=True,
                        help="folder of plain-text references named SUBSET.TGT (prepare's OUT/text)")
    parser.add_argument("--tgt", required=True, help="target language (the references' suffix)")
    parser.add_argument("--subsets", default="valid,test", help="subsets to score; the first picks T")
    parser.add_argument("--confirm", type=int, default=1,
                        help="the rule must also hold at the next N-1 checkpoints (1: the rule as stated)")
    parser.add_argument("--every", type=int, help="use only checkpoints at multiples of this many updates")
    parser.add_argument("--data", help="data-bin folder (default: the one the run was trained on)")
    parser.add_argument("--beam", type=int, default=5, help="fairseq-generate --beam")
    parser.add_argument("--batch-size", type=int, default=128, help="fairseq-generate --batch-size")
    parser.add_argument("--remove-bpe", default="sentencepiece", help="fairseq-generate --remove-bpe")
    parser.add_argument("--generate-command", default=f"{sys.executable} -m fairseq_cli.generate",
                        help="how to run fairseq-generate (default: this Python's)")
    parser.add_argument("--json", help="write the curve and T as JSON here")
    parser.add_argument("--plot", help="write the curve (PNG) here")
    parser.add_argument("--force", action="store_true", help="overwrite --json and --plot if they exist")


def pick_t(bleu: Dict[int, float], min_gain: float = MIN_GAIN, window: float = WINDOW,
           confirm: int = 1) -> Optional[int]:
    """The first update t whose window (t, first checkpoint >= (1 + window)·t] exists and gains < min_gain,
    and (``confirm`` > 1) so do the windows of the next confirm - 1 checkpoints."""
    updates = sorted(bleu)

    def settled(i: int) -> Optional[bool]:
        t, later = updates[i], updates[i + 1:]
        end = next((u for u in later if u >= (1 + window) * t), None)
        if end is None:
            return None  # the curve does not reach this checkpoint's window yet
        return max(bleu[u] for u in later if u <= end) - bleu[t] < min_gain

    for i in range(len(updates)):
        verdicts = [settled(j) if j < len(updates) else None for j in range(i, i + confirm)]
        if None in verdicts:
            return None
        if all(verdicts):
            return updates[i]
    return None


def interval_checkpoints(run: str, every: Optional[int]) -> Dict[int, str]:
    if not os.path.isdir(run):
        raise UserError(f"no such run dir: {run}")
    found = {}
    for name in os.listdir(run):
        match = INTERVAL.match(name)
        if match and (not every or int(match.group(1)) % every == 0):
            found[int(match.group(1))] = os.path.join(run, name)
    if not found:
        raise UserError(f"{run} holds no interval checkpoints (checkpoint_E_U.pt): train with "
                           "--save-interval-updates N --keep-interval-updates -1")
    return dict(sorted(found.items()))


def collect(args) -> dict:
    for output in (args.json, args.plot):
        if output:
            refuse_overwrite(output, args.force)
    subsets = [s for s in args.subsets.split(",") if s]
    for subset in subsets:
        path = os.path.join(args.references_dir, f"{subset}.{args.tgt}")
        if not os.path.isfile(path):
            raise UserError(f"--references-dir has no {subset}.{args.tgt}")
    found = {run: interval_checkpoints(run, args.every) for run in args.runs}  # every run checked before scoring
    curves = {}
    for run, checkpoints in found.items():
        points: List[dict] = []
        for update, path in checkpoints.items():
            checkpoint = Checkpoint(path, "checkpoint", mmap=True)
            extra, weights = checkpoint.state.get("extra_state") or {}, weights_digest(checkpoint)
            point = {"update": update, "checkpoint": path, "valid_loss": extra.get("val_loss")}
            for subset in subsets:
                options = argparse.Namespace(**{**vars(args), "subset": subset, "no_score": False, "references":
                                                os.path.join(args.references_dir, f"{subset}.{args.tgt}")})
                point[subset] = score(run, path, options, weights)["bleu"]
            points.append(point)
        curves[os.path.abspath(run)] = points
    shared = sorted(set.intersection(*(set(p["update"] for p in points) for points in curves.values())))
    mean = [{"update": u, **{s: round(statistics.mean(_at(points, u)[s] for points in curves.values()), 2)
                             for s in subsets},
             "valid_loss": _mean_or_none(_at(points, u)["valid_loss"] for points in curves.values())} for u in shared]
    first = subsets[0]
    if args.confirm < 1:
        raise UserError(f"--confirm must be at least 1, got {args.confirm}")
    t = pick_t({p["update"]: p[first] for p in mean}, confirm=args.confirm)
    rule = RULE + (f"; and so at the next {args.confirm - 1} checkpoint(s)" if args.confirm > 1 else "")
    return {"runs": curves, "mean": mean, "subsets": subsets, "rule": rule, "rule_subset": first, "T": t}


def _at(points: List[dict], update: int) -> dict:
    return next(p for p in points if p["update"] == update)


def _mean_or_none(values):
    values = list(values)
    return None if any(v is None for v in values) else round(statistics.mean(values), 4)


def markdown(result: dict) -> str:
    subsets, runs = result["subsets"], list(result["runs"])
    several = len(runs) > 1
    head = [f"{s} BLEU" + (" (mean)" if several else "") for s in subsets]
    head += [f"{s} BLEU {os.path.basename(run)}" for run in runs for s in subsets] if several else []
    lines = ["| update | valid loss | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    for p in result["mean"]:
        loss = f"{p['valid_loss']:.3f}" if p["valid_loss"] is not None else "-"
        mark = " (T)" if p["update"] == result["T"] else ""
        cells = [f"{p[s]:.2f}" for s in subsets]
        cells += [f"{_at(result['runs'][run], p['update'])[s]:.2f}" for run in runs for s in subsets] if several else []
        lines.append(f"| {p['update']}{mark} | {loss} | " + " | ".join(cells) + " |")
    verdict = f"T = {result['T']}" if result["T"] else "T: not reached yet (the curve must go on)"
    rule = f"Rule ({result['rule_subset']} BLEU{', the mean of the runs' if several else ''}): {result['rule']}."
    return "\n".join(lines + ["", rule, verdict]) + "\n"


def plot(result: dict, target: str) -> None:
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for index, subset in enumerate(result["subsets"]):
        for run, points in result["runs"].items():
            label = f"{subset} BLEU" + (f" {os.path.basename(run)}" if len(result["runs"]) > 1 else "")
            style = "-" if run == next(iter(result["runs"])) else ":"
            ax.plot([p["update"] for p in points], [p[subset] for p in points], style, marker="o", markersize=3,
                    label=label, color=f"C{index}")
    if result["T"]:
        ax.axvline(result["T"], color="black", linestyle="--", label=f"T = {result['T']}")
    ax.set_xlabel("updates")
    ax.set_ylabel("BLEU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figures.save(fig, target)


def main(args):
    result = collect(args)
    print(markdown(result), end="")
    if args.json:
        atomic_write_json(result, args.json)
    if args.plot:
        plot(result, args.plot)
    return 0
