"""``fairseq-slt average``: fairseq's checkpoint averaging (scripts/average_checkpoints.py, same options) for pruned
runs: safe loads, one mask for all inputs, the pruned positions +0.0 in the average.

fairseq's script cannot read a checkpoint under torch >= 2.6 (weights-only loads refuse argparse.Namespace), and
averages checkpoints of different masks (an MP run's before its schedule's end) into a denser model without a word.
"""
import os
import re
from typing import List, Optional

import torch

from ..checkpoints import Checkpoint
from ..pruning import UserError, atomic_save
from ..pruning.compact import aliases
from ..pruning.enforce import bits
from ..pruning.io import Failure, refuse_overwrite

UPDATE_NAME = re.compile(r"checkpoint_\d+_(\d+)\.pt")  # fairseq's --save-interval-updates files
EPOCH_NAME = re.compile(r"checkpoint(\d+)\.pt")  # fairseq's epoch files


def add_arguments(parser):
    parser.add_argument("--inputs", required=True, nargs="+", metavar="PATH",
                        help="checkpoints to average (the first one's other state is kept, as fairseq's script does); "
                             "with --num-update-checkpoints or --num-epoch-checkpoints: one run folder")
    parser.add_argument("--output", required=True, metavar="FILE", help="the averaged checkpoint to write")
    latest = parser.add_mutually_exclusive_group()
    latest.add_argument("--num-update-checkpoints", type=int, metavar="N",
                        help="average the folder's last N checkpoint_EPOCH_UPDATE.pt (--save-interval-updates)")
    latest.add_argument("--num-epoch-checkpoints", type=int, metavar="N",
                        help="average the folder's last N checkpointEPOCH.pt")
    parser.add_argument("--checkpoint-upper-bound", type=int, metavar="K",
                        help="with --num-*-checkpoints: only checkpoints of update (or epoch) K or earlier")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")


def main(args):
    paths = input_paths(args)
    refuse_overwrite(args.output, args.force)
    report = average(paths, args.output)
    print(f"averaged {len(paths)} checkpoints into {args.output} ({os.path.getsize(args.output):,} bytes): "
          + ", ".join(f"{os.path.basename(p)} (update {u if u is not None else '?'})"
                      for p, u in zip(paths, report["updates"])))
    if report["sparsity"] is None:
        print("  no mask in the inputs (not pruned by fairseq-slt): a plain average, as fairseq's script's")
    else:
        print(f"  one mask in all of them, sparsity {report['sparsity']:.4f}; in the average the weight matrices it "
              f"covers are {100 * report['zero_bits']:.2f} % zeros (all bits 0), every pruned position among them")
    return 0


def input_paths(args) -> List[str]:
    """The checkpoints to average, as fairseq's script picks them (the newest first with --num-*-checkpoints)."""
    count = next((n for n in (args.num_update_checkpoints, args.num_epoch_checkpoints) if n is not None), None)
    if count is None:
        if args.checkpoint_upper_bound is not None:
            raise UserError("--checkpoint-upper-bound needs --num-update-checkpoints or --num-epoch-checkpoints")
        return list(args.inputs)
    option = "--num-update-checkpoints" if args.num_update_checkpoints is not None else "--num-epoch-checkpoints"
    if count < 1:
        raise UserError(f"{option} must be at least 1, not {count}")
    if len(args.inputs) != 1 or not os.path.isdir(args.inputs[0]):
        raise UserError(f"{option} takes one run folder as --inputs, not {' '.join(args.inputs)}")
    by_update = args.num_update_checkpoints is not None
    folder, pattern = args.inputs[0], UPDATE_NAME if by_update else EPOCH_NAME
    found = sorted(((int(m.group(1)), name) for name in os.listdir(folder) for m in [pattern.fullmatch(name)]
                    if m and (args.checkpoint_upper_bound is None or int(m.group(1)) <= args.checkpoint_upper_bound)),
                   reverse=True)
    if len(found) < count:
        kind = "checkpoint_EPOCH_UPDATE.pt" if by_update else "checkpointEPOCH.pt"
        bound = "" if args.checkpoint_upper_bound is None else f" up to {args.checkpoint_upper_bound}"
        raise UserError(f"{option} {count}: {folder} holds {len(found)} {kind}{bound}")
    return [os.path.join(folder, name) for _, name in found[:count]]


def average(paths: List[str], output: str) -> dict:
    """Writes the average of ``paths`` to ``output`` and returns what it checked: the inputs' updates, the mask's
    sparsity (None: no mask) and the share of all-bits-zero weights under the mask in the average."""
    if len(set(map(os.path.realpath, paths))) != len(paths):
        raise UserError("--inputs names one checkpoint twice")
    first = Checkpoint(paths[0], "checkpoint", mmap=True)
    names = aliases(first.model)  # tied tensors: averaged once, tied again in the average
    unique = [name for name, owner in names.items() if owner == name]
    mask = first.mask()
    if mask is not None:
        mask.check_matches(first.model, f"model of {paths[0]}")
    sums = {name: first.model[name].float().clone() if first.model[name].is_floating_point() else first.model[name]
            for name in unique}
    _check_zeros(first, mask)
    updates = [first.num_updates]
    for path in paths[1:]:
        other = Checkpoint(path, "checkpoint", mmap=True)
        _check_same_run(first, other, mask)
        _check_zeros(other, mask)
        for name in unique:
            if sums[name].is_floating_point():
                sums[name] += other.model[name].float()
        updates.append(other.num_updates)
    averaged = {name: (total / len(paths) if total.is_floating_point() else total) for name, total in sums.items()}
    if mask is not None:  # +0.0 at every pruned position, whatever sign the inputs' zeros had
        for name, keep in mask.items():
            owner = names[name]
            averaged[owner] = torch.where(keep, averaged[owner], torch.zeros((), dtype=averaged[owner].dtype))
    state = dict(first.state, model={name: averaged[owner] for name, owner in names.items()})
    zero_bits = _zero_bits_where_pruned(state["model"], mask) if mask is not None else None
    atomic_save(state, output)
    return {"updates": updates, "sparsity": None if mask is None else mask.sparsity(), "zero_bits": zero_bits}


def _check_same_run(first: Checkpoint, other: Checkpoint, mask) -> None:
    other.check_matches(first.model)  # the same tensors and shapes as the first input's model
    if other.dictionaries and first.dictionaries and other.dictionaries != first.dictionaries:
        raise UserError(f"{other.path} was trained with other dictionaries than {first.path}: another run")
    theirs = other.mask()
    if (theirs is None) != (mask is None) or (mask is not None and theirs.checksum() != mask.checksum()):
        def described(m) -> str:
            return "no mask" if m is None else f"a mask of sparsity {m.sparsity():.4f}"
        why = ("an average with unpruned weights is not sparse" if theirs is None or mask is None else
               "an average of weights pruned at other positions is not that sparse; average checkpoints of one mask "
               "(an MP run's from its schedule's end on)")
        raise UserError(f"{other.path} (update {other.num_updates}) holds {described(theirs)}, {first.path} (update "
                        f"{first.num_updates}) {described(mask)}: {why}")


def _check_zeros(checkpoint: Checkpoint, mask) -> None:
    """Zeros where the mask prunes (-0.0 included: versions before ea551de stored some)."""
    if mask is None:
        return
    stray = sum(int((checkpoint.model[name][~keep] != 0).sum()) for name, keep in mask.items())
    if stray:
        raise UserError(f"{checkpoint.path} holds {stray} nonzero weights where its mask prunes: not a checkpoint "
                        "of a masked run")


def _zero_bits_where_pruned(model: dict, mask) -> Optional[float]:
    """Share of the masked matrices' weights whose bits are all 0; a pruned position with a bit set is a failure."""
    zeros = total = 0
    for name, keep in mask.items():
        words = bits(model[name])
        if bool((words[~keep] != 0).any()):
            raise Failure(f"the average of {name} is not +0.0 at every pruned position")
        zeros, total = zeros + int((words == 0).sum()), total + words.numel()
    return zeros / total if total else 0.0
