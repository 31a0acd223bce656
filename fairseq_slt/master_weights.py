"""fp16 training keeps fp32 master copies of the weights in the optimizer (fairseq's FP16Optimizer).

Weights written into the model after the optimizer was built (rewinding, CLT) must be copied into
those copies too, or the next optimizer step brings the old values back.  No fairseq import: this
relies only on the optimizer's ``fp16_params`` / ``fp32_params`` attributes.
"""
import torch


@torch.no_grad()
def sync_master_weights(optimizer) -> bool:
    """Copy the model's weights into the optimizer's fp32 master copies; False when it keeps none."""
    model_params = getattr(optimizer, "fp16_params", None)
    masters = getattr(optimizer, "fp32_params", None)
    if model_params is None or masters is None:
        return False
    if isinstance(masters, dict) or torch.is_tensor(masters):  # flattened: one buffer per device
        flats = list(masters.values()) if isinstance(masters, dict) else [masters]
        for flat in flats:
            params = model_params if len(flats) == 1 else [p for p in model_params if p.device == flat.device]
            offset = 0
            for param in params:
                flat.data[offset: offset + param.numel()].copy_(param.data.view(-1))
                offset += param.numel()
    else:  # one fp32 copy per parameter
        for param, master in zip(model_params, masters):
            master.data.copy_(param.data)
    return True
