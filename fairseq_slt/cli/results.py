"""``fairseq-slt results``: finished runs -> the paper's Table 1 (Markdown), a BLEU-vs-sparsity plot, JSON.

A run is a save dir (``run.json``, checkpoints). Given folders are searched for runs (an iterate work dir,
a recipe's WORK). Each finished run's checkpoint is scored once with fairseq-generate and sacreBLEU; the
score is cached beside the checkpoint (``scores.json``) and reused while the checkpoint and the scoring
options are unchanged.
"""
import json
import os
import statistics
import sys
from typing import Dict, List, Optional

from ..checkpoints import Checkpoint, unique_tensors
from . import figures
from .scoring import score
from ..pruning import PruningError, atomic_write_json, atomic_write_text
from ..run_dir import LAST, MANIFEST

CONTROLS = (("prune_clt_random_signs", "random signs"), ("prune_random_mask", "random mask"),
            ("prune_reinit", "reinit"))
ORDER = ["dense", "mp", "lt", "slt", "clt", "slt-mp", "mp-slt"]


def add_arguments(parser):
    parser.add_argument("folders", nargs="+", help="run dirs, or folders holding them (searched two levels down)")
    parser.add_argument("--data", help="data-bin folder (default: the one each run was trained on)")
    parser.add_argument("--subset", default="test", help="fairseq subset to score (default: test)")
    parser.add_argument("--checkpoint", default="checkpoint_best.pt", help="which checkpoint of each run to score")
    parser.add_argument("--beam", type=int, default=5, help="fairseq-generate --beam")
    parser.add_argument("--batch-size", type=int, default=128, help="fairseq-generate --batch-size")
    parser.add_argument("--remove-bpe", default="sentencepiece", help="fairseq-generate --remove-bpe")
    parser.add_argument("--references", help="plain-text references, one per line in the subset's order "
                                             "(default: fairseq's target side, T- lines)")
    parser.add_argument("--chrf", action="store_true", help="chrF next to BLEU in the table")
    parser.add_argument("--table", help="write the Markdown table here (it is printed either way)")
    parser.add_argument("--plot", help="write the BLEU-vs-sparsity plot (PNG) here")
    parser.add_argument("--json", help="write every row as JSON here")
    parser.add_argument("--generate-command", default=f"{sys.executable} -m fairseq_cli.generate",
                        help="how to run fairseq-generate (default: this Python's)")
    parser.add_argument("--no-score", action="store_true", help="use cached scores only; score nothing")


def find_runs(folders: List[str]) -> List[str]:
    runs = []
    for folder in folders:
        if not os.path.isdir(folder):
            raise PruningError(f"no such folder: {folder}")
        for root, dirs, files in os.walk(folder):
            depth = os.path.relpath(root, folder).count(os.sep) + (root != folder)
            if MANIFEST in files or LAST in files:
                runs.append(os.path.abspath(root))
                dirs[:] = []
            elif depth >= 2:
                dirs[:] = []
            dirs.sort()
    return sorted(dict.fromkeys(runs))


def identity_of(run: str) -> dict:
    manifest = os.path.join(run, MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest) as handle:
            return json.load(handle)
    last = os.path.join(run, LAST)
    state = Checkpoint(last, "checkpoint", mmap=True).task_state if os.path.isfile(last) else {}
    return {"identity": state.get("identity") or state.get("fingerprint") or {"method": "none"}, "command": None}


def label_of(identity: dict, identities: Dict[str, dict]) -> str:
    """dense, mp, lt, slt, clt; slt-mp (MP from an SLT mask), mp-slt (SLT from an MP chain); controls named."""
    method = identity.get("method", "none")
    label = "dense" if method == "none" else method
    chain, source = [], identity.get("mask_from")
    while source and len(chain) < 50:  # the methods up the chain of mask sources
        parent = identities.get(os.path.dirname(source), {})
        chain.append(parent.get("method"))
        source = parent.get("mask_from")
    if method == "mp" and "slt" in chain:
        label = "slt-mp"
    elif method == "slt" and "mp" in chain:
        label = "mp-slt"
    for key, name in CONTROLS:
        if identity.get(key):
            label += f" ({name})"
    return label


def finished(run: str) -> Optional[str]:
    """None when the run is finished; else why not."""
    if os.path.isfile(os.path.join(run, ".done")):
        return None
    last = os.path.join(run, LAST)
    if not os.path.isfile(last):
        return "no checkpoint yet"
    checkpoint = Checkpoint(last, "checkpoint", mmap=True)
    target = ((checkpoint.state.get("cfg") or {}).get("optimization") or {}).get("max_update") or 0
    done = checkpoint.num_updates or 0
    return None if target and done >= target else f"at update {done} of {target or '?'}"


def compact_bytes(checkpoint: Checkpoint) -> Dict[str, int]:
    """Bytes of the weights: dense fp32, and as a bitmap (1 bit per weight) plus the fp32 nonzero values
    for every masked matrix (other tensors dense). Tied tensors count once."""
    mask = checkpoint.mask()
    dense = compact = 0
    for name, tensor in unique_tensors(checkpoint.model).items():
        dense += 4 * tensor.numel()
        if mask is not None and name in mask:
            compact += (tensor.numel() + 7) // 8 + 4 * int(mask[name].sum())
        else:
            compact += 4 * tensor.numel()
    return {"dense_fp32_bytes": dense, "bitmap_fp32_bytes": compact}


def train_seconds(run: str) -> Optional[float]:
    """fairseq's training wall time of the run (all restarts, validation included), from its last checkpoint."""
    last = os.path.join(run, LAST)
    if not os.path.isfile(last):
        return None
    extra = Checkpoint(last, "checkpoint", mmap=True).state.get("extra_state") or {}
    seconds = extra.get("previous_training_time")
    return round(float(seconds), 1) if seconds is not None else None


def collect(args) -> dict:
    runs = find_runs(args.folders)
    if not runs:
        raise PruningError(f"no runs (folders with {MANIFEST} or {LAST}) under {', '.join(args.folders)}")
    manifests = {run: identity_of(run) for run in runs}
    identities = {run: m["identity"] for run, m in manifests.items()}
    rows, unfinished = [], []
    for run in runs:
        identity = identities[run]
        why = finished(run)
        checkpoint_path = os.path.join(run, args.checkpoint)
        if why is None and not os.path.isfile(checkpoint_path):
            why = f"no {args.checkpoint}"
        if why is not None:
            unfinished.append({"run": run, "why": why})
            continue
        checkpoint = Checkpoint(checkpoint_path, "checkpoint", mmap=True)
        mask = checkpoint.mask()
        rows.append({"run": run, "label": label_of(identity, identities), "method": identity.get("method"),
                     "target_sparsity": float(identity.get("prune_sparsity") or 0.0),
                     "sparsity": round(mask.sparsity(), 6) if mask is not None else 0.0,
                     "checkpoint": checkpoint_path, "train_command": manifests[run].get("command"),
                     "train_seconds": train_seconds(run), **compact_bytes(checkpoint),
                     "score": score(run, checkpoint_path, args)})
    return {"rows": rows, "unfinished": unfinished}


def markdown(result: dict, chrf: bool) -> str:
    rows = [r for r in result["rows"] if r["score"] is not None]
    labels = _method_labels(rows)
    dense = next((r for r in rows if r["label"] == "dense"), None)
    levels = sorted({r["target_sparsity"] for r in rows if r["label"] != "dense"})
    labels = labels or ["dense"]  # only the dense run so far

    def cell(row):
        if row is None:
            return "-"
        text = f"{row['score']['bleu']:.1f}"
        return f"{text} / {row['score']['chrf']:.1f}" if chrf else text

    lines = ["| sparsity | size (bitmap + fp32) | " + " | ".join(labels) + " |",
             "|---|---|" + "---|" * len(labels)]
    if dense is not None:
        lines.append(f"| 0 (dense) | {_mb(dense['dense_fp32_bytes'])} | " + " | ".join(cell(dense) for _ in labels) + " |")
    for level in levels:
        at = {r["label"]: r for r in rows if r["target_sparsity"] == level and r["label"] != "dense"}
        size = min(r["bitmap_fp32_bytes"] for r in at.values())
        lines.append(f"| {level * 100:g} % | {_mb(size)} | " + " | ".join(cell(at.get(label)) for label in labels) + " |")
    notes = ["", f"Cells: test BLEU{' / chrF' if chrf else ''} (sacreBLEU, detokenized, cased)."]
    signatures = sorted({r["score"]["signature"] for r in rows})
    notes += [f"BLEU signature: `{s}`" for s in signatures]
    timed = [r["train_seconds"] for r in result["rows"] if r.get("train_seconds") is not None]
    if timed:
        notes.append(f"Training time (fairseq's wall time of each run, validation included): {len(timed)} runs, "
                     f"{sum(timed) / 3600:.2f} h in all, median {statistics.median(timed) / 60:.1f} min.")
    for item in result["unfinished"]:
        notes.append(f"Unfinished: {item['run']} ({item['why']})")
    return "\n".join(lines + notes) + "\n"


def _method_labels(rows: List[dict]) -> List[str]:
    """The methods in the paper's column order (controls after their method)."""
    def key(label):
        method = label.split(" ")[0]
        return ORDER.index(method) if method in ORDER else len(ORDER), label
    return sorted({r["label"] for r in rows if r["label"] != "dense"}, key=key)


def _color(label: str) -> str:
    """One colour per method whatever else is plotted, so plots of different runs compare at a glance:
    C1-C6 for the methods (in ORDER), C7-C9 for the controls."""
    method = label.split(" ")[0]
    for index, (_, name) in enumerate(CONTROLS):
        if label.endswith(f"({name})"):
            return f"C{7 + index}"
    return f"C{ORDER.index(method)}" if method in ORDER else "black"


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def plot(result: dict, target: str) -> None:
    plt = figures.pyplot()
    rows = [r for r in result["rows"] if r["score"] is not None]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    dense = next((r for r in rows if r["label"] == "dense"), None)
    if dense is not None:
        ax.axhline(dense["score"]["bleu"], color="black", linestyle="--", label=f"dense ({dense['score']['bleu']:.1f})")
    for label in _method_labels(rows):
        points = sorted((r["target_sparsity"] * 100, r["score"]["bleu"]) for r in rows if r["label"] == label)
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", label=label, color=_color(label))
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test BLEU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figures.save(fig, target)


def main(args):
    try:
        result = collect(args)
        table = markdown(result, args.chrf)
        print(table, end="")
        if args.table:
            atomic_write_text(table, args.table)
        if args.json:
            atomic_write_json(result, args.json)
        if args.plot:
            plot(result, args.plot)
    except PruningError as err:
        sys.exit(f"fairseq-slt results: error: {err}")
    return 0
