"""Mask files (atomic, packed, validated), safe loading, and mask enforcement under Adam."""
import os
import pickle

import pytest
import torch

from fairseq_slt.pruning import Mask, MaskEnforcer, UserError, magnitude_mask, safe_load


def test_mask_roundtrip_report_and_packed_bits(tmp_path):
    mask = Mask({"a": torch.tensor([[True, False, False], [True, True, False]]), "b": torch.ones(9, dtype=torch.bool)})
    path, report = str(tmp_path / "mask.pt"), str(tmp_path / "report.json")
    mask.save(path, report)
    again = Mask.load(path)
    assert list(again) == ["a", "b"] and all(torch.equal(mask[n], again[n]) for n in mask)
    assert mask.report()["layers"]["a"] == {"shape": [2, 3], "total": 6, "pruned": 3, "sparsity": 0.5}
    assert mask.report()["pruned"] == 3 and mask.report()["total"] == 15
    # 1 bit per weight: 400k weights are 50 kB packed (400 kB as bool or uint8) plus a small container
    big = Mask({"w": torch.rand(400, 1000, generator=torch.Generator().manual_seed(0)) > 0.8})
    big.save(str(tmp_path / "big.pt"))
    assert 50_000 <= os.path.getsize(tmp_path / "big.pt") < 50_000 + 4_000
    assert torch.equal(Mask.load(str(tmp_path / "big.pt"))["w"], big["w"])


def test_an_interrupted_overwrite_leaves_the_old_mask_intact(tmp_path, monkeypatch):
    path = str(tmp_path / "mask.pt")
    old = Mask({"w": torch.tensor([True, False, True, True])})
    old.save(path)

    def save_half_then_fail(obj, handle):
        handle.write(b"PK\x03\x04 half a zip file")  # a partial write, then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        Mask({"w": torch.tensor([False, False, False, True])}).save(path)
    monkeypatch.undo()
    assert torch.equal(Mask.load(path)["w"], old["w"])
    assert os.listdir(tmp_path) == ["mask.pt"]  # no temporary file left behind


def test_a_flipped_byte_in_a_mask_file_is_detected(tmp_path):
    path = tmp_path / "mask.pt"
    mask = Mask({"w": torch.rand(64, 64, generator=torch.Generator().manual_seed(1)) > 0.5})
    mask.save(str(path))
    content = bytearray(path.read_bytes())
    bits = mask.state_dict()["masks"]["w"]["bits"].numpy().tobytes()
    at = content.find(bits)
    assert at > 0  # the packed bits lie uncompressed in torch's zip container
    content[at + 100] ^= 0x10
    path.write_bytes(bytes(content))
    with pytest.raises(UserError, match=f"mask file {path} is corrupt: its checksum does not match"):
        Mask.load(str(path))


def test_corrupt_and_foreign_mask_files_give_one_error_and_change_nothing(tmp_path):
    path = tmp_path / "mask.pt"
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(UserError, match="cannot read mask file"):
        Mask.load(str(path))
    state = Mask({"a": torch.ones(10, dtype=torch.bool)}).state_dict()
    state["masks"]["a"]["bits"] = state["masks"]["a"]["bits"][:1]  # truncated
    torch.save(state, path)
    with pytest.raises(UserError, match="corrupt"):
        Mask.load(str(path))
    torch.save({"model": {}}, path)
    with pytest.raises(UserError, match="not a fairseq-slt mask"):
        Mask.load(str(path))
    with pytest.raises(UserError, match="not found"):
        Mask.load(str(tmp_path / "missing.pt"))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_safe_load_refuses_pickled_globals(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(1)}, "extra": Evil()}, path)
    with pytest.raises(UserError, match="refusing to load checkpoint .*pickled global posix.system"):
        safe_load(str(path))
    with open(path, "wb") as handle:
        pickle.dump({"model": {}}, handle)  # a plain pickle is not a torch file either
    with pytest.raises(UserError, match="cannot read checkpoint .*not a readable torch file"):
        safe_load(str(path))


def _train(model, mask, steps, restore_moments=None, apply_after_step=True):
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    if restore_moments:
        optimizer.load_state_dict(restore_moments)
    enforcer = MaskEnforcer({"weight": model.weight})
    enforcer.set_mask(mask)
    torch.manual_seed(0)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(8, 6)).pow(2).sum().backward()
        assert float(model.weight.grad[~mask["weight"]].abs().sum()) == 0.0  # the gradient hook zeroed them
        optimizer.step()
        if apply_after_step:
            enforcer.apply()
    return enforcer


def test_enforcement_keeps_masked_weights_exactly_zero_even_with_restored_adam_moments():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    dense_optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    for _ in range(5):  # dense training leaves nonzero Adam moments everywhere
        dense_optimizer.zero_grad()
        model(torch.randn(8, 6)).sum().backward()
        dense_optimizer.step()
    moments = dense_optimizer.state_dict()
    mask = magnitude_mask({"weight": model.weight}, 0.75)

    enforcer = _train(model, mask, 10, restore_moments=moments)
    assert enforcer.masked_nonzero() == 0
    assert float(model.weight.detach()[~mask["weight"]].abs().max()) == 0.0
    assert int((model.weight != 0).sum()) == 6  # the kept 25 % still train

    # without re-applying the mask after the step, the restored moments revive pruned weights
    revived = _train(model, mask, 3, restore_moments=moments, apply_after_step=False)
    assert revived.masked_nonzero() > 0
