"""N:M masks: in every group of M consecutive weights along a matrix's input dimension, keep the N largest.

The pattern sparse tensor cores run (2:4 on NVIDIA Ampere and later). A strategy like the others, a pure
function ``(scores, kept, previous_mask) -> Mask``: a weight the previous mask prunes stays pruned (a
group the previous mask left with fewer than ``kept`` weights keeps only those). Sparsity s keeps
``M - round(s*M)`` weights a group, so MP ramps the kept count down from M to N on its schedule.
"""
import re
from typing import Mapping, Optional, Tuple

import torch

from .io import UserError
from .mask import Mask


def parse_pattern(text: Optional[str]) -> Optional[Tuple[int, int]]:
    if not text:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
    if not match or not 0 < int(match.group(1)) < int(match.group(2)):
        raise UserError(f"--prune-pattern must be N:M with 0 < N < M (e.g. 2:4), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def pattern_sparsity(pattern: Tuple[int, int]) -> float:
    n, m = pattern
    return 1.0 - n / m


def kept_per_group(sparsity: float, m: int) -> int:
    return m - int(sparsity * m + 0.5)


def check_shapes(weights: Mapping[str, torch.Tensor], pattern: Tuple[int, int]) -> None:
    m = pattern[1]
    for name, weight in weights.items():
        if weight.dim() != 2 or weight.shape[1] % m:
            raise UserError(f"--prune-pattern {pattern[0]}:{m}: {name} has shape {tuple(weight.shape)}; its input "
                            f"dimension (the last) must be a multiple of {m} (narrow --prune-params to skip it)")


def pattern_mask(scores: Mapping[str, torch.Tensor], kept: int, m: int, previous_mask: Optional[Mask] = None) -> Mask:
    """Per matrix and group of ``m`` inputs, keep the ``kept`` highest scores (the previous mask respected)."""
    if not 0 < kept <= m:
        raise UserError(f"an N:M mask keeps 1 to {m} weights a group, asked for {kept}")
    tensors = {}
    for name, score in scores.items():
        rows, columns = score.shape
        score = score.detach().float().cpu()
        if previous_mask is not None:
            score = score.masked_fill(~previous_mask[name], float("-inf"))
        groups = score.reshape(rows, columns // m, m)
        chosen = groups.topk(kept, dim=-1).indices
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, chosen, True).reshape(rows, columns)
        tensors[name] = keep & previous_mask[name] if previous_mask is not None else keep
    return Mask(tensors)


def follows(mask: Mask, pattern: Tuple[int, int]) -> bool:
    """Every group of M keeps at most N weights (exactly N where nothing else pruned it)."""
    n, m = pattern
    return all(int(keep.reshape(keep.shape[0], -1, m).sum(-1).max()) <= n for keep in mask.values())


def random_pattern_mask(weights: Mapping[str, torch.Tensor], kept: int, m: int, seed: int,
                        previous_mask: Optional[Mask] = None) -> Mask:
    """Control: ``kept`` uniformly random weights of every group of ``m`` (the previous mask respected)."""
    generator = torch.Generator().manual_seed(int(seed))
    scores = {n: torch.rand(w.shape, generator=generator) for n, w in weights.items()}
    return pattern_mask(scores, kept, m, previous_mask)
