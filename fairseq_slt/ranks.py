"""Data-parallel ranks must hold the same mask and weights: gathered checksums. No fairseq import."""
import hashlib
from typing import Dict

import torch


def all_ranks(value):
    """``value`` of every rank (all-gather over the default process group; just ours without one)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    values = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(values, value)
    return values


@torch.no_grad()
def weights_checksum(state: Dict[str, torch.Tensor]) -> str:
    """A short SHA-256 over every entry of a state dict (a model's, a checkpoint's), in order."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
