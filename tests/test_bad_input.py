"""Every bad input: one clear error line before training, nothing written, existing files untouched."""
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import load, train
from fairseq_slt.checkpoints import TASK_KEY


class Evil:
    def __reduce__(self):
        return (os.getpid, ())


def _variant(source, path, change):
    state = load(source)
    change(state)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def bad_files(data_bin, dense_run, slt_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    dense = dense_run["best"]

    def wider_vocab(state):
        for key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight"):
            state["model"][key] = torch.zeros(state["model"][key].shape[0] + 8, state["model"][key].shape[1])

    def deeper(state):
        for key in [k for k in state["model"] if k.startswith("encoder.layers.0.")]:
            state["model"][key.replace("layers.0.", "layers.1.")] = state["model"][key].clone()

    def broken_mask(state):
        state["extra_state"][TASK_KEY] = {"mask": {"format": "fairseq-slt-mask", "version": 1,
                                                   "masks": {"encoder.embed_tokens.weight": {"shape": [3]}}}}

    # the same data, its dictionaries with two entries swapped: equal sizes, other vocabulary
    other_data = folder / "other-vocab"
    shutil.copytree(data_bin, other_data)
    for name in os.listdir(other_data):
        if name.startswith("dict."):
            lines = (other_data / name).read_text().splitlines(keepends=True)
            lines[10], lines[11] = lines[11], lines[10]
            (other_data / name).write_text("".join(lines))
    train(str(other_data), str(folder / "other-vocab-run"), "--prune-method", "none", max_update=1)

    def nan_weight(state):
        state["model"]["decoder.layers.0.fc1.weight"][0, 0] = float("nan")

    garbage = folder / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    return {
        "vocab": _variant(dense, str(folder / "vocab.pt"), wider_vocab),
        "arch": _variant(dense, str(folder / "arch.pt"), deeper),
        "evil": _variant(dense, str(folder / "evil.pt"), lambda s: s.update(evil=Evil())),
        "broken_mask": _variant(dense, str(folder / "broken_mask.pt"), broken_mask),
        "garbage": str(garbage),
        "other_vocab": str(folder / "other-vocab-run" / "checkpoint_last.pt"),
        "slt80": slt_run["best"],
        "not_tensors": _variant(dense, str(folder / "not_tensors.pt"), lambda s: s["model"].update(extra="text")),
        "extra_list": _variant(dense, str(folder / "extra_list.pt"), lambda s: s.update(extra_state=[1, 2])),
        "nan": _variant(dense, str(folder / "nan.pt"), nan_weight),
    }


def cases(dense, bad):
    slt = lambda mask=dense["best"], rewind=dense["rewind4"], sparsity="0.8": [  # noqa: E731
        "--prune-method", "slt", "--prune-sparsity", sparsity, "--prune-mask-from", mask, "--prune-rewind-from", rewind]
    return {
        "sparsity 1": (slt(sparsity="1.0"), r"--prune-sparsity must be in \[0, 1\), got 1.0"),
        "sparsity negative": (slt(sparsity="-0.1"), r"--prune-sparsity must be in \[0, 1\), got -0.1"),
        "no mask source": (["--prune-method", "slt", "--prune-sparsity", "0.5", "--prune-rewind-from",
                            dense["rewind4"]], "--prune-method slt needs --prune-mask-from"),
        "no rewind source": (["--prune-method", "slt", "--prune-sparsity", "0.5", "--prune-mask-from",
                              dense["best"]], "--prune-method slt needs --prune-rewind-from"),
        "missing checkpoint": (slt(mask="/nonexistent/checkpoint_best.pt"),
                               "--prune-mask-from checkpoint not found: /nonexistent/checkpoint_best.pt"),
        "folder as a checkpoint": (slt(rewind=os.path.dirname(dense["rewind4"])),
                                   "--prune-rewind-from checkpoint .* is not a file"),
        "folder as the restore file": (["--prune-method", "none", "--restore-file", os.path.dirname(dense["best"])],
                                       "--restore-file .* is not a file"),
        "rewind beyond run": (["--prune-method", "none", "--save-rewind-points", "0,50"],
                              "rewind point 50 is beyond the run's --max-update 12"),
        "rewind beyond the epochs": (["--prune-method", "none", "--save-rewind-points", "0,500", "--max-update", "0",
                                      "--max-epoch", "1"], r"rewind point 500 is beyond the run's last update, \d+ "
                                                           r"\(--max-epoch 1 of \d+ batches each\)"),
        "rewind points without saving": (["--prune-method", "none", "--save-rewind-points", "0,4", "--no-save"],
                                         "--save-rewind-points writes checkpoints, --no-save none: drop one of them"),
        "two sources of start weights": (slt() + ["--finetune-from-model", dense["best"]],
                                         "--finetune-from-model has no effect: the run starts from --prune-rewind-from"),
        "checkpoint suffix": (["--prune-method", "none", "--checkpoint-suffix=_x"],
                              "--checkpoint-suffix _x: a fairseq-slt run keeps fairseq's checkpoint names"),
        "unknown method": (["--prune-method", "magic"], r"^fairseq-train: error: argument --prune-method: invalid choice: "
                                                       r"'magic' \(choose from 'none', 'lt', 'slt', 'clt', 'mp'\)"),
        "other vocabulary": (slt(mask=bad["vocab"]), r"encoder.embed_tokens.weight has shape \(1016, 32\), the model "
                                                      r"\(1008, 32\) \(different architecture or vocabulary\?\)"),
        "same size, other vocabulary": (slt(mask=bad["other_vocab"]), "--prune-mask-from checkpoint .* was trained "
                                        r"with other dictionaries than this data's \(digest [0-9a-f]{16} there, "
                                        r"[0-9a-f]{16} here; same sizes, other entries\)"),
        "mp end beyond the run": (["--prune-method", "mp", "--prune-sparsity", "0.8", "--prune-end", "20"],
                                  "--prune-end 20 is beyond the run's --max-update 12: the run would stop before"),
        "unknown scope": (["--prune-method", "mp", "--prune-sparsity", "0.8", "--prune-end", "10", "--prune-scope",
                           "bogus"], "--prune-scope must be one of layer, global, got 'bogus'"),
        "other architecture": (slt(rewind=bad["arch"]), "does not match the model: unexpected encoder.layers.1"),
        "pickled global": (slt(mask=bad["evil"]), "refusing to load --prune-mask-from checkpoint .*pickled global"),
        "corrupt checkpoint": (slt(rewind=bad["garbage"]), "cannot read --prune-rewind-from checkpoint"),
        "corrupt mask": (slt(mask=bad["broken_mask"]), "mask in .* is corrupt"),
        "lt from theta_k": (["--prune-method", "lt", "--prune-sparsity", "0.5", "--prune-mask-from", dense["best"],
                             "--prune-rewind-from", dense["rewind4"]], "lt rewinds to update 0"),
        "slt from theta_0": (slt(rewind=dense["rewind0"]), "a checkpoint from update 0 is --prune-method lt"),
        "mp s0 above sT": (["--prune-method", "mp", "--prune-sparsity", "0.5", "--prune-initial-sparsity", "0.7",
                            "--prune-end", "10"], "--prune-initial-sparsity 0.7 is above the final --prune-sparsity 0.5"),
        "mp end before start": (["--prune-method", "mp", "--prune-sparsity", "0.5", "--prune-start", "10",
                                 "--prune-end", "10"], r"--prune-end \(10\) must be greater than --prune-start \(10\)"),
        "mp frequency 0": (["--prune-method", "mp", "--prune-sparsity", "0.5", "--prune-end", "10",
                            "--prune-frequency", "0"], "--prune-frequency must be a positive number of updates, got 0"),
        "mp source sparser": (["--prune-method", "mp", "--prune-sparsity", "0.5", "--prune-end", "10",
                               "--prune-mask-from", bad["slt80"]], "starting mask's sparsity 0.7999 is above"),
        "model not tensors": (slt(mask=bad["not_tensors"]), r"its model entry 'extra' is not a tensor"),
        "extra_state not a dict": (slt(mask=bad["extra_list"]), "its extra_state is not a dict"),
        "NaN in the mask source": (slt(mask=bad["nan"]), "holds NaN or infinite weights in decoder.layers.0.fc1"),
        "none with a sparsity": (["--prune-method", "none", "--prune-sparsity", "0.5"],
                                 "--prune-sparsity has no effect with --prune-method none"),
        "none with a mask source": (["--prune-method", "none", "--prune-mask-from", dense["best"]],
                                    "--prune-mask-from has no effect with --prune-method none"),
        "missing restore file": (["--prune-method", "none", "--restore-file", "/nonexistent/checkpoint.pt"],
                                 "--restore-file not found: /nonexistent/checkpoint.pt"),
        "control misuse": (["--prune-method", "mp", "--prune-sparsity", "0.5", "--prune-end", "10",
                            "--prune-random-mask"], "--prune-random-mask applies to --prune-method lt/slt/clt"),
    }


def test_bad_inputs_fail_with_one_line_before_training(data_bin, dense_run, bad_files, tmp_path):
    table = cases(dense_run, bad_files)

    def attempt(item):
        label, (args, _) = item
        save = tmp_path / label.replace(" ", "_")
        save.mkdir()
        (save / "checkpoint_last.pt.keep").write_text("existing")
        return label, save, train(data_bin, str(save), *args, check=False)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(attempt, table.items()))
    for label, save, result in results:
        pattern = table[label][1]
        errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
        assert result.returncode != 0, label
        assert "Traceback" not in result.stderr, (label, result.stderr[-2000:])
        assert len(errors) == 1 and re.match("fairseq-(slt|train): error: ", errors[0]), (label, errors)
        assert result.stderr.strip().splitlines() == errors, (label, result.stderr[-2000:])  # no noise around it
        assert re.search(pattern, errors[0]), (label, errors[0])
        assert sorted(os.listdir(save)) == ["checkpoint_last.pt.keep"], label
        assert (save / "checkpoint_last.pt.keep").read_text() == "existing"
        assert "begin training" not in result.stdout, label
