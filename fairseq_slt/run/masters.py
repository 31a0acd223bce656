"""fp16 training keeps fp32 master copies of the weights in the optimizer (fairseq's FP16Optimizer).

Weights written into the model after the optimizer was built (rewinding, CLT) must be copied into
those copies too, or the next optimizer step brings the old values back; pruned positions are zeroed
in them as in the model.  No fairseq import: this relies only on the optimizer's ``fp16_params`` /
``fp32_params`` attributes (one fp32 copy per parameter, or flat buffers, one per device).
fairseq's ``--store-ema`` keeps one more copy, an average of the weights stepped after every update
(``ema_copies``): zeroed likewise, or a pruned run's average is dense (an MP 80 % run's had no zeros).
"""
from typing import Dict, List, Tuple

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


def ema_copies(ema, params: Dict[str, torch.nn.Parameter], model: torch.nn.Module
               ) -> List[Tuple[torch.nn.Parameter, torch.Tensor]]:
    """(prunable parameter, its copy in fairseq's --store-ema average) pairs: the average's model weights and, with
    --ema-fp32, its fp32 copies, under every name the parameter has (tied embeddings: each name, once a storage)."""
    prunable = {id(p) for p in params.values()}
    sources = [ema.get_model().state_dict(), getattr(ema, "fp32_params", None) or {}]
    pairs, seen = [], set()
    for name, param in model.named_parameters(remove_duplicate=False):
        for source in sources if id(param) in prunable else ():
            copy = source.get(name)
            if copy is not None and copy.data_ptr() not in seen:
                seen.add(copy.data_ptr())
                pairs.append((param, copy))
    return pairs
