"""A save dir belongs to one run: no silent overwrite, no regrowth, resumes that resume, live runs locked."""
import fcntl
import hashlib
import json
import os
import re
import shutil

import torch

from conftest import load, log_values, train, train_killed_when, train_ranks
from fairseq_slt.checkpoints import TASK_KEY
from fairseq_slt.pruning import Mask


def snapshot(folder):
    """Every file's bytes and inode: a rewrite, even with the same bytes, changes the inode (atomic replace)."""
    return {name: (hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest(),
                   os.stat(os.path.join(folder, name)).st_ino) for name in sorted(os.listdir(folder))}


def one_error_line(result):
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith("fairseq-slt: error: "), errors
    return errors[0]


def slt(dense, sparsity="0.8"):
    return ["--prune-method", "slt", "--prune-sparsity", sparsity, "--prune-mask-from", dense["best"],
            "--prune-rewind-from", dense["rewind4"]]


def test_a_command_with_another_identity_is_refused_and_touches_nothing(data_bin, dense_run, slt_run, tmp_path):
    dense, finished_slt = str(tmp_path / "dense"), str(tmp_path / "slt")
    shutil.copytree(dense_run["dir"], dense)
    shutil.copytree(slt_run["dir"], finished_slt)
    manifest = json.load(open(os.path.join(finished_slt, "run.json")))
    assert manifest["identity"]["method"] == "slt" and manifest["identity"]["prune_sparsity"] == 0.8
    assert manifest["identity"]["mask_from"] == dense_run["best"] and len(manifest["identity"]["dictionaries"]) == 16
    cases = [
        (dense, [*slt(dense_run, "0.9"), "--save-rewind-points", "0,4"], "--prune-method none there, slt here"),
        (finished_slt, slt(dense_run, "0.5"), "--prune-sparsity 0.8 there, 0.5 here"),
        (finished_slt, ["--prune-method", "none"], "--prune-method slt there, none here"),
        (finished_slt, ["--prune-method", "mp", "--prune-sparsity", "0.8", "--prune-end", "10"],
         "--prune-method slt there, mp here"),
        (finished_slt, [*slt(dense_run), "--seed", "2"], "--seed 1 there, 2 here"),
    ]
    for folder, options, difference in cases:
        before = snapshot(folder)
        error = one_error_line(train(data_bin, folder, *options, max_update=20, check=False))
        assert error.startswith(f"fairseq-slt: error: --save-dir {folder} belongs to another run (") and difference in error
        assert snapshot(folder) == before, options


def test_a_rewind_point_once_written_is_never_overwritten(data_bin, tmp_path):
    save = str(tmp_path / "dense")
    point = os.path.join(save, "checkpoint_rewind_6.pt")
    options = ["--prune-method", "none", "--save-rewind-points", "6", "--save-interval-updates", "5"]
    train_killed_when(data_bin, save, point, *options)  # killed after update 6; its last checkpoint is from update 5
    assert load(os.path.join(save, "checkpoint_last.pt"))["optimizer_history"][-1]["num_updates"] == 5
    written = snapshot(save)[os.path.basename(point)]
    result = train(data_bin, save, *options)  # resumes at 5 and passes update 6 again
    assert "@ 5 updates" in result.stdout and f"rewind point {point} exists already" in result.stdout
    assert snapshot(save)[os.path.basename(point)] == written


def test_mp_continued_with_reset_dataloader_keeps_its_mask(data_bin, tmp_path):
    save = str(tmp_path / "mp")
    options = ["--prune-method", "mp", "--prune-sparsity", "0.8", "--prune-start", "2", "--prune-end", "10",
               "--prune-frequency", "2"]
    train(data_bin, save, *options)
    finished = Mask.load(os.path.join(save, "mask.pt"))
    assert abs(finished.sparsity() - 0.8) < 1e-3
    # fairseq passes no task state on with --reset-dataloader: the run reads its own checkpoint's mask itself
    result = train(data_bin, save, *options, "--reset-dataloader", max_update=20)
    assert "num_updates 20" in result.stdout
    assert re.search(r"resuming from .*checkpoint_last.pt with its stored mask \(sparsity 0\.7999\)", result.stdout)
    kept = Mask.load(os.path.join(save, "mask.pt"))
    assert all(torch.equal(kept[n], finished[n]) for n in finished)
    model = load(os.path.join(save, "checkpoint_last.pt"))["model"]
    for name, keep in finished.items():  # counted here, independently of the plugin's own counter
        assert int((model[name][~keep] != 0).sum()) == 0, name
    assert set(log_values(result.stdout, "masked_nonzero")) == {0.0}
    assert min(log_values(result.stdout, "sparsity")) >= 0.79


def test_a_rerun_with_restore_file_resumes_its_own_checkpoint_and_tracks_its_own_best(data_bin, dense_run, tmp_path):
    save = str(tmp_path / "slt_restored")
    dense_best = load(dense_run["last"])["extra_state"]["best"]
    # the dense run ended at update 16 and keeps its update count (its optimizer state is restored)
    options = [*slt(dense_run), "--restore-file", dense_run["last"], "--save-interval-updates", "5",
               "--save-rewind-points", "22"]
    killed = train_killed_when(data_bin, save, os.path.join(save, "checkpoint_rewind_22.pt"), *options, max_update=28)
    first = load(os.path.join(save, "checkpoint_last.pt"))
    assert first["optimizer_history"][-1]["num_updates"] == 20
    assert os.path.isfile(os.path.join(save, "checkpoint_best.pt"))  # its own best, not the dense run's
    assert first["extra_state"]["best"] > dense_best
    result = train(data_bin, save, *options, max_update=28)  # the same command again
    assert f"Loaded checkpoint {save}/checkpoint_last.pt (epoch" in result.stdout and "@ 20 updates" in result.stdout
    assert "num_updates 28" in result.stdout
    own_losses = valid_losses(killed) + valid_losses(result.stdout)
    assert len(own_losses) >= 2  # validated at updates 20 and 25 (and 28, the end)
    assert abs(load(os.path.join(save, "checkpoint_best.pt"))["extra_state"]["best"] - min(own_losses)) < 1e-3


def valid_losses(log):
    return [float(v) for v in re.findall(r"valid on 'valid' subset \| loss ([\d.]+)", log)]


def test_a_save_dir_in_use_by_a_live_run_is_refused(data_bin, dense_run, tmp_path):
    save = tmp_path / "busy"
    save.mkdir()
    holder = os.open(save, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live fairseq-train holds it
    try:
        error = one_error_line(train(data_bin, str(save), *slt(dense_run), check=False))
    finally:
        os.close(holder)
    assert error == (f"fairseq-slt: error: save dir {save} is in use by another live run; wait for it to end or use "
                     "another save dir")
    assert os.listdir(save) == []


def test_no_save_runs_write_nothing_and_share_a_save_dir(data_bin, dense_run, tmp_path):
    """--no-save: fairseq writes no checkpoint, and the plugin nothing either (no run.json, no mask files), and takes
    no lock. Before, each run recorded itself there: a second --no-save run with another sparsity in the same
    (default) save dir was refused as another run's, and one beside a live run as a busy dir."""
    save = tmp_path / "sweep"
    save.mkdir()
    holder = os.open(save, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live run's lock: a --no-save run changes nothing there
    try:
        for sparsity in ("0.5", "0.8"):
            result = train(data_bin, str(save), *slt(dense_run, sparsity), "--no-save", max_update=4)
            assert abs(log_values(result.stdout, "sparsity")[-1] - float(sparsity)) < 0.005
    finally:
        os.close(holder)
    assert os.listdir(save) == []


def test_a_corrupt_mask_in_the_runs_own_checkpoint_is_one_line(data_bin, slt_run, dense_run, tmp_path):
    save = str(tmp_path / "slt")
    shutil.copytree(slt_run["dir"], save)
    last = os.path.join(save, "checkpoint_last.pt")
    state = load(last)
    bits = next(iter(state["extra_state"][TASK_KEY]["mask"]["masks"].values()))["bits"]
    bits[3] ^= 0x40  # one flipped bit
    torch.save(state, last)
    before = snapshot(save)
    error = one_error_line(train(data_bin, save, *slt(dense_run), max_update=20, check=False))
    assert re.search(r"mask in .*checkpoint_last.pt is corrupt: its checksum does not match", error), error
    assert snapshot(save) == before


def test_unsafe_unpickling_environment_is_refused(data_bin, dense_run, tmp_path):
    save = tmp_path / "unsafe"
    save.mkdir()
    result = train(data_bin, str(save), *slt(dense_run), check=False,
                   extra_env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert one_error_line(result).startswith("fairseq-slt: error: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set")
    assert os.listdir(save) == []


def test_a_cpu_ddp_backend_that_cannot_work_is_one_line_on_every_rank(data_bin, dense_run, tmp_path):
    save = tmp_path / "ddp"
    save.mkdir()
    results = train_ranks(data_bin, str(save), *slt(dense_run), "--ddp-backend", "c10d")
    for result in results:
        assert one_error_line(result) == ("fairseq-slt: error: --ddp-backend c10d does not run on CPU with several "
                                          "processes; use legacy_ddp or no_c10d")
    assert os.listdir(save) == []
