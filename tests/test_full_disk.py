"""A full disk or a planted link while fairseq copies its saved checkpoint to checkpoint_last.pt: the target
is the old file or the new one, whole; nothing outside the save dir is written; the run resumes."""
import errno
import os
import shutil
import subprocess

import pytest
import torch

from conftest import BIN, env, load, train, train_args

import fairseq_slt  # noqa: F401  (with fairseq loaded: installs the patches)
from fairseq import file_io
from fairseq_slt import fairseq_patches


def _full_disk_after(limit, monkeypatch):
    """shutil.copyfileobj that writes ``limit`` bytes, then fails as a full disk does."""
    def copy(source, target, length=0):
        target.write(source.read(limit))
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(shutil, "copyfileobj", copy)


@pytest.mark.parametrize("limit", [0, 1, 4096, 99_999])
def test_a_copy_that_fills_the_disk_leaves_the_old_target_whole(tmp_path, monkeypatch, limit):
    fairseq_patches.install()
    source, target = tmp_path / "checkpoint_best.pt", tmp_path / "checkpoint_last.pt"
    source.write_bytes(os.urandom(100_000))
    target.write_bytes(b"the previous checkpoint")
    _full_disk_after(limit, monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        file_io.PathManager.copy(str(source), str(target), overwrite=True)
    assert target.read_bytes() == b"the previous checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_best.pt", "checkpoint_last.pt"]  # no temp left
    monkeypatch.undo()
    assert file_io.PathManager.copy(str(source), str(target), overwrite=True) is True
    assert target.read_bytes() == source.read_bytes()


def test_a_planted_link_is_replaced_not_written_through(tmp_path):
    fairseq_patches.install()
    outside, save = tmp_path / "outside.txt", tmp_path / "save"
    save.mkdir()
    outside.write_text("not yours")
    (save / "checkpoint_best.pt").write_bytes(b"new checkpoint")
    os.symlink(outside, save / "checkpoint_last.pt")
    file_io.PathManager.copy(str(save / "checkpoint_best.pt"), str(save / "checkpoint_last.pt"), overwrite=True)
    assert outside.read_text() == "not yours"
    assert not os.path.islink(save / "checkpoint_last.pt") and (save / "checkpoint_last.pt").read_bytes() == b"new checkpoint"


def test_a_run_whose_last_copy_hit_a_full_disk_resumes_and_matches_an_uninterrupted_run(data_bin, tmp_path):
    """fairseq-train's first copy after update 4 fails with ENOSPC part-way (a hook imported at start); the
    rerun resumes from the last whole state and ends where an uninterrupted run ends."""
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    options = ("--prune-method", "none", "--save-interval-updates", 4)
    train(data_bin, whole, *options, max_update=12)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import errno, os, shutil\n"
        "_copy = shutil.copyfileobj\n"
        "def copy(source, target, length=0):\n"
        "    if os.path.exists(os.environ['FAIL_FLAG']):\n"
        "        os.remove(os.environ['FAIL_FLAG'])\n"
        "        target.write(source.read(5000))\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    return _copy(source, target, length)\n"
        "shutil.copyfileobj = copy\n")
    flag = tmp_path / "fail-next-copy"
    train(data_bin, broken, *options, max_update=4)  # updates 1-4 saved whole
    flag.write_text("")
    failed = subprocess.run(  # fairseq-train itself (not the tests' fork server), so that the hook is imported
        [os.path.join(BIN, "fairseq-train"), *map(str, train_args(data_bin, broken, *options, max_update=12))],
        env={**env(), "PYTHONPATH": str(hook), "FAIL_FLAG": str(flag)}, capture_output=True, text=True, timeout=600)
    assert failed.returncode != 0 and "No space left on device" in failed.stdout + failed.stderr
    assert not flag.exists()  # the failing copy did run
    state = load(os.path.join(broken, "checkpoint_last.pt"))  # whole: the state after update 4, not a torn file
    assert state["optimizer_history"][-1]["num_updates"] == 4
    train(data_bin, broken, *options, max_update=12)
    ours, theirs = (load(os.path.join(d, "checkpoint_last.pt"))["model"] for d in (broken, whole))
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
