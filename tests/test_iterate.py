"""``fairseq-slt iterate``: levels, rewinding, resume after a kill, SLT-MP and MP-SLT."""
import fcntl
import json
import os
import re
import signal
import subprocess
import time

import torch

from conftest import BIN, TINY_MODEL, TRAINING, env, load, run_tool, short_generate, tool_path, wait_until_unlocked
from fairseq_slt.cli.main import main as cli_main
from fairseq_slt.pruning import Mask, pruned_count



def driver_args(work, *options, data, max_update=12):
    return ["iterate", "--work-dir", work, "--train-command", tool_path("fairseq-train"),
            "--generate-command", short_generate(), *options, "--", data, *TINY_MODEL, *TRAINING,
            "--max-update", str(max_update)]


def start_weights_equal(run_dir, rewind_path, mask):
    start = load(os.path.join(run_dir, "checkpoint_rewind_0.pt"))["model"]
    theta = load(rewind_path)["model"]
    for name in mask:
        assert torch.equal(start[name], theta[name] * mask[name]), name
    return True


def processes_naming(text):
    """Live processes whose command line contains ``text``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if text.encode() in handle.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_two_levels_rewind_to_the_previous_level_and_resume_after_a_kill(data_bin, tmp_path):
    work = str(tmp_path / "iterate")
    # 50 updates a stage: the trainer is killed at its first checkpoint (update 10), far from its end
    args = driver_args(work, "--levels", "0.5,0.8", "--rewind-k", "4", data=data_bin, max_update=50) + [
        "--save-interval-updates", "10"]
    os.makedirs(work)
    holder = os.open(work, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live driver holds it
    try:
        second = run_tool("fairseq-slt", *args, check=False)
    finally:
        os.close(holder)
    assert second.returncode != 0 and second.stderr.strip().splitlines() == [
        f"fairseq-slt iterate: error: work dir {work} is in use by another live run; wait for it to end or use "
        "another work dir"]
    assert os.listdir(work) == []
    process = subprocess.Popen([os.path.join(BIN, "fairseq-slt"), *args], env=env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    stage_dir = os.path.join(work, "slt_0.8")
    target = os.path.join(stage_dir, "checkpoint_last.pt")
    deadline = time.time() + 300
    while not os.path.exists(target) and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None
    os.kill(process.pid, signal.SIGKILL)  # the driver alone: its fairseq-train must end with it
    first_output = process.communicate()[0]
    wait_until_unlocked(stage_dir, timeout=30)
    assert processes_naming(stage_dir) == []
    stopped_at = load(target)["optimizer_history"][-1]["num_updates"]
    assert stopped_at < 50  # the trainer did not go on to the end on its own
    assert "[2/3] slt_0.5: done" in first_output and "[3/3] slt_0.8: done" not in first_output
    assert not os.path.exists(os.path.join(work, "slt_0.8", ".done"))

    result = run_tool("fairseq-slt", *args)
    assert "[1/3] dense: finished, skipped" in result.stdout
    assert "[2/3] slt_0.5: finished, skipped" in result.stdout
    assert f"[3/3] slt_0.8: training (slt, sparsity 0.8), resuming at update {stopped_at}\n" in result.stdout
    assert "[3/3] slt_0.8: done" in result.stdout
    log = open(os.path.join(work, "slt_0.8", "train.log")).read()
    resumed_at = [int(n) for n in re.findall(r"Loaded checkpoint .*\(epoch \d+ @ (\d+) updates\)", log)]
    assert resumed_at and resumed_at[-1] > 0  # the interrupted level went on from its checkpoint

    summary = json.load(open(os.path.join(work, "summary.json")))
    assert [s["name"] for s in summary["stages"]] == ["dense", "slt_0.5", "slt_0.8"]
    assert [round(s["sparsity"], 3) for s in summary["stages"]] == [0.0, 0.5, 0.8]
    assert all(s["best_valid_loss"] > 0 and os.path.isfile(s["checkpoint"]) for s in summary["stages"])

    m5, m8 = (Mask.load(os.path.join(work, f"slt_{s}", "mask.pt")) for s in ("0.5", "0.8"))
    assert m8.within(m5) and all(int((~k).sum()) == pruned_count(0.8, k.numel()) for k in m8.values())
    # level 2's weights: level 1's own theta_4 (the paper), masked
    assert start_weights_equal(os.path.join(work, "slt_0.8"), os.path.join(work, "slt_0.5", "checkpoint_rewind_4.pt"), m8)
    assert start_weights_equal(os.path.join(work, "slt_0.5"), os.path.join(work, "dense", "checkpoint_rewind_4.pt"), m5)


def test_rewind_to_the_dense_run_and_lt(data_bin, dense_run, tmp_path):
    work = str(tmp_path / "frankle")
    run_tool("fairseq-slt", *driver_args(work, "--levels", "0.3,0.6", "--rewind-k", "4", "--rewind-source", "dense",
                                        "--dense-dir", dense_run["dir"], data=data_bin, max_update=4))
    m6 = Mask.load(os.path.join(work, "slt_0.6", "mask.pt"))
    assert m6.within(Mask.load(os.path.join(work, "slt_0.3", "mask.pt")))
    assert start_weights_equal(os.path.join(work, "slt_0.6"), dense_run["rewind4"], m6)
    assert not os.path.exists(os.path.join(work, "dense"))  # the given dense run was used
    # the same command again: every stage is reused; with another --max-update none is
    again = run_tool("fairseq-slt", *driver_args(work, "--levels", "0.3,0.6", "--rewind-k", "4", "--rewind-source",
                                                "dense", "--dense-dir", dense_run["dir"], data=data_bin, max_update=4))
    assert "[1/2] slt_0.3: finished, skipped" in again.stdout and "[2/2] slt_0.6: finished, skipped" in again.stdout
    changed = run_tool("fairseq-slt", *driver_args(work, "--levels", "0.3,0.6", "--rewind-k", "4", "--rewind-source",
                                                  "dense", "--dense-dir", dense_run["dir"], data=data_bin, max_update=6),
                       check=False)
    assert changed.returncode != 0 and changed.stderr.strip().splitlines() == [
        f"fairseq-slt iterate: error: stage slt_0.3 in {work} was made with other settings (--max-update 4 there, "
        "6 here): use another --work-dir"]
    work = str(tmp_path / "lt")
    run_tool("fairseq-slt", *driver_args(work, "--levels", "0.4", "--method", "lt", "--dense-dir", dense_run["dir"],
                                        "--bleu", "--beam", "2", data=data_bin, max_update=4))
    assert start_weights_equal(os.path.join(work, "lt_0.4"), dense_run["rewind0"],
                               Mask.load(os.path.join(work, "lt_0.4", "mask.pt")))
    # --bleu scores with results' scorer: the same figure results prints for the same checkpoint and subset
    summary = json.load(open(os.path.join(work, "summary.json")))["stages"]
    scored = run_tool("fairseq-slt", "results", os.path.join(work, "lt_0.4"), "--subset", "valid", "--beam", "2",
                      "--generate-command", short_generate(), "--json", tmp_path / "lt.json")
    rows = json.load(open(tmp_path / "lt.json"))["rows"]
    assert summary[0]["valid_bleu"] == rows[0]["score"]["bleu"] and isinstance(rows[0]["score"]["bleu"], float), scored.stdout


def test_slt_mp_and_mp_slt_end_to_end(data_bin, dense_run, tmp_path):
    work = str(tmp_path / "slt_mp")
    result = run_tool("fairseq-slt", *driver_args(
        work, "--levels", "0.5,0.9", "--combine", "slt-mp", "--intermediate", "0.5", "--mp-end", "6",
        "--mp-frequency", "2", "--rewind-k", "4", "--dense-dir", dense_run["dir"], data=data_bin, max_update=8))
    assert "[2/2] mp_0.9: done" in result.stdout
    slt, mp = (Mask.load(os.path.join(work, name, "mask.pt")) for name in ("slt_0.5", "mp_0.9"))
    assert mp.within(slt) and all(int((~k).sum()) == pruned_count(0.9, k.numel()) for k in mp.values())
    start = load(os.path.join(work, "mp_0.9", "checkpoint_rewind_0.pt"))["extra_state"]["TranslationSLTTask"]
    assert Mask.from_state_dict(start["mask"]).sparsity() == slt.sparsity()  # s_0 = s_i, from theta_k * m
    assert start_weights_equal(os.path.join(work, "mp_0.9"), os.path.join(work, "slt_0.5", "checkpoint_rewind_4.pt"), slt)

    work = str(tmp_path / "mp_slt")
    result = run_tool("fairseq-slt", *driver_args(
        work, "--levels", "0.5,0.9", "--combine", "mp-slt", "--intermediate", "0.5", "--mp-end", "6",
        "--mp-frequency", "2", "--rewind-k", "4", data=data_bin, max_update=8))
    assert "[1/2] mp_0.5: done" in result.stdout and "[2/2] slt_0.9: done" in result.stdout
    mp, slt = (Mask.load(os.path.join(work, name, "mask.pt")) for name in ("mp_0.5", "slt_0.9"))
    assert all(int((~k).sum()) == pruned_count(0.5, k.numel()) for k in mp.values())
    assert slt.within(mp) and all(int((~k).sum()) == pruned_count(0.9, k.numel()) for k in slt.values())
    assert start_weights_equal(os.path.join(work, "slt_0.9"), os.path.join(work, "mp_0.5", "checkpoint_rewind_4.pt"), slt)
    summary = json.load(open(os.path.join(work, "summary.json")))
    assert [s["name"] for s in summary["stages"]] == ["mp_0.5", "slt_0.9"]


def test_driver_bad_inputs_fail_before_training(data_bin, tmp_path, capsys):
    work = str(tmp_path / "bad")
    cases = {
        ("--levels", "0.5,0.3", "--rewind-k", "4"): "--levels must be strictly increasing",
        ("--levels", "0.5,1.0", "--rewind-k", "4"): r"--levels must be sparsities in \(0, 1\)",
        ("--levels", "0.5",): "--method slt needs --rewind-k > 0",
        ("--levels", "0.5,0.9", "--rewind-k", "4", "--combine", "slt-mp", "--intermediate", "0.5", "--mp-end", "0"):
            r"--mp-end \(0\) must be greater than --mp-start \(0\)",
        ("--levels", "0.5,0.9", "--rewind-k", "4", "--combine", "slt-mp", "--intermediate", "0.5", "--mp-end", "6",
         "--mp-frequency", "0"): "--mp-frequency must be a positive",
        ("--levels", "0.5", "--rewind-k", "4", "--combine", "slt-mp", "--intermediate", "0.7", "--mp-end", "6"):
            "--intermediate 0.7 must be below the last level 0.5",
        ("--levels", "0.5", "--rewind-k", "4", "--dense-dir", "/nonexistent"): "--dense-dir lacks",
        ("--levels", "0.5", "--rewind-k", "50"): "--rewind-k 50 is beyond --max-update 12: every run stops before",
        ("--levels", "0.5,0.9", "--rewind-k", "4", "--combine", "slt-mp", "--intermediate", "0.5", "--mp-end", "20"):
            "--mp-end 20 is beyond --max-update 12",
    }
    for options, message in cases.items():  # in-process: the console script's own main()
        assert cli_main(driver_args(work, *options, data=data_bin)) == 2, options
        error = capsys.readouterr().err
        assert error.startswith("fairseq-slt iterate: error: "), options
        assert error.count("\n") == 1 and re.search(message, error), (options, error)
        assert not os.path.exists(work)
    dry = run_tool("fairseq-slt", *driver_args(work, "--levels", "0.5", "--rewind-k", "4", "--dry-run", data=data_bin))
    assert "--prune-method slt" in dry.stdout and not os.path.exists(work)  # a dry run creates nothing
    result = run_tool("fairseq-slt", "iterate", "--work-dir", work, "--levels", "0.5", "--rewind-k", "4", "--",
                      data_bin, "--save-dir", "x", check=False)
    assert result.returncode != 0 and not os.path.exists(work)
    assert result.stderr.strip().splitlines() == [
        "fairseq-slt iterate: error: --save-dir is set by the driver for every level; leave it out"]
