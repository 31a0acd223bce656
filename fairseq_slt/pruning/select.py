"""Exact k-smallest selection over many tensors, by radix select on float bit patterns.

For non-negative float32 values the int32 bit pattern is monotonic in the value, so the k-th
smallest value is found with one 2^15-bin histogram of the high 16 bits plus a sort of the few
values in the winning bin.  That is O(n), needs no copy of all tensors at once, and is several
times faster than ``torch.topk``/``torch.kthvalue`` on CPU.

Ties at the threshold are broken by position: lower tensor index first, then lower flat index.
"""
import sys
from typing import List, Sequence

import torch

_HIGH_BINS = 1 << 15  # the sign bit is 0 for the non-negative scores used here


def _high_half(bits: torch.Tensor) -> torch.Tensor:
    """The high 16 bits of each int32, as a free strided int16 view where the byte order allows."""
    if sys.byteorder == "little":
        return bits.view(torch.int16)[1::2]
    return bits >> 16


def magnitude_bits(scores: torch.Tensor) -> torch.Tensor:
    """int32 view of non-negative float32 scores (flattened), monotonic in the value."""
    flat = scores.detach().reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    return flat.contiguous().view(torch.int32)


def keep_all_but_smallest(bit_views: Sequence[torch.Tensor], k: int) -> List[torch.Tensor]:
    """Boolean masks (one per tensor, flat): False exactly at the k smallest values overall.

    ``bit_views`` may compute its items on access (each is read three times at most, one at a time).
    """
    cache = {}

    def read(i: int):
        """(bits, high halves) of tensor i; kept when there is one tensor, recomputed otherwise."""
        if i in cache:
            return cache[i]
        bits = bit_views[i]
        pair = (bits, _high_half(bits))
        if len(bit_views) == 1:
            cache[i] = pair
        return pair

    if k == 0:
        return [torch.ones(read(i)[0].numel(), dtype=torch.bool) for i in range(len(bit_views))]
    sizes, counts = [], torch.zeros(_HIGH_BINS, dtype=torch.int64)
    for i in range(len(bit_views)):
        high = read(i)[1]
        sizes.append(high.numel())
        counts += torch.bincount(high, minlength=_HIGH_BINS)
    if not 0 <= k <= sum(sizes):
        raise ValueError(f"cannot select {k} of {sum(sizes)} values")

    cumulative = torch.cumsum(counts, 0)
    winner = int(torch.searchsorted(cumulative, torch.tensor([k]))[0])  # bin holding the k-th smallest
    below = int(cumulative[winner] - counts[winner])
    # the few values in the winning bin: (tensor, flat index, low 16 bits), in positional order
    owners, positions, lows = [], [], []
    for i in range(len(bit_views)):
        bits, high = read(i)
        index = torch.nonzero(high == winner).view(-1)
        owners.append(torch.full_like(index, i))
        positions.append(index)
        lows.append(bits[index] & 0xFFFF)
    owners, positions, lows = torch.cat(owners), torch.cat(positions), torch.cat(lows)
    order = torch.sort(lows, stable=True).indices  # stable: ties stay in positional order
    threshold_low = int(lows[order[k - below - 1]])
    threshold = (winner << 16) | threshold_low
    # below the threshold goes; of the values equal to it, the first ones by position
    tied = order[lows[order] == threshold_low]
    tied_to_prune = tied[: k - below - int((lows < threshold_low).sum())]

    keeps = []
    for i in range(len(bit_views)):
        keep = read(i)[0] >= threshold
        keep[positions[tied_to_prune[owners[tied_to_prune] == i]]] = False
        keeps.append(keep)
    return keeps
