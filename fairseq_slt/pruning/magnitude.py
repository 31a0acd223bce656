"""Mask strategies: pure functions ``(weights, sparsity, previous_mask, ...) -> Mask``.

A previous mask is always respected: a weight it prunes stays pruned, so iterative pruning
only ever shrinks the set of kept weights.  When the previous mask already prunes more than
asked, it is returned unchanged.
"""
from typing import Callable, Dict, Mapping, Optional

import torch

from .io import UserError
from .mask import Mask
from .select import keep_all_but_smallest, magnitude_bits

SCOPES = ("layer", "global")
_NEVER = float("inf")  # score of an already pruned weight: never chosen again, never unpruned


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise UserError(f"{what} must be in [0, 1), got {sparsity}")
    return float(sparsity)


def pruned_count(sparsity: float, numel: int) -> int:
    """How many of ``numel`` weights a sparsity prunes (nearest integer, so exact to +-1 weight)."""
    return min(numel, int(sparsity * numel + 0.5))


def _scores(score: torch.Tensor, previous: Optional[torch.Tensor]) -> torch.Tensor:
    score = score.detach().float()
    if previous is not None:
        score = score.masked_fill(~previous.to(score.device), _NEVER)
    return magnitude_bits(score)


def _already_pruned(previous_mask: Optional[Mask], name: str) -> int:
    return int((~previous_mask[name]).sum()) if previous_mask is not None else 0


def _combine(shape, keep: torch.Tensor, previous_mask: Optional[Mask], name: str) -> torch.Tensor:
    keep = keep.view(shape).cpu()
    return keep & previous_mask[name] if previous_mask is not None else keep


class _LazyBits:
    """Score bit patterns of many tensors, computed when asked (bounds memory to one layer)."""

    def __init__(self, scores: Mapping[str, torch.Tensor], previous_mask: Optional[Mask], transform: Callable):
        self.items = list(scores.items())
        self.previous_mask, self.transform = previous_mask, transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        name, weight = self.items[index]
        prev = self.previous_mask[name] if self.previous_mask is not None else None
        return _scores(self.transform(weight), prev)


def masks_from_scores(
    scores: Mapping[str, torch.Tensor],
    counts: Dict[str, int],
    previous_mask: Optional[Mask] = None,
    transform: Callable = lambda score: score,
) -> Mask:
    """Per tensor, prune the ``counts[name]`` lowest ``transform(score)`` (previous mask respected)."""
    tensors = {}
    for name, score in scores.items():
        extra = max(counts[name] - _already_pruned(previous_mask, name), 0)
        keep = keep_all_but_smallest(_LazyBits({name: score}, previous_mask, transform), extra)[0]
        tensors[name] = _combine(score.shape, keep, previous_mask, name)
    return Mask(tensors)


def magnitude_mask(
    weights: Mapping[str, torch.Tensor],
    sparsity: float,
    previous_mask: Optional[Mask] = None,
    scope: str = "layer",
) -> Mask:
    """Prune the smallest-magnitude weights: per tensor (``layer``) or over all tensors (``global``)."""
    sparsity = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise UserError(f"scope must be one of {SCOPES}, got {scope!r}")
    if previous_mask is not None:
        previous_mask.check_matches(weights, "weights", exact=True)
    if scope == "layer":
        counts = {name: pruned_count(sparsity, w.numel()) for name, w in weights.items()}
        return masks_from_scores(weights, counts, previous_mask, transform=lambda w: w.detach().abs())
    total = sum(w.numel() for w in weights.values())
    already = sum(_already_pruned(previous_mask, n) for n in weights)
    extra = max(pruned_count(sparsity, total) - already, 0)
    lazy = _LazyBits(weights, previous_mask, lambda w: w.detach().abs())
    keeps = keep_all_but_smallest(lazy, extra)
    return Mask({n: _combine(w.shape, keep, previous_mask, n) for (n, w), keep in zip(weights.items(), keeps)})


def random_mask(
    weights: Mapping[str, torch.Tensor],
    like: Mask,
    seed: int,
    previous_mask: Optional[Mask] = None,
) -> Mask:
    """Control: a uniformly random mask with the same per-tensor pruned counts as ``like``."""
    like.check_matches(weights, "weights")
    generator = torch.Generator().manual_seed(int(seed))
    scores = {n: torch.rand(weights[n].shape, generator=generator) for n in like}
    counts = {n: int((~m).sum()) for n, m in like.items()}
    return masks_from_scores(scores, counts, previous_mask)
