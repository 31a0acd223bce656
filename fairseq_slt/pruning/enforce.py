"""Which parameters are prunable, and keeping pruned weights at exactly zero during training."""
import re
from collections import OrderedDict
from typing import Dict, Iterable, Optional, Tuple

import torch

from .io import PruningError
from .mask import Mask


def prunable_parameters(
    named_parameters: Iterable[Tuple[str, torch.nn.Parameter]], pattern: Optional[str] = None
) -> "OrderedDict[str, torch.nn.Parameter]":
    """Weight matrices (dim >= 2) whose name matches ``pattern`` (``re.search``), never biases or norms.

    A parameter shared under several names (tied embeddings) is listed once, under its first name.
    """
    try:
        regex = re.compile(pattern) if pattern else None
    except re.error as err:
        raise PruningError(f"--prune-params is not a valid regular expression: {err}") from None
    chosen, seen = OrderedDict(), set()
    for name, param in named_parameters:
        if id(param) in seen:
            continue
        seen.add(id(param))
        if param.dim() >= 2 and (regex is None or regex.search(name)):
            chosen[name] = param
    if not chosen:
        raise PruningError(f"no prunable weight matrix matches --prune-params {pattern!r}")
    return chosen


class MaskEnforcer:
    """Gradient hooks that zero masked gradients, plus ``apply()`` to zero masked weights.

    Hooks alone are not enough (Adam moments, weight decay and restored optimizer state move
    masked weights), so ``apply()`` is called after every optimizer step too.
    """

    def __init__(self, parameters: Dict[str, torch.nn.Parameter]):
        self.parameters = parameters
        self.mask: Optional[Mask] = None
        self._device_masks: Dict[str, torch.Tensor] = {}  # keep (bool), on each parameter's device
        self._pruned: Dict[str, torch.Tensor] = {}  # ~keep, made once per mask
        self._grad_masks: Dict[Tuple[str, torch.dtype], torch.Tensor] = {}  # keep as the gradient's dtype
        self._hooks = [p.register_hook(self._hook(n)) for n, p in parameters.items()]

    def _hook(self, name: str):
        def zero_masked_grad(grad: torch.Tensor) -> torch.Tensor:
            keep = self._device_masks.get(name)
            if keep is None:
                return grad
            factor = self._grad_masks.get((name, grad.dtype))
            if factor is None:
                factor = self._grad_masks[(name, grad.dtype)] = keep.to(grad.dtype)
            return grad * factor
        return zero_masked_grad

    def set_mask(self, mask: Mask) -> None:
        mask.check_matches(self.parameters, "prunable parameters", exact=True)
        self.mask = mask
        self._device_masks = {n: m.to(self.parameters[n].device) for n, m in mask.items()}
        self._pruned = {n: ~keep for n, keep in self._device_masks.items()}
        self._grad_masks = {}
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for name, pruned in self._pruned.items():
            self.parameters[name].masked_fill_(pruned, 0.0)

    def _masked_copies(self, copies: Iterable[Tuple[torch.nn.Parameter, torch.Tensor]]):
        """(copy, its keep mask) for each copy of a masked parameter that has storage of its own."""
        by_param = {id(self.parameters[n]): keep for n, keep in self._device_masks.items()}
        for param, copy in copies:
            keep = by_param.get(id(param))
            if keep is not None and copy.data_ptr() != param.data_ptr():
                yield copy, keep.to(copy.device)

    @torch.no_grad()
    def apply_to_copies(self, copies: Iterable[Tuple[torch.nn.Parameter, torch.Tensor]]) -> None:
        """Zero the masked positions of other copies of the parameters (e.g. fp32 master weights)."""
        for copy, keep in self._masked_copies(copies):
            copy.masked_fill_(~keep, 0.0)

    @torch.no_grad()
    def masked_nonzero(self, copies: Iterable[Tuple[torch.nn.Parameter, torch.Tensor]] = ()) -> int:
        """Pruned positions whose value is not exactly 0.0, in the parameters and in ``copies``
        (e.g. fp32 master weights)."""
        count = sum(int(((self.parameters[n] != 0) & ~keep).sum()) for n, keep in self._device_masks.items())
        return count + sum(int(((copy != 0) & ~keep).sum()) for copy, keep in self._masked_copies(copies))

    def remove(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
