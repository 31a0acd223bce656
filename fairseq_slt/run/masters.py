"""fp16 training keeps fp32 master copies of the weights in the optimizer (fairseq's FP16Optimizer).

Weights written into the model after the optimizer was built (rewinding, CLT) must be copied into
those copies too, or the next optimizer step brings the old values back; pruned positions are zeroed
in them as in the model.  No fairseq import: this relies only on the optimizer's ``fp16_params`` /
``fp32_params`` attributes (one fp32 copy per parameter, or flat buffers, one per device).
"""
from typing import List, Tuple

import torch


def master_copies(optimizer) -> List[Tuple[torch.nn.Parameter, torch.Tensor]]:
    """(model parameter, its fp32 master copy shaped like it) pairs; empty when the optimizer keeps none."""
    model_params = getattr(optimizer, "fp16_params", None)
    masters = getattr(optimizer, "fp32_params", None)
    if model_params is None or masters is None:
        return []
    if not (isinstance(masters, dict) or torch.is_tensor(masters)):  # one fp32 copy per parameter
        return [(param, master.data) for param, master in zip(model_params, masters)]
    pairs = []
    flats = list(masters.values()) if isinstance(masters, dict) else [masters]
    for flat in flats:
        params = model_params if len(flats) == 1 else [p for p in model_params if p.device == flat.device]
        offset = 0
        for param in params:
            pairs.append((param, flat.data[offset: offset + param.numel()].view_as(param)))
            offset += param.numel()
    return pairs


@torch.no_grad()
def sync_master_weights(copies: List[Tuple[torch.nn.Parameter, torch.Tensor]]) -> bool:
    """Copy the model's weights into their master copies (from ``master_copies``); False when there are none."""
    for param, master in copies:
        master.copy_(param.data)
    return bool(copies)
