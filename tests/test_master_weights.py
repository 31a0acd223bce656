"""Rewound weights reach fairseq's fp32 master copies, and pruned positions stay 0 there (fp16 training)."""
import os
from types import SimpleNamespace

import pytest
import torch
from fairseq.optim.fp16_optimizer import FP16Optimizer
from omegaconf import OmegaConf

from conftest import bits, load, log_values, train
from fairseq_slt.run.masters import master_copies, sync_master_weights
from fairseq_slt.pruning import Mask, MaskEnforcer, magnitude_mask


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
    model = torch.nn.Linear(8, 6).half()  # fp16 model: its fp32 masters are separate tensors
    optimizer = fp16_optimizer(list(model.parameters()))  # master copies made now, from the initial weights
    rewound = {"weight": torch.randn(6, 8).half(), "bias": torch.randn(6).half()}
    mask = magnitude_mask({"weight": rewound["weight"]}, 0.5)
    model.load_state_dict(rewound)
    enforcer = MaskEnforcer({"weight": model.weight})
    enforcer.set_mask(mask)
    assert sync_master_weights(master_copies(optimizer))
    assert optimizer.fp32_params[0].data_ptr() != model.weight.data_ptr()
    assert torch.equal(optimizer.fp32_params[0].data, model.weight.data.float())
    optimizer.zero_grad()
    optimizer.backward(model(torch.randn(4, 8).half()).sum())
    optimizer.step()  # copies the masters back into the model
    enforcer.apply()
    assert float(model.weight.detach()[~mask["weight"]].abs().max()) == 0.0
    kept = mask["weight"]
    assert float((model.weight.detach()[kept] - rewound["weight"][kept]).float().abs().max()) < 0.05  # moved from the rewind point
    assert not sync_master_weights(master_copies(torch.optim.SGD(model.parameters(), lr=0.1)))  # no master copies: nothing to do


def test_flat_master_buffer_is_filled_in_parameter_order():
    params = [torch.nn.Parameter(torch.arange(6.0).view(2, 3)), torch.nn.Parameter(torch.tensor([7.0, 8.0]))]
    holder = SimpleNamespace(fp16_params=params, fp32_params={"cpu": torch.zeros(8)})
    assert sync_master_weights(master_copies(holder))
    assert holder.fp32_params["cpu"].tolist() == [0, 1, 2, 3, 4, 5, 7, 8]


def test_pruned_positions_are_zeroed_in_the_fp32_masters_as_in_the_model():
    torch.manual_seed(1)
    model = torch.nn.Linear(8, 6).half()
    optimizer = fp16_optimizer(list(model.parameters()))
    before = optimizer.fp32_params[0].data.clone()
    enforcer = MaskEnforcer({"weight": model.weight})
    mask = magnitude_mask({"weight": model.weight.detach().float()}, 0.75)  # MP prunes after the masters were built
    enforcer.set_mask(mask)
    assert float(optimizer.fp32_params[0].data[~mask["weight"]].abs().min()) > 0  # the masters still hold them
    enforcer.apply_to_copies(master_copies(optimizer))
    keep = mask["weight"]
    assert int((optimizer.fp32_params[0].data[~keep] != 0).sum()) == 0
    assert torch.equal(optimizer.fp32_params[0].data[keep], before[keep])
    assert torch.equal(optimizer.fp32_params[1].data, model.bias.data.float())  # biases are never masked
    optimizer.zero_grad()
    optimizer.backward(model(torch.randn(4, 8).half()).sum())
    optimizer.step()  # masked gradients are 0 (hooks), so the masters' pruned positions stay 0
    assert int((optimizer.fp32_params[0].data[~keep] != 0).sum()) == 0
    assert int((model.weight.detach()[~keep] != 0).sum()) == 0


def test_flat_master_buffers_are_zeroed_at_each_parameters_masked_positions():
    weight = torch.nn.Parameter(torch.arange(1.0, 7.0).view(2, 3))
    bias = torch.nn.Parameter(torch.tensor([7.0, 8.0]))
    holder = SimpleNamespace(fp16_params=[weight, bias], fp32_params={"cpu": torch.arange(1.0, 9.0)})
    enforcer = MaskEnforcer({"weight": weight})
    enforcer.set_mask(Mask({"weight": torch.tensor([[True, False, True], [False, True, False]])}))
    enforcer.apply_to_copies(master_copies(holder))
    assert holder.fp32_params["cpu"].tolist() == [1, 0, 3, 0, 5, 0, 7, 8]


FP16 = ["--fp16", "--fp16-no-flatten-grads"]  # real fp16 training on CPU: fp16 model, fp32 master copies


def test_fp16_training_keeps_pruned_positions_zero_in_the_model_and_the_fp32_masters(data_bin, dense_run, tmp_path):
    """masked_nonzero counts the model and the optimizer's fp32 masters; the weights are checked here too."""
    slt = str(tmp_path / "slt16")
    result = train(data_bin, slt, *FP16, "--prune-method", "slt", "--prune-sparsity", "0.8", "--prune-mask-from",
                   dense_run["best"], "--prune-rewind-from", dense_run["rewind4"], "--save-rewind-points", "0,1",
                   max_update=6)
    assert "copied the rewound weights into the optimizer's fp32 master weights" in result.stdout
    assert "loss_scale" in result.stdout and set(log_values(result.stdout, "masked_nonzero")) == {0.0}
    mask = Mask.load(os.path.join(slt, "mask.pt"))
    after1 = load(os.path.join(slt, "checkpoint_rewind_1.pt"))["model"]
    theta4, theta0 = load(dense_run["rewind4"])["model"], load(dense_run["rewind0"])["model"]
    for name, keep in mask.items():
        assert after1[name].dtype == torch.float16 and int((after1[name][~keep] != 0).sum()) == 0, name
        # one update after the rewind the weights sit at theta_4, not at the initialisation the masters began with
        to_rewind = float((after1[name].float() - theta4[name])[keep].abs().mean())
        to_init = float((after1[name].float() - theta0[name])[keep].abs().mean())
        assert to_rewind < to_init / 4, (name, to_rewind, to_init)
    last = load(os.path.join(slt, "checkpoint_last.pt"))["model"]
    assert all(int((last[n][~k] != 0).sum()) == 0 for n, k in mask.items())

    mp = str(tmp_path / "mp16")
    result = train(data_bin, mp, *FP16, "--prune-method", "mp", "--prune-sparsity", "0.8", "--prune-start", "2",
                   "--prune-end", "8", "--prune-frequency", "2", max_update=10)
    assert set(log_values(result.stdout, "masked_nonzero")) == {0.0} and max(log_values(result.stdout, "sparsity")) > 0.79
    mask = Mask.load(os.path.join(mp, "mask.pt"))
    last = load(os.path.join(mp, "checkpoint_last.pt"))["model"]
    assert all(int((last[n][~k] != 0).sum()) == 0 for n, k in mask.items())


def test_the_store_ema_average_keeps_the_runs_pruned_positions_zero(data_bin, tmp_path):
    """--store-ema: fairseq steps an average of the weights after every update (with --ema-fp32, in fp32 copies of
    its own). An MP run's average kept every position MP pruned nonzero (an "80 %" average had no zeros); now
    its bits are zero exactly where the run's mask prunes, under every name of the tied embeddings."""
    save = str(tmp_path / "mp_ema")
    result = train(data_bin, save, "--prune-method", "mp", "--prune-sparsity", "0.8", "--prune-start", "2",
                   "--prune-end", "8", "--prune-frequency", "2", "--store-ema", "--ema-decay", "0.99", "--ema-fp32",
                   "--log-interval", "1", max_update=10)
    assert set(log_values(result.stdout, "masked_nonzero")) == {0.0}
    mask = Mask.load(os.path.join(save, "mask.pt"))
    assert abs(mask.sparsity() - 0.8) < 0.005
    extra = load(os.path.join(save, "checkpoint_last.pt"))["extra_state"]
    names = {"decoder.embed_tokens.weight": "encoder.embed_tokens.weight",  # tied: masked once, under its first name
             "decoder.output_projection.weight": "encoder.embed_tokens.weight"}
    for average in (extra["ema"], extra["ema_fp32_params"]):
        for name in [n for n in average if n in mask or n in names]:
            keep = mask[names.get(name, name)]
            assert int((bits(average[name][~keep]) != 0).sum()) == 0, name  # every pruned position: all bits 0
            assert float(average[name][keep].ne(0).float().mean()) > 0.99, name  # the kept ones: an average


def test_store_ema_from_a_checkpoint_without_an_average_starts_it_from_the_checkpoints_weights(data_bin, dense_run,
                                                                                                 tmp_path):
    """MP started from a dense checkpoint with --restore-file and --store-ema: fairseq means to start the average
    from the checkpoint's weights, but reads them after freeing them (KeyError: 'model'). The run trains; its
    average starts at the dense weights (one update at decay 0.9: 0.9 of them) and is masked like the run."""
    save = str(tmp_path / "mp_restored_ema")
    result = train(data_bin, save, "--prune-method", "mp", "--prune-sparsity", "0.5", "--prune-start", "1",
                   "--prune-end", "2", "--prune-frequency", "1", "--restore-file", dense_run["best"], "--reset-optimizer",
                   "--reset-dataloader", "--reset-meters", "--reset-lr-scheduler", "--store-ema", "--ema-decay", "0.9",
                   "--ema-fp32", "--save-interval-updates", "1", "--keep-interval-updates", "-1", max_update=3)
    assert "the restored checkpoint holds no average; it starts from the checkpoint's weights" in result.stdout
    dense = load(dense_run["best"])["model"]
    first = load(os.path.join(save, "checkpoint_1_1.pt"))
    name = "encoder.layers.0.fc1.weight"
    average, after = first["extra_state"]["ema"][name], first["model"][name]
    assert torch.allclose(average, 0.9 * dense[name] + 0.1 * after, atol=1e-6)
    mask = Mask.load(os.path.join(save, "mask.pt"))
    last = load(os.path.join(save, "checkpoint_last.pt"))["extra_state"]
    for copy in (last["ema"], last["ema_fp32_params"]):
        assert all(int((bits(copy[n][~k]) != 0).sum()) == 0 for n, k in mask.items())


def test_memory_efficient_fp16_training_keeps_pruned_weights_zero(data_bin, dense_run, tmp_path):
    """--memory-efficient-fp16 keeps no fp32 copy of the weights (its fp32 state is the optimizer's moments)."""
    for label, options in (("slt", ["--prune-method", "slt", "--prune-sparsity", "0.8", "--prune-mask-from",
                                    dense_run["best"], "--prune-rewind-from", dense_run["rewind4"]]),
                           ("mp", ["--prune-method", "mp", "--prune-sparsity", "0.8", "--prune-start", "2",
                                   "--prune-end", "8", "--prune-frequency", "2"])):
        save = str(tmp_path / label)
        # fairseq halves the model only with --fp16 (--memory-efficient-fp16 alone trains fp32 weights)
        result = train(data_bin, save, "--fp16", "--memory-efficient-fp16", *options, "--save-rewind-points", "10",
                       max_update=10)
        assert "'memory_efficient_fp16': True" in result.stdout and "loss_scale" in result.stdout
        assert set(log_values(result.stdout, "masked_nonzero")) == {0.0}, label
        mask = Mask.load(os.path.join(save, "mask.pt"))
        assert abs(mask.sparsity() - 0.8) < 1e-3
        live = load(os.path.join(save, "checkpoint_rewind_10.pt"))["model"]  # the training model, as it is
        last = load(os.path.join(save, "checkpoint_last.pt"))["model"]  # fairseq writes these in fp32
        for name, keep in mask.items():
            assert live[name].dtype == torch.float16 and int((live[name][~keep] != 0).sum()) == 0, (label, name)
            assert int((last[name][~keep] != 0).sum()) == 0 and int((last[name][keep] != 0).sum()) > 0, (label, name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: flattened --fp16 and --amp run only there")
@pytest.mark.parametrize("precision", [["--fp16"], ["--amp"]])
def test_gpu_precision_keeps_pruned_weights_zero(data_bin, dense_run, tmp_path, precision):
    save = str(tmp_path / "gpu")
    result = train(data_bin, save, *precision, "--prune-method", "mp", "--prune-sparsity", "0.8", "--prune-start", "2",
                   "--prune-end", "8", "--prune-frequency", "2", max_update=10, cpu=False)
    assert set(log_values(result.stdout, "masked_nonzero")) == {0.0}
    mask = Mask.load(os.path.join(save, "mask.pt"))
    last = load(os.path.join(save, "checkpoint_last.pt"))["model"]
    assert all(int((last[n][~k] != 0).sum()) == 0 for n, k in mask.items())
