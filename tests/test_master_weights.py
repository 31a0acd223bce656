"""Rewound weights reach fairseq's fp32 master copies (fp16 training)."""
from types import SimpleNamespace

import torch
from fairseq.optim.fp16_optimizer import FP16Optimizer
from omegaconf import OmegaConf

from fairseq_slt.master_weights import sync_master_weights
from fairseq_slt.pruning import MaskEnforcer, magnitude_mask


def fp16_optimizer(params):
    cfg = OmegaConf.create({
        "common": {"fp16_no_flatten_grads": True, "bf16": False, "fp16_scale_window": 128, "fp16_init_scale": 1,
                   "fp16_scale_tolerance": 0.0, "threshold_loss_scale": None, "min_loss_scale": 1e-4,
                   "model_parallel_size": 1},
        "optimizer": {"_name": "adam", "lr": [0.01], "adam_betas": "(0.9, 0.98)", "adam_eps": 1e-8,
                      "weight_decay": 0.0, "use_old_adam": False, "fp16_adam_stats": False, "tpu": False},
        "optimization": {"update_freq": [1]},
        "distributed_training": {"distributed_world_size": 1},
    })
    return FP16Optimizer.build_optimizer(cfg, params)


def test_rewound_masked_weights_survive_the_fp16_optimizer_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 6)
    optimizer = fp16_optimizer(list(model.parameters()))  # master copies made now, from the initial weights
    rewound = {"weight": torch.randn(6, 8), "bias": torch.randn(6)}
    mask = magnitude_mask({"weight": rewound["weight"]}, 0.5)
    model.load_state_dict(rewound)
    enforcer = MaskEnforcer({"weight": model.weight})
    enforcer.set_mask(mask)
    assert sync_master_weights(optimizer)
    assert torch.equal(optimizer.fp32_params[0].data, model.weight.data)
    optimizer.zero_grad()
    optimizer.backward(model(torch.randn(4, 8)).sum())
    optimizer.step()  # copies the masters back into the model
    enforcer.apply()
    assert float(model.weight.detach()[~mask["weight"]].abs().max()) == 0.0
    kept = mask["weight"]
    assert float((model.weight.detach()[kept] - rewound["weight"][kept]).abs().max()) < 0.05  # moved from the rewind point
    assert not sync_master_weights(torch.optim.SGD(model.parameters(), lr=0.1))  # no master copies: nothing to do


def test_flat_master_buffer_is_filled_in_parameter_order():
    params = [torch.nn.Parameter(torch.arange(6.0).view(2, 3)), torch.nn.Parameter(torch.tensor([7.0, 8.0]))]
    holder = SimpleNamespace(fp16_params=params, fp32_params={"cpu": torch.zeros(8)})
    assert sync_master_weights(holder)
    assert holder.fp32_params["cpu"].tolist() == [0, 1, 2, 3, 4, 5, 7, 8]
