"""fairseq-slt average: fairseq's checkpoint averaging (its options), one mask in every input, +0.0 where it prunes."""
import os
import shutil

import pytest
import torch

from conftest import bits, load, one_error_line, run_tool, train
from fairseq_slt.checkpoints import Checkpoint
from fairseq_slt.pruning import atomic_save
from fairseq_slt.pruning.compact import aliases


@pytest.fixture(scope="module")
def mp_run(data_bin, tmp_path_factory):
    """MP to 80 % by update 6, a checkpoint every 4 updates: update 4's mask is the schedule's, 8-16 the final one."""
    save = str(tmp_path_factory.mktemp("mp_average"))
    train(data_bin, save, "--prune-method", "mp", "--prune-sparsity", "0.8", "--prune-start", 2, "--prune-end", 6,
          "--prune-frequency", 2, "--save-interval-updates", 4, "--keep-interval-updates", -1, "--weight-decay", 0,
          max_update=16)
    return save


def _fairseq_mean(paths):
    """scripts/average_checkpoints.py's arithmetic: float32 sums in the given order, divided by their number."""
    states = [load(path)["model"] for path in paths]
    total = None
    for model in states:
        total = {n: t.float() for n, t in model.items()} if total is None else {n: total[n] + t.float()
                                                                                  for n, t in model.items()}
    return {name: tensor / len(paths) for name, tensor in total.items()}


def test_the_average_is_fairseqs_mean_with_plus_zero_where_the_runs_mask_prunes(data_bin, mp_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(mp_run, folder)
    mask = Checkpoint(str(folder / "checkpoint_1_16.pt")).mask()
    # a run of a version that stored -0.0 at pruned positions (before ea551de): the average still gets +0.0
    signed = "decoder.layers.0.fc1.weight"
    for update in (8, 12, 16):
        old = load(str(folder / f"checkpoint_1_{update}.pt"))
        old["model"][signed][~mask[signed]] = -0.0
        atomic_save(old, str(folder / f"checkpoint_1_{update}.pt"))
    out = str(tmp_path / "average.pt")
    result = run_tool("fairseq-slt", "average", "--inputs", folder, "--num-update-checkpoints", 3, "--output", out)
    inputs = [str(folder / f"checkpoint_1_{update}.pt") for update in (16, 12, 8)]  # the newest first, as fairseq's
    assert "checkpoint_1_16.pt (update 16), checkpoint_1_12.pt (update 12), checkpoint_1_8.pt (update 8)" in result.stdout
    assert f"sparsity {mask.sparsity():.4f}" in result.stdout, result.stdout

    average, expected = load(out), _fairseq_mean(inputs)
    assert set(average["model"]) == set(expected)
    for name, tensor in average["model"].items():
        keep = mask[name] if name in mask else torch.ones(tensor.shape, dtype=torch.bool)
        assert torch.equal(bits(tensor[keep]), bits(expected[name][keep])), name
        assert int((bits(tensor[~keep]) != 0).sum()) == 0, f"{name}: a pruned position is not +0.0"
    assert int((bits(expected[signed][~mask[signed]]) != 0).sum()) > 0  # the -0.0 were there to be cleared
    assert Checkpoint(out).mask().checksum() == mask.checksum()
    tied = [n for n, first in aliases(average["model"]).items() if first != n]
    assert tied == [n for n, first in aliases(load(inputs[0])["model"]).items() if first != n] and tied
    assert Checkpoint(out).num_updates == 16  # the newest input's other state, as fairseq's script keeps it

    generated = run_tool("fairseq-generate", data_bin, "--user-dir", "fairseq_slt", "--task", "translation_slt",
                         "--path", out, "--gen-subset", "valid", "--beam", 2, "--max-len-b", 5, "--cpu")
    assert sum(line.startswith("H-") for line in generated.stdout.splitlines()) == 100


def test_checkpoints_of_other_masks_or_with_weights_where_it_prunes_are_refused(mp_run, tmp_path):
    out = str(tmp_path / "average.pt")
    # update 4 is before the MP schedule's end: its mask is another one
    one_error_line(run_tool("fairseq-slt", "average", "--inputs", mp_run, "--num-update-checkpoints", 4, "--output",
                            out, check=False), "checkpoint_1_4.pt (update 4) holds a mask of sparsity", "one mask")
    one_error_line(run_tool("fairseq-slt", "average", "--inputs", mp_run, "--num-update-checkpoints", 5, "--output",
                            out, check=False), "--num-update-checkpoints 5", "holds 4 checkpoint_EPOCH_UPDATE.pt")
    one_error_line(run_tool("fairseq-slt", "average", "--inputs", mp_run, "--num-update-checkpoints", 0, "--output",
                            out, check=False), "--num-update-checkpoints must be at least 1, not 0")
    one_error_line(run_tool("fairseq-slt", "average", "--inputs", mp_run, "--num-update-checkpoints", 2,
                            "--checkpoint-upper-bound", 4, "--output", out, check=False), "holds 1", "up to 4")
    stray = load(os.path.join(mp_run, "checkpoint_1_8.pt"))
    mask = Checkpoint(os.path.join(mp_run, "checkpoint_1_8.pt")).mask()
    stray["model"]["encoder.layers.0.fc2.weight"][~mask["encoder.layers.0.fc2.weight"]] = 0.5
    atomic_save(stray, str(tmp_path / "stray.pt"))
    one_error_line(run_tool("fairseq-slt", "average", "--inputs", os.path.join(mp_run, "checkpoint_1_16.pt"),
                            tmp_path / "stray.pt", "--output", out, check=False), "stray.pt holds", "where its mask prunes")
    other = load(os.path.join(mp_run, "checkpoint_1_12.pt"))  # the same sizes, other dictionaries (their digest)
    other["extra_state"]["TranslationSLTTask"]["identity"]["dictionaries"] = "0" * 16
    atomic_save(other, str(tmp_path / "other.pt"))
    one_error_line(run_tool("fairseq-slt", "average", "--inputs", os.path.join(mp_run, "checkpoint_1_16.pt"),
                            tmp_path / "other.pt", "--output", out, check=False), "other.pt was trained with other "
                   "dictionaries")
    assert not os.path.exists(out)
    (tmp_path / "average.pt").write_bytes(b"kept")
    one_error_line(run_tool("fairseq-slt", "average", "--inputs", os.path.join(mp_run, "checkpoint_1_16.pt"),
                            os.path.join(mp_run, "checkpoint_1_12.pt"), "--output", out, check=False), "exists", "--force")
    assert (tmp_path / "average.pt").read_bytes() == b"kept"


def test_a_dense_runs_checkpoints_are_averaged_as_fairseqs_script_does(dense_run, tmp_path):
    inputs = sorted(os.path.join(dense_run["dir"], name) for name in os.listdir(dense_run["dir"])
                    if name.startswith("checkpoint_1_"))
    assert len(inputs) == 2, inputs
    out = str(tmp_path / "average.pt")
    result = run_tool("fairseq-slt", "average", "--inputs", *inputs, "--output", out)
    assert "no mask in the inputs" in result.stdout
    expected = _fairseq_mean(inputs)
    assert all(torch.equal(bits(tensor), bits(expected[name])) for name, tensor in load(out)["model"].items())
