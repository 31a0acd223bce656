"""``fairseq-slt results``: finished runs -> the paper's Table 1 (Markdown), a BLEU-vs-sparsity plot, JSON.

A run is a save dir (``run.json``, checkpoints). Given folders are searched for runs (an iterate work dir,
a recipe's WORK). Each finished run's checkpoint is scored once with fairseq-generate and sacreBLEU; the
score is cached beside the checkpoint (``scores.json``) and reused while its weights and the scoring
options are unchanged. Runs whose scored weights are the same bit for bit are one model, not two seeds: the
first (by path) is a row, the others are listed as copies of it.
"""
import os
import sys
from typing import Dict, List, Optional

from ..run import folder as run_dir
from ..checkpoints import Checkpoint, unique_tensors, weights_digest
from ..pruning import UserError, atomic_write_json, atomic_write_text, methods
from ..pruning.io import TEMPORARY, refuse_overwrite
from ..run.folder import LAST, MANIFEST
from . import claims, report
from .report import CONTROLS
from .scoring import score



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
    parser.add_argument("--force", action="store_true", help="overwrite --table, --plot and --json if they exist")


def find_runs(folders: List[str]) -> List[str]:
    runs = []
    for folder in folders:
        if not os.path.isdir(folder):
            raise UserError(f"no such folder: {folder}")
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(TEMPORARY)]  # an interrupted unpack's staging folder
            depth = os.path.relpath(root, folder).count(os.sep) + (root != folder)
            if MANIFEST in files or LAST in files:
                runs.append(os.path.abspath(root))
                dirs[:] = []
            elif depth >= 2:
                dirs[:] = []
            dirs.sort()
    return sorted(dict.fromkeys(runs))


def identity_of(run: str) -> dict:
    return run_dir.read_manifest(run, "restore it, or move the run out of the folders given") or {
        "identity": {"method": "none"}, "command": None}


def label_of(identity: dict, identities: Dict[str, dict]) -> str:
    """dense, mp, lt, slt, clt; slt-mp (MP from an SLT mask), mp-slt (SLT from an MP chain); controls named."""
    chain, source = [], identity.get("mask_from")
    while source and len(chain) < 50:  # the methods up the chain of mask sources
        parent = identities.get(os.path.dirname(source), {})
        chain.append(parent.get("method"))
        source = parent.get("mask_from")
    label = methods.label(identity.get("method", "none"), chain)
    if identity.get("prune_pattern"):  # an N:M run is its own column
        label += f" {identity['prune_pattern']}"
    for key, name in CONTROLS:
        if identity.get(key):
            label += f" ({name})"
    return label


def finished(run: str) -> Optional[str]:
    """None when the run is finished; else why not."""
    if run_dir.is_done(run):
        return None
    last = os.path.join(run, LAST)
    if not os.path.isfile(last):
        return "no checkpoint yet"
    checkpoint = Checkpoint(last, "checkpoint", mmap=True)
    optimization = (checkpoint.state.get("cfg") or {}).get("optimization") or {}
    target, epochs = optimization.get("max_update") or 0, optimization.get("max_epoch") or 0
    done = checkpoint.num_updates or 0
    if target and done >= target or checkpoint.task_state.get("stopped") == "patience":
        return None  # fairseq's --patience ended it: as finished as fairseq makes it
    # --max-epoch: fairseq saves the epoch after the last one it finished (iterations 0) as the iterator's
    next_epoch = ((checkpoint.state.get("extra_state") or {}).get("train_iterator") or {}).get("epoch")
    if epochs and isinstance(next_epoch, int) and next_epoch > epochs:
        return None
    if epochs:
        return f"its last checkpoint at update {done}, in epoch {next_epoch} of --max-epoch {epochs}"
    return f"its last checkpoint at update {done} of {target or '?'}"


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
        raise UserError(f"no runs (folders with {MANIFEST} or {LAST}) under {', '.join(args.folders)}")
    manifests = {run: identity_of(run) for run in runs}
    identities = {run: m["identity"] for run, m in manifests.items()}
    rows, unfinished, copies, digests = [], [], [], {}
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
        mask, target = checkpoint.mask(), float(identity.get("prune_sparsity") or 0.0)
        scored_instead = None
        if below(mask, target):  # a best saved before the schedule reached the target (plugin < 2026-12-04)
            last_path = os.path.join(run, LAST)
            last = Checkpoint(last_path, "checkpoint", mmap=True) if os.path.isfile(last_path) else None
            last_mask = last.mask() if last is not None else None
            if last is None or below(last_mask, target):
                unfinished.append({"run": run, "why": f"no checkpoint at its target sparsity {target:g}"})
                continue
            scored_instead = (f"{args.checkpoint} is at sparsity {mask.sparsity():.3f}, saved before "
                              f"the schedule reached {target:g}: {LAST} scored instead")
            checkpoint_path, checkpoint, mask = last_path, last, last_mask
        digest = weights_digest(checkpoint)
        if digest in digests:
            copies.append({"run": run, "same_weights_as": digests[digest]})
            continue
        digests[digest] = run
        rows.append({"run": run, "label": label_of(identity, identities), "method": identity.get("method"),
                     "target_sparsity": target,
                     "sparsity": round(mask.sparsity(), 6) if mask is not None else 0.0,
                     "checkpoint": checkpoint_path, "scored_instead": scored_instead, "train_command": manifests[run].get("command"),
                     "environment": manifests[run].get("environment"),
                     "seed": identity.get("seed"), "updates": updates_of(run), "train_seconds": train_seconds(run),
                     **compact_bytes(checkpoint), "score": score(run, checkpoint_path, args, digest)})
    spent = {row["run"]: (row["updates"], row["train_seconds"]) for row in rows}
    for row in rows:
        row.update(cost(row["run"], identities, spent))
    return {"rows": rows, "unfinished": unfinished, "copies": copies, **claims.judge(rows)}


def below(mask, target: float) -> bool:
    """Whether a checkpoint's mask is less sparse than the run's target (by more than rounding)."""
    return mask is not None and mask.sparsity() < target - 0.005


def chain_of(run: str, identities: Dict[str, dict]) -> List[str]:
    """The run and every run it needed: its mask source's and rewind point's runs, and theirs (each once)."""
    chain, todo = [], [run]
    while todo:
        current = todo.pop()
        if current in chain or current not in identities:
            continue
        chain.append(current)
        identity = identities[current]
        todo += [os.path.dirname(identity[key]) for key in ("mask_from", "rewind_from") if identity.get(key)]
    return chain


def cost(run: str, identities: Dict[str, dict], spent: Dict[str, tuple]) -> dict:
    """What the cell cost in all, the dense run and earlier levels included: updates and CPU hours
    (fairseq's training wall time of each run: one thread a run in the recipes). ``spent``: run ->
    (updates, seconds), filled in here for a run of the chain that is not a row."""
    chain = chain_of(run, identities)
    for r in chain:
        if r not in spent:
            spent[r] = (updates_of(r), train_seconds(r))
    seconds = [spent[r][1] for r in chain]
    return {"cost_runs": len(chain), "cost_updates": sum(spent[r][0] or 0 for r in chain),
            "cost_hours": round(sum(s or 0 for s in seconds) / 3600, 3) if all(s is not None for s in seconds) else None}


def updates_of(run: str) -> Optional[int]:
    last = os.path.join(run, LAST)
    return Checkpoint(last, "checkpoint", mmap=True).num_updates if os.path.isfile(last) else None


def main(args):
    for output in (args.table, args.plot, args.json):
        if output:
            refuse_overwrite(output, args.force)
    result = collect(args)
    table = report.markdown(result, args.chrf)
    print(table, end="")
    if args.table:
        atomic_write_text(table, args.table)
    if args.json:
        atomic_write_json(result, args.json)
    if args.plot:
        report.plot(result, args.plot)
    return 0
