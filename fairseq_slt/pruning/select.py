"""Exact k-smallest selection over many tensors, by radix select on float bit patterns.

For non-negative float32 values the int32 bit pattern is monotonic in the value, so the
k-th smallest value is found with one 2^15-bin histogram of the high 16 bits plus a sort of
the few values in the winning bin.  That is O(n), needs no copy of all tensors at once, and
is several times faster than ``torch.topk``/``torch.kthvalue`` on CPU.

Ties at the threshold are broken by position: lower tensor index first, then lower flat index.
"""
from typing import List, Sequence

import torch

_HIGH_BINS = 1 << 15  # sign bit is always 0 for the scores used here


def magnitude_bits(scores: torch.Tensor) -> torch.Tensor:
    """int32 view of non-negative float32 scores (flattened), monotonic in the value."""
    flat = scores.detach().reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    return flat.contiguous().view(torch.int32)


def _threshold(bit_views: Sequence[torch.Tensor], k: int) -> int:
    """Bit pattern of the k-th smallest value (1-based) over all tensors."""
    counts = torch.zeros(_HIGH_BINS, dtype=torch.int64)
    for bits in bit_views:
        counts += torch.bincount(bits >> 16, minlength=_HIGH_BINS)
    cumulative = torch.cumsum(counts, 0)
    high = int(torch.searchsorted(cumulative, torch.tensor([k]), right=False)[0])
    below = int(cumulative[high] - counts[high])
    low_values = torch.cat([bits[(bits >> 16) == high] & 0xFFFF for bits in bit_views])
    low = int(torch.sort(low_values).values[k - below - 1])
    return (high << 16) | low


def smallest_k(bit_views: Sequence[torch.Tensor], k: int) -> List[torch.Tensor]:
    """Boolean selections (one per tensor, flat) marking exactly the k smallest values overall."""
    total = sum(b.numel() for b in bit_views)
    if not 0 <= k <= total:
        raise ValueError(f"cannot select {k} of {total} values")
    if k == 0:
        return [torch.zeros_like(b, dtype=torch.bool) for b in bit_views]
    threshold = _threshold(bit_views, k)
    selections = [bits < threshold for bits in bit_views]
    missing = k - sum(int(s.sum()) for s in selections)
    for bits, chosen in zip(bit_views, selections):  # ties, in positional order
        if missing == 0:
            break
        tied = torch.nonzero(bits == threshold).view(-1)[:missing]
        chosen[tied] = True
        missing -= tied.numel()
    return selections
