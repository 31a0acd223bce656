"""Pruned weights are +0.0, all bits zero, everywhere (checked by bit pattern, since -0.0 == 0 by value):
in the model after every optimizer, in fp16 copies and fp32 masters, in checkpoints and rewind points of
weight-decay-0 runs, and in compact files, whose bitmap is the run's mask."""
import glob
import json
import math
import os

import pytest
import torch

from conftest import load, run_tool, train
from fairseq_slt.pruning import Mask, MaskEnforcer, magnitude_mask
from fairseq_slt.pruning.enforce import bits

TASK = "TranslationSLTTask"


def _signed_zeros(tensor, keep):
    """Pruned positions whose bits are not all zero."""
    return int((bits(tensor.detach()) != 0)[~keep].sum())


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "nag"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_every_optimizer_leaves_pruned_positions_all_bits_zero(optimizer, weight_decay):
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 12)
    make = {"adam": lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=weight_decay),
            "adamw": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=weight_decay),
            "sgd": lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=weight_decay),
            "nag": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=weight_decay)}
    dense = make[optimizer](model.parameters())
    for _ in range(3):  # dense steps first: moments everywhere, so pruned weights are pushed after the mask is set
        dense.zero_grad()
        model(torch.randn(8, 16)).pow(2).sum().backward()
        dense.step()
    mask = magnitude_mask({"weight": model.weight}, 0.7)
    keep = mask["weight"]
    assert int((model.weight.detach() < 0)[~keep].sum()) > 20  # negative weights get pruned: mul_ by 0 gives -0.0
    enforcer = MaskEnforcer({"weight": model.weight})
    enforcer.set_mask(mask)
    assert _signed_zeros(model.weight, keep) == 0
    half = model.weight.detach().half()  # another copy (as fp16 training's), zeroed by its own width
    half.view(-1)[~keep.view(-1)] = -0.0
    assert enforcer.masked_nonzero([(model.weight, half)]) == int((~keep).sum())  # -0.0 is counted by its bits
    enforcer.apply_to_copies([(model.weight, half)])
    assert _signed_zeros(half, keep) == 0 and enforcer.masked_nonzero([(model.weight, half)]) == 0
    for _ in range(5):
        dense.zero_grad()
        model(torch.randn(8, 16)).pow(2).sum().backward()
        assert _signed_zeros(model.weight.grad, keep) == 0  # the hook zeroes gradients bit-exactly as well
        dense.step()
        enforcer.apply()
        assert _signed_zeros(model.weight, keep) == 0 and enforcer.masked_nonzero() == 0
    assert bool((model.weight.detach()[keep] != 0).all())  # kept weights untouched by the AND


def _mask_of(path):
    return Mask.from_state_dict(load(path)["extra_state"][TASK]["mask"])


def _assert_all_bits_zero(path, mask):
    model = load(path)["model"]
    for name, keep in mask.items():
        assert _signed_zeros(model[name], keep) == 0, f"{path}: {name} has -0.0 at pruned positions"


@pytest.fixture(scope="module")
def no_decay_runs(data_bin, dense_run, tmp_path_factory):
    """SLT at 90 % and MP to 90 % (pruning every 2 updates, rewind point 6) without weight decay."""
    slt, mp = (str(tmp_path_factory.mktemp(name)) for name in ("slt-wd0", "mp-wd0"))
    train(data_bin, slt, "--weight-decay", "0", "--prune-method", "slt", "--prune-sparsity", "0.9",
          "--prune-mask-from", dense_run["best"], "--prune-rewind-from", dense_run["rewind4"],
          "--save-rewind-points", "0,6", max_update=10)
    train(data_bin, mp, "--weight-decay", "0", "--prune-method", "mp", "--prune-sparsity", "0.9",
          "--prune-start", "0", "--prune-end", "8", "--prune-frequency", "2", "--save-rewind-points", "6",
          max_update=10)
    return {"slt": slt, "mp": mp}


@pytest.mark.parametrize("method", ["slt", "mp"])
def test_weight_decay_0_runs_store_pruned_weights_as_plus_zero(no_decay_runs, method):
    run = no_decay_runs[method]
    mask = _mask_of(os.path.join(run, "checkpoint_last.pt"))
    assert abs(mask.sparsity() - 0.9) < 0.005
    for path in [os.path.join(run, "checkpoint_last.pt"), os.path.join(run, "checkpoint_best.pt")]:
        _assert_all_bits_zero(path, mask)
    rewind = sorted(glob.glob(os.path.join(run, "checkpoint_rewind_*.pt")))
    assert rewind
    for path in rewind:  # the mask of the update the point was saved at (MP's grows later)
        _assert_all_bits_zero(path, _mask_of(path))


@pytest.mark.parametrize("method", ["slt", "mp"])
def test_compact_mask_is_the_runs_mask_and_compress_reports_its_sparsity(no_decay_runs, method, tmp_path):
    last = os.path.join(no_decay_runs[method], "checkpoint_last.pt")
    compact, report, restored = (str(tmp_path / name) for name in ("compact.pt", "report.json", "restored.pt"))
    printed = run_tool("fairseq-slt", "compress", last, compact, "--json", report, "--quiet").stdout
    mask = _mask_of(last)
    report = json.load(open(report))
    assert abs(report["weight_sparsity"] - mask.sparsity()) < 1e-9
    # the whole file within the entropy bound of the mask's own sparsity: n*H(p) bits + fp32 kept values per
    # masked matrix, the other tensors as they are, plus the metadata (a -0.0 stored as kept overshoots this)
    p = 1 - mask.sparsity()
    entropy = -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    bound = sum(mask[n].numel() * entropy / 8 + 4 * int(mask[n].sum()) for n in mask) + \
        sum(r["bytes"] for r in report["tensors"] if r["kind"] == "dense")
    meta = len(json.dumps(load(compact)["checkpoint"], default=str))
    assert report["compact_bytes"] <= 1.05 * bound + meta + 8192, (report["compact_bytes"], bound, meta)
    assert f"weight matrices {100 * mask.sparsity():.2f} % zeros" in printed
    run_tool("fairseq-slt", "decompress", compact, restored)
    assert _mask_of(restored).checksum() == mask.checksum()
    _assert_all_bits_zero(restored, mask)


def test_compress_takes_the_bitmap_from_the_mask_for_an_older_run_with_minus_zeros(no_decay_runs, tmp_path):
    """A checkpoint from before the fix (-0.0 at pruned positions) compresses to the run's mask and +0.0;
    one whose weights are not zero where its mask prunes is refused in one line, nothing written."""
    state = load(os.path.join(no_decay_runs["slt"], "checkpoint_last.pt"))
    mask = Mask.from_state_dict(state["extra_state"][TASK]["mask"])
    name = "decoder.layers.0.fc1.weight"
    state["model"][name].view(-1)[~mask[name].view(-1)] = -0.0
    old, compact, restored = (str(tmp_path / n) for n in ("old.pt", "compact.pt", "restored.pt"))
    torch.save(state, old)
    run_tool("fairseq-slt", "compress", old, compact, "--quiet")
    run_tool("fairseq-slt", "decompress", compact, restored)
    assert _mask_of(restored).checksum() == mask.checksum()
    _assert_all_bits_zero(restored, mask)
    state["model"][name].view(-1)[~mask[name].view(-1)] = 0.5
    torch.save(state, old)
    refused = run_tool("fairseq-slt", "compress", old, str(tmp_path / "refused.pt"), check=False)
    assert refused.returncode != 0 and not os.path.exists(tmp_path / "refused.pt")
    assert refused.stderr.strip().splitlines() == [
        f"fairseq-slt compress: error: {name} holds {int((~mask[name]).sum())} nonzero weights where its mask "
        "prunes: the checkpoint does not match its mask"]
