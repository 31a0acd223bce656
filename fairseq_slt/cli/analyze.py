"""``fairseq-slt analyze``: sparsity per layer, overlap of masks, sign agreement with a rewind point."""
import itertools
import os
from typing import Dict

import torch

from ..checkpoints import Checkpoint, unique_tensors
from ..pruning import Mask, UserError, atomic_write_json, safe_load
from ..pruning.io import refuse_overwrite
from ..pruning.mask import MASK_FORMAT
from . import figures


def add_arguments(parser):
    parser.add_argument("inputs", nargs="+", help="mask files (mask.pt) or checkpoints (their stored mask; "
                                                  "a checkpoint without one: its nonzero weight matrices)")
    parser.add_argument("--signs", nargs=2, action="append", default=[], metavar=("TRAINED", "REWIND"),
                        help="sign agreement of TRAINED's kept weights with REWIND's (repeatable)")
    parser.add_argument("--json", help="write the report as JSON here")
    parser.add_argument("--plot", help="write a per-layer sparsity plot (PNG) here")
    parser.add_argument("--force", action="store_true", help="overwrite --json and --plot if they exist")


def _weight_matrices(model: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """dim >= 2 entries, tied aliases (shared storage) once."""
    return {name: tensor for name, tensor in unique_tensors(model).items() if tensor.dim() >= 2}


def checkpoint_mask(checkpoint: Checkpoint) -> Mask:
    """The checkpoint's stored mask; without one, its nonzero weight matrices."""
    stored = checkpoint.mask()
    if stored is not None:
        return stored
    return Mask({name: tensor != 0 for name, tensor in _weight_matrices(checkpoint.model).items()})


def load_mask(path: str) -> Mask:
    state = safe_load(path, "input")
    if isinstance(state, dict) and state.get("format") == MASK_FORMAT:
        return Mask.from_state_dict(state, source=path)
    return checkpoint_mask(Checkpoint(path, "input", state=state))


def overlap(a: Mask, b: Mask) -> dict:
    both = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    kept_a = a.total() - a.pruned()
    return {"kept_in_both": both, "share_of_first_kept": both / kept_a if kept_a else 0.0,
            "jaccard": both / union if union else 1.0, "random_expectation": 1.0 - b.sparsity(),
            "layers": {n: (int((a[n] & b[n]).sum()) / max(int((a[n] | b[n]).sum()), 1)) for n in a}}


def sign_agreement(trained_path: str, rewind_path: str) -> dict:
    trained, rewind = Checkpoint(trained_path, "TRAINED checkpoint"), Checkpoint(rewind_path, "REWIND checkpoint")
    rewind.check_matches(trained.model)  # the same architecture: every weight, every shape
    mask = checkpoint_mask(trained)
    layers, agree_total, count_total = {}, 0, 0
    for name, keep in mask.items():
        a, b = trained.model[name], rewind.model[name]
        considered = keep & (a != 0) & (b != 0)
        agree = int((torch.sign(a) == torch.sign(b))[considered].sum())
        count = int(considered.sum())
        layers[name] = agree / count if count else None
        agree_total, count_total = agree_total + agree, count_total + count
    return {"trained": trained_path, "rewind": rewind_path, "agreement": agree_total / max(count_total, 1),
            "weights_compared": count_total, "layers": layers}


def report(paths, signs) -> dict:
    masks = {path: load_mask(path) for path in paths}
    first = masks[paths[0]]
    for path, mask in masks.items():
        if list(mask) != list(first) or any(mask[n].shape != first[n].shape for n in first):
            raise UserError(f"{path} covers other weight matrices than {paths[0]} (different models?)")
    return {
        "inputs": {p: {"sparsity": m.sparsity(), "layers": m.layer_sparsity()} for p, m in masks.items()},
        "overlap": [{"first": a, "second": b, **overlap(masks[a], masks[b])} for a, b in itertools.combinations(paths, 2)],
        "signs": [sign_agreement(trained, rewind) for trained, rewind in signs],
    }


def print_table(result: dict, paths) -> None:
    short = [f"[{i}]" for i in range(len(paths))]
    for tag, path in zip(short, paths):
        print(f"{tag} {path}")
    layers = list(result["inputs"][paths[0]]["layers"])
    width = max(len(n) for n in layers + ["total"])
    print(f"\n{'sparsity':<{width}}  " + "  ".join(f"{t:>7}" for t in short))
    for name in layers:
        print(f"{name:<{width}}  " + "  ".join(f"{result['inputs'][p]['layers'][name]:7.4f}" for p in paths))
    print(f"{'total':<{width}}  " + "  ".join(f"{result['inputs'][p]['sparsity']:7.4f}" for p in paths))
    for row in result["overlap"]:
        a, b = short[paths.index(row["first"])], short[paths.index(row["second"])]
        print(f"\noverlap {a} {b}: {row['share_of_first_kept']:.4f} of {a}'s kept weights are kept in {b} "
              f"(random masks: {row['random_expectation']:.4f}); jaccard {row['jaccard']:.4f}")
    for row in result["signs"]:
        print(f"\nsign agreement {row['trained']} vs {row['rewind']}: {row['agreement']:.4f} "
              f"of {row['weights_compared']} kept weights")


def short_labels(paths):
    """The shortest trailing part of each path that tells the inputs apart (the file name's extension dropped)."""
    parts = [os.path.splitext(os.path.normpath(os.path.abspath(p)))[0].split(os.sep) for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(i) + ": " + p for i, p in enumerate(paths)]  # the same path given twice


def plot(result: dict, paths, target: str) -> None:
    plt = figures.pyplot()
    layers, labels = list(result["inputs"][paths[0]]["layers"]), short_labels(paths)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers)), 4))
    width = 0.8 / len(paths)
    for i, path in enumerate(paths):
        values = [result["inputs"][path]["layers"][n] for n in layers]
        ax.bar([x + i * width for x in range(len(layers))], values, width, label=labels[i])
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(layers))])
    ax.set_xticklabels([n.replace(".weight", "") for n in layers], rotation=90, fontsize=6)
    ax.set_ylabel("sparsity")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    figures.save(fig, target)


def main(args):
    for output in (args.json, args.plot):
        if output:
            refuse_overwrite(output, args.force)
    result = report(args.inputs, args.signs)
    print_table(result, args.inputs)
    if args.json:
        atomic_write_json(result, args.json)
    if args.plot:
        plot(result, args.inputs, args.plot)
    return 0
