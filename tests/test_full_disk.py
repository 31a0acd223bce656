"""A full disk while anything is written: every writer leaves the old file or the new one, whole, and no
temporary file; a planted link is replaced, never written through; a run that hit a full disk resumes from
its last whole state and ends where an uninterrupted run ends."""
import io
import os
import re

import pytest
import torch

from conftest import load, train

import fairseq_slt  # noqa: F401  (with fairseq loaded: installs the patches)
from fairseq import checkpoint_utils, file_io
from fairseq_slt import fairseq_patches
from fairseq_slt.checkpoints import TASK_KEY
from fairseq_slt.pruning import Mask
from fairseq_slt.pruning.enforce import bits
from fairseq_slt.pruning import atomic_save, atomic_write_json, atomic_write_stream, atomic_write_text

# The hook the failing runs import (tests/launcher.py runs it; a plain process would as a sitecustomize): the
# $FAIL_NTH-th file (default 1st) opened for writing whose name ends in $FAIL_NAME, while $FAIL_FLAG exists, takes
# $FAIL_AT bytes and then fails as a full disk does. It sits below every writer: the plugin's, fairseq's save and copy.
HOOK = '''
import errno, io, os
_fdopen = os.fdopen
class _Full(io.FileIO):
    room = 0
    def write(self, data):
        data = memoryview(data).cast("B")
        if len(data) > self.room:
            super().write(data[:self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return super().write(data)
_seen = []
def fdopen(fd, mode="r", *args, **kwargs):
    name = os.readlink(f"/proc/self/fd/{fd}")
    if "w" in mode and name.endswith(os.environ["FAIL_NAME"]):
        _seen.append(name)
    if len(_seen) == int(os.environ.get("FAIL_NTH", 1)) and _seen[-1] == name and os.path.exists(os.environ["FAIL_FLAG"]):
        os.remove(os.environ["FAIL_FLAG"])
        handle = _Full(fd, "w")
        handle.room = int(os.environ["FAIL_AT"])
        return handle
    return _fdopen(fd, mode, *args, **kwargs)
os.fdopen = fdopen
'''


def _patched_fdopen():
    saved = os.fdopen
    exec(HOOK, {})
    patched, os.fdopen = os.fdopen, saved
    return patched


STATE = {"model": {"w": torch.randn(300, 100)}, "extra_state": {"note": "new"}}
WRITERS = {  # every way the package (and fairseq, patched) writes a file
    "atomic_save (masks, rewind points, compact files)": lambda path: atomic_save(STATE, path),
    "atomic_write_json (manifests, reports, results)": lambda path: atomic_write_json({"rows": list(range(30000))}, path),
    "atomic_write_text (markers, tables)": lambda path: atomic_write_text("row\n" * 30000, path),
    "atomic_write_stream (downloads, plots)": lambda path: atomic_write_stream(io.BytesIO(os.urandom(120_000)), path),
    "fairseq's save (torch_persistent_save)": lambda path: checkpoint_utils.torch_persistent_save(STATE, path),
    "fairseq's best-to-last copy (PathManager.copy)":
        lambda path: file_io.PathManager.copy(_source(path), path, overwrite=True),
}


def _source(path):
    source = os.path.join(os.path.dirname(os.path.dirname(path)), "source", "checkpoint_best.pt")
    os.makedirs(os.path.dirname(source), exist_ok=True)
    if not os.path.exists(source):
        torch.save(STATE, source)
    return source


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("limit", [0, 1, 4096, 99_999])
def test_every_writer_that_fills_the_disk_leaves_the_old_file_whole_and_no_temporary(tmp_path, monkeypatch,
                                                                                      writer, limit):
    fairseq_patches.install()
    save = tmp_path / "save"
    save.mkdir()
    target = save / "checkpoint_last.pt"
    target.write_bytes(b"the previous file")
    WRITERS[writer](str(tmp_path / "warm-up" / "file"))  # creates the copy's source before the disk fills
    monkeypatch.setattr(os, "fdopen", _patched_fdopen())
    (tmp_path / "fail-flag").write_text("")
    monkeypatch.setenv("FAIL_NAME", "checkpoint_last.pt")
    monkeypatch.setenv("FAIL_FLAG", str(tmp_path / "fail-flag"))
    monkeypatch.setenv("FAIL_AT", str(limit))
    with pytest.raises(OSError, match="No space left"):
        WRITERS[writer](str(target))
    assert not (tmp_path / "fail-flag").exists()  # the fault was injected where it was meant to be
    assert target.read_bytes() == b"the previous file"
    assert sorted(p.name for p in save.iterdir()) == ["checkpoint_last.pt"]  # no temporary left, nothing else
    WRITERS[writer](str(target))  # space again: the write goes through
    assert target.read_bytes() != b"the previous file"


def test_a_planted_link_is_replaced_not_written_through(tmp_path):
    fairseq_patches.install()
    outside, save = tmp_path / "outside.txt", tmp_path / "save"
    save.mkdir()
    outside.write_text("not yours")
    (save / "checkpoint_best.pt").write_bytes(b"new checkpoint")
    os.symlink(outside, save / "checkpoint_last.pt")
    os.symlink(outside, save / "checkpoint_1_8.pt.tmp")  # where fairseq's own save wrote before it was patched
    file_io.PathManager.copy(str(save / "checkpoint_best.pt"), str(save / "checkpoint_last.pt"), overwrite=True)
    checkpoint_utils.torch_persistent_save(STATE, str(save / "checkpoint_1_8.pt"))
    assert outside.read_text() == "not yours"
    assert not os.path.islink(save / "checkpoint_last.pt") and (save / "checkpoint_last.pt").read_bytes() == b"new checkpoint"
    assert torch.equal(load(save / "checkpoint_1_8.pt")["model"]["w"], STATE["model"]["w"])


@pytest.fixture(scope="module")
def uninterrupted(data_bin, dense_run, tmp_path_factory):
    """The run without faults (SLT at 50 %): 12 updates, saved every 4, a rewind point at 8; its options."""
    options = ("--prune-method", "slt", "--prune-sparsity", "0.5", "--prune-mask-from", dense_run["best"],
                 "--prune-rewind-from", dense_run["rewind4"], "--save-interval-updates", 4, "--save-rewind-points", "8")
    whole = str(tmp_path_factory.mktemp("full-disk") / "whole")
    train(data_bin, whole, *options, max_update=12)
    return whole, options


@pytest.mark.parametrize("name, nth, limit", [
    ("checkpoint_1_8.pt", 1, 0), ("checkpoint_1_8.pt", 1, 50_000),  # fairseq's save of update 8
    ("checkpoint_last.pt", 1, 0),  # its first copy to checkpoint_last.pt (update 4): no checkpoint_last.pt at all
    ("checkpoint_last.pt", 2, 5000),  # its copy of update 8: checkpoint_last.pt older than checkpoint_1_8.pt
    ("checkpoint_rewind_8.pt", 1, 1000),  # the plugin's rewind point, written during update 8
])
def test_a_run_that_hit_a_full_disk_resumes_from_its_newest_whole_state_and_ends_where_an_uninterrupted_run_ends(
        data_bin, uninterrupted, tmp_path, name, nth, limit):
    uninterrupted, options = uninterrupted
    broken = str(tmp_path / "broken")
    (tmp_path / "sitecustomize.py").write_text(HOOK)  # a plain fairseq-train imports it; the launcher runs it
    flag = tmp_path / "fail-flag"
    flag.write_text("")
    fault = {"SLT_TEST_HOOK": str(tmp_path / "sitecustomize.py"), "PYTHONPATH": str(tmp_path), "FAIL_NAME": name,
             "FAIL_FLAG": str(flag), "FAIL_AT": str(limit), "FAIL_NTH": str(nth)}
    failed = train(data_bin, broken, *options, max_update=12, check=False, extra_env=fault)
    assert failed.returncode != 0 and "No space left on device" in failed.stdout + failed.stderr
    assert not flag.exists()  # the fault was injected where it was meant to be
    assert not [n for n in os.listdir(broken) if n.startswith(".tmp") or n.endswith(".tmp")]
    saved = [load(os.path.join(broken, n))["optimizer_history"][-1]["num_updates"]  # every one whole
             for n in os.listdir(broken) if n.startswith("checkpoint_") and "rewind" not in n]
    resumed = train(data_bin, broken, *options, max_update=12)
    loaded = re.findall(r"Loaded checkpoint \S+checkpoint_last.pt \(epoch \d+ @ (\d+) updates\)", resumed.stdout)
    assert loaded == [str(max(saved))]  # from the newest whole state: nothing lost beyond it
    ours, theirs = (load(os.path.join(d, "checkpoint_last.pt")) for d in (broken, uninterrupted))
    assert all(torch.equal(ours["model"][key], theirs["model"][key]) for key in theirs["model"])
    mask = Mask.from_state_dict(ours["extra_state"][TASK_KEY]["mask"])  # and the mask exact, bit by bit
    assert mask.sparsity() > 0.49 and all(not bits(ours["model"][n])[~k].any() for n, k in mask.items())
    ours, theirs = (load(os.path.join(d, "checkpoint_rewind_8.pt"))["model"] for d in (broken, uninterrupted))
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
