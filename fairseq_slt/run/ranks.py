"""Data-parallel ranks must hold the same mask and weights: gathered checksums. No fairseq import."""
import hashlib
from typing import Dict

import torch

from ..pruning import UserError


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


def check_ranks(mask, model: torch.nn.Module, when: str, weights: bool = False, log=None) -> None:
    """Every rank must hold the same mask (and weights, with ``weights``); a UserError naming each rank's
    checksum when they differ. ``log``: called with the line to log (rank 0 passes one)."""
    mine = {"mask": mask.checksum() if mask is not None else "none"}
    if weights:
        mine["weights"] = weights_checksum(model.state_dict())
    everyone = all_ranks(mine)
    for what in mine:
        values = [theirs[what] for theirs in everyone]
        if len(set(values)) > 1:
            raise UserError(f"the {what} differs between ranks at {when}: " +
                            ", ".join(f"rank {r} {v}" for r, v in enumerate(values)))
    if log is not None:
        sparsity = f" (sparsity {mask.sparsity():.4f})" if mask is not None else ""
        log(f"checksums at {when}: " + ", ".join(f"{what} {value}" for what, value in mine.items()) +
            sparsity + (f", identical on {len(everyone)} ranks" if len(everyone) > 1 else ""))
