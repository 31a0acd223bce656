"""Two CPU processes over gloo on 127.0.0.1: masks and weights identical on every rank, resume across world sizes,
the launcher, and iterate through it."""
import os
import re

import pytest
import torch

from conftest import TINY_MODEL, TRAINING, free_port, load, run_tool, tool_path, train, train_ranks
from fairseq_slt.checkpoints import TASK_KEY
from fairseq_slt.pruning import Mask, pruned_count
from fairseq_slt.pruning.schedule import cubic_sparsity
from fairseq_slt.run.ranks import weights_checksum

MP = ["--prune-method", "mp", "--prune-sparsity", "0.8", "--prune-start", "2", "--prune-end", "10",
      "--prune-frequency", "2"]


def checksums(stdout):
    """'when' -> (mask, weights or None, ranks) from rank 0's log lines."""
    found = {}
    for when, mask, weights, ranks in re.findall(
            r"checksums at (.+?): mask (\w+)(?:, weights (\w+))?.*?(?:, identical on (\d+) ranks)?$", stdout, re.M):
        found[when] = (mask, weights or None, int(ranks or 1))
    return found


def slt(dense):
    return ["--prune-method", "slt", "--prune-sparsity", "0.8", "--prune-mask-from", dense["best"],
            "--prune-rewind-from", dense["rewind4"]]


def assert_two_ranks_agree_with_the_checkpoint(result, save, updates):
    assert all(r.returncode == 0 for r in result), [r.stderr[-1500:] for r in result]
    found = checksums(result[0].stdout)
    mask_start, weights_start, ranks = next(v for k, v in found.items() if k.endswith("run's start"))
    assert ranks == 2 and weights_start is not None
    mask_end, weights_end, ranks = found[f"the last update ({updates})"]
    assert ranks == 2
    last = load(os.path.join(save, "checkpoint_last.pt"))
    assert weights_checksum(last["model"]) == weights_end  # rank 0's weights, the same on rank 1
    mask = Mask.from_state_dict(last["extra_state"][TASK_KEY]["mask"])
    assert mask.checksum() == mask_end == Mask.load(os.path.join(save, "mask.pt")).checksum()
    for name, keep in mask.items():
        assert int((last["model"][name][~keep] != 0).sum()) == 0, name
    return mask, found


@pytest.mark.parametrize("backend,method", [("legacy_ddp", "slt"), ("no_c10d", "slt"), ("legacy_ddp", "mp"),
                                            ("no_c10d", "mp-global")])
def test_two_ranks_hold_the_same_mask_and_weights_with_masked_weights_zero(data_bin, dense_run, tmp_path, backend,
                                                                          method):
    save = str(tmp_path / "ddp")
    options = {"slt": [*slt(dense_run), "--update-freq", "2"], "mp": MP,
               "mp-global": [*MP, "--prune-scope", "global"]}[method]
    result = train_ranks(data_bin, save, *options, "--ddp-backend", backend, max_update=12)
    mask, found = assert_two_ranks_agree_with_the_checkpoint(result, save, 12)
    if method.startswith("mp"):  # every pruning step checked on both ranks
        assert {f"update {t}" for t in (2, 4, 6, 8, 10)} <= set(found)
        assert all(found[f"update {t}"][2] == 2 for t in (2, 4, 6, 8, 10))
    if method == "mp-global":
        assert mask.pruned() == pruned_count(0.8, mask.total())  # one threshold over all, the same on both ranks
    else:
        assert all(int((~k).sum()) == pruned_count(0.8, k.numel()) for k in mask.values())
    assert sorted(f for f in os.listdir(save) if f.endswith(".pt")) == sorted(
        ["checkpoint_best.pt", "checkpoint_last.pt", "mask.pt"])  # only rank 0 writes, once


def test_ranks_with_different_masks_stop_with_one_line(data_bin, dense_run, tmp_path):
    save = tmp_path / "mismatch"
    save.mkdir()
    result = train_ranks(data_bin, str(save), *slt(dense_run), "--ddp-backend", "legacy_ddp",
                         rank_extra={1: ["--prune-sparsity", "0.7"]})  # a rank launched with other options
    for rank in result:
        errors = [line for line in rank.stderr.splitlines() if "error" in line.lower()]
        assert rank.returncode != 0 and len(errors) == 1, rank.stderr[-2000:]
        assert re.fullmatch(r"fairseq-slt: error: the mask differs between ranks at the new run's start: "
                            r"rank 0 \w{16}, rank 1 \w{16}", errors[0]), errors[0]
    assert not os.path.exists(save / "checkpoint_last.pt")


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_an_interrupted_mp_run_resumes_across_world_sizes(data_bin, tmp_path, first, then):
    save = str(tmp_path / "mp")
    run = [*MP, "--ddp-backend", "legacy_ddp", "--save-interval-updates", "2", "--save-rewind-points", "6"]
    point = os.path.join(save, "checkpoint_rewind_6.pt")
    if first == 2:
        train_ranks(data_bin, save, *run, max_update=200, kill_when=point)
    else:
        from conftest import train_killed_when
        train_killed_when(data_bin, save, point, *run, max_update=200)
    last = load(os.path.join(save, "checkpoint_last.pt"))
    stopped = last["optimizer_history"][-1]["num_updates"]
    at_stop = Mask.from_state_dict(last["extra_state"][TASK_KEY]["mask"])
    assert 4 <= stopped < 200 and stopped % 2 == 0
    points = ",".join(str(t) for t in range(stopped + 1, 13))
    if then == 2:
        result = train_ranks(data_bin, save, *run[:-1], points, max_update=12)
        assert_two_ranks_agree_with_the_checkpoint(result, save, 12)
        stdout = result[0].stdout
    else:
        stdout = train(data_bin, save, *run[:-1], points, max_update=12).stdout
    assert f"@ {stopped} updates" in stdout and "with its stored mask" in stdout
    after = Mask.from_state_dict(load(os.path.join(save, f"checkpoint_rewind_{stopped + 1}.pt"))[
        "extra_state"][TASK_KEY]["mask"])
    assert all(torch.equal(after[n], at_stop[n]) for n in at_stop)  # no jump on resume: the schedule goes on
    for update in range(stopped + 2, 13):
        state = load(os.path.join(save, f"checkpoint_rewind_{update}.pt"))
        mask = Mask.from_state_dict(state["extra_state"][TASK_KEY]["mask"])
        expected = cubic_sparsity(update - update % 2, 0, 0.8, 2, 10)
        assert all(int((~k).sum()) == pruned_count(expected, k.numel()) for k in mask.values()), update
        assert mask.within(after) and all(int((state["model"][n][~k] != 0).sum()) == 0 for n, k in mask.items())


def test_the_launcher_starts_every_rank_and_iterate_runs_through_it(data_bin, dense_run, tmp_path):
    save = str(tmp_path / "launched")
    launcher = ["launch", "--nproc", "2", "--master", f"127.0.0.1:{free_port()}", "--train-command",
                tool_path("fairseq-train")]
    result = run_tool("fairseq-slt", *launcher, "--", data_bin, "--user-dir", os.path.join(os.path.dirname(
        __file__), "..", "fairseq_slt"), "--task", "translation_slt", "--criterion", "label_smoothed_cross_entropy_slt",
        *TINY_MODEL, *TRAINING, "--max-update", "6", "--save-dir", save, "--ddp-backend", "no_c10d", *slt(dense_run))
    found = checksums(result.stdout)
    assert found["the last update (6)"][2] == 2
    assert weights_checksum(load(os.path.join(save, "checkpoint_last.pt"))["model"]) == found["the last update (6)"][1]
    bad = run_tool("fairseq-slt", *launcher, "--", data_bin, "--distributed-rank", "1", check=False)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [
        "fairseq-slt launch: error: --distributed-rank is set by the launcher for every rank; leave it out"]

    work = str(tmp_path / "iterate")
    command = " ".join(["fairseq-slt", *launcher[:3], "--master", f"127.0.0.1:{free_port()}", "--train-command",
                        tool_path("fairseq-train"), "--"])
    done = run_tool("fairseq-slt", "iterate", "--work-dir", work, "--levels", "0.5", "--rewind-k", "2",
                    "--train-command", command, "--", data_bin, *TINY_MODEL, *TRAINING, "--max-update", "4",
                    "--ddp-backend", "legacy_ddp")
    assert "[2/2] slt_0.5: done" in done.stdout
    for stage in ("dense", "slt_0.5"):
        log = open(os.path.join(work, stage, "train.log")).read()
        assert "identical on 2 ranks" in log, stage


@pytest.mark.parametrize("method,extra", [
    ("lt", ["--prune-rewind-from", "rewind0"]), ("clt", []), ("clt", ["--prune-clt-random-signs"]),
    ("slt", ["--prune-random-mask"]), ("slt", ["--prune-reinit"]), ("none", [])])
def test_every_other_method_and_control_under_two_ranks(data_bin, dense_run, tmp_path, method, extra):
    save = str(tmp_path / "ddp")
    if method == "none":
        options = ["--prune-method", "none"]
    else:
        rewind = dense_run["rewind0"] if "rewind0" in extra else dense_run["rewind4"]
        options = ["--prune-method", method, "--prune-sparsity", "0.6", "--prune-mask-from", dense_run["best"],
                   "--prune-rewind-from", rewind, *[e for e in extra if e not in ("--prune-rewind-from", "rewind0")]]
    result = train_ranks(data_bin, save, *options, "--ddp-backend", "no_c10d", max_update=4)
    if method == "none":
        assert all(r.returncode == 0 for r in result)
        found = checksums(result[0].stdout)
        assert found["the last update (4)"][2] == 2
        assert weights_checksum(load(os.path.join(save, "checkpoint_last.pt"))["model"]) == found["the last update (4)"][1]
        return
    mask, _ = assert_two_ranks_agree_with_the_checkpoint(result, save, 4)
    assert all(int((~k).sum()) == pruned_count(0.6, k.numel()) for k in mask.values())
