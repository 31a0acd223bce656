"""Paths no other test reached: regrowth repair on resume, launch stopping the ranks when one dies, the legacy
identity of save dirs from before run.json, and compact files in torch's legacy (non-zip) format."""
import logging
import os
import sys
import time

import torch

from conftest import load
from test_contract import _in_process
from test_methods_table import Tiny, _cfg, _exact, _steps
from fairseq_slt.run import folder as run_dir
from fairseq_slt.checkpoints import TASK_KEY, write_model_checkpoint
from fairseq_slt.run import Phase, PruningRun


def test_a_resumed_run_whose_checkpoint_regrew_pruned_weights_zeroes_them_and_says_so(tmp_path, caplog):
    torch.manual_seed(0)
    cfg = _cfg(tmp_path / "mp", prune_method="mp", prune_sparsity=0.5, prune_end=4, prune_frequency=2)
    model = Tiny()
    run = PruningRun(cfg, model, lambda: {})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    _steps(run, model, optimizer, 4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = ~run.mask["first.weight"]
    state["first.weight"][pruned] = 0.5  # a checkpoint written by other code, with the pruned weights regrown
    write_model_checkpoint(os.path.join(cfg.save_dir, "checkpoint_last.pt"), state, {}, 4, 1, run.checkpoint_dict())
    again = Tiny()
    resumed = PruningRun(cfg, again, lambda: {})
    assert resumed.phase is Phase.RESUME
    again.load_state_dict(state)  # what fairseq restores
    with caplog.at_level(logging.WARNING):
        resumed.start(4, torch.optim.Adam(again.parameters(), lr=0.01))
    assert f"{int(pruned.sum())} pruned positions of the restored checkpoint held nonzero weights" in caplog.text
    assert _exact(resumed) and torch.equal(resumed.mask["first.weight"], run.mask["first.weight"])


def test_launch_stops_the_other_ranks_when_one_dies(tmp_path):
    rank = tmp_path / "rank.py"
    rank.write_text(
        "import sys, time, pathlib\n"
        "me = sys.argv[sys.argv.index('--distributed-rank') + 1]\n"
        f"pathlib.Path({str(tmp_path)!r}, 'started-' + me).touch()\n"
        "if me == '0':\n"
        "    time.sleep(1); sys.exit(3)\n"
        f"time.sleep(120); pathlib.Path({str(tmp_path)!r}, 'survived').touch()\n")
    started = time.time()
    status, stderr, escaped = _in_process(["launch", "--nproc", "2", "--master", "127.0.0.1:1", "--train-command",
                                           f"{sys.executable} {rank}", "--", "data"])
    assert escaped is None and status == 1 and time.time() - started < 60
    assert stderr.strip().splitlines() == [
        "fairseq-slt launch: error: a rank failed (exit 3); the other ranks were stopped"]
    assert (tmp_path / "started-0").exists() and (tmp_path / "started-1").exists()
    time.sleep(1)
    assert not (tmp_path / "survived").exists()


def test_a_save_dir_from_before_run_json_is_identified_by_its_checkpoint(tmp_path):
    legacy = {"method": "slt", "prune_sparsity": 0.8}
    write_model_checkpoint(str(tmp_path / "checkpoint_last.pt"), Tiny().state_dict(), {}, 10, 1,
                           {"fingerprint": legacy})
    assert run_dir.recorded_identity(str(tmp_path)) == legacy
    dense = tmp_path / "dense"
    dense.mkdir()
    torch.save({"model": Tiny().state_dict(), "extra_state": {}}, dense / "checkpoint_last.pt")
    assert run_dir.recorded_identity(str(dense)) == {"method": "none"}  # stock fairseq: a dense run
    assert load(tmp_path / "checkpoint_last.pt")["extra_state"][TASK_KEY]["fingerprint"] == legacy


def test_a_compact_file_in_torchs_legacy_format_still_loads(slt_run, tmp_path):
    import fairseq_slt  # noqa: F401
    from fairseq_slt import compact_loading, fairseq_patches

    fairseq_patches.install()
    compact = tmp_path / "compact.pt"
    status, stderr, _ = _in_process(["compress", slt_run["best"], str(compact)])
    assert status == 0, stderr
    legacy = tmp_path / "legacy.pt"
    torch.save(load(compact), legacy, _use_new_zipfile_serialization=False)
    ours, theirs = (compact_loading.load_checkpoint_to_cpu(str(p))["model"] for p in (legacy, compact))
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
