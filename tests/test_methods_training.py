"""MP, CLT and the controls, through fairseq-train on a slice of Multi30k."""
import math
import os

import pytest
import torch

from conftest import load, one_error_line, train, train_killed_when
from fairseq_slt.checkpoints import TASK_KEY, Checkpoint
from fairseq_slt.cli.results import finished
from fairseq_slt.pruning import Mask, magnitude_mask, pruned_count
from fairseq_slt.pruning.schedule import cubic_sparsity
from fairseq_slt.run.options import epoch_updates

MP = ["--prune-method", "mp", "--prune-sparsity", "0.8", "--prune-start", "2", "--prune-end", "10",
      "--prune-frequency", "2"]


def mask_at(save, update):
    state = load(os.path.join(save, f"checkpoint_rewind_{update}.pt"))
    return Mask.from_state_dict(state["extra_state"][TASK_KEY]["mask"]), state["model"]


def assert_layers_at(mask, sparsity):
    for name, keep in mask.items():
        assert int((~keep).sum()) == pruned_count(sparsity, keep.numel()), (name, sparsity)


def test_mp_follows_the_cubic_schedule_and_holds_the_final_sparsity(data_bin, tmp_path):
    save = str(tmp_path / "mp")
    train(data_bin, save, *MP, "--save-rewind-points", "1,4,5,8,10,16", max_update=16)
    assert Mask.from_state_dict(load(os.path.join(save, "checkpoint_rewind_1.pt"))["extra_state"][TASK_KEY]["mask"]
                                ).sparsity() == 0.0
    previous = None
    for update, expected in ((4, cubic_sparsity(4, 0, 0.8, 2, 10)), (5, cubic_sparsity(4, 0, 0.8, 2, 10)),
                             (8, cubic_sparsity(8, 0, 0.8, 2, 10)), (10, 0.8), (16, 0.8)):
        mask, model = mask_at(save, update)
        assert_layers_at(mask, expected)
        assert all(float(model[n][~k].abs().max()) == 0.0 for n, k in mask.items() if (~k).any())
        if previous is not None:
            assert mask.within(previous)
        previous = mask
    assert 0.45 < cubic_sparsity(4, 0, 0.8, 2, 10) < 0.47  # 0.4625: the step at t=4 is a real one
    final = Mask.load(os.path.join(save, "mask.pt"))
    assert all(torch.equal(final[n], previous[n]) for n in final)  # unchanged from t_end to the end


def test_global_mp_reaches_the_total_sparsity_with_one_threshold(data_bin, tmp_path):
    save = str(tmp_path / "mp_global")
    train(data_bin, save, "--prune-method", "mp", "--prune-scope", "global", "--prune-sparsity", "0.7",
          "--prune-start", "2", "--prune-end", "6", "--prune-frequency", "2", "--save-rewind-points", "4,8",
          max_update=8)
    at4, _ = mask_at(save, 4)
    at8, model = mask_at(save, 8)
    for mask, target in ((at4, cubic_sparsity(4, 0, 0.7, 2, 6)), (at8, 0.7)):
        total = sum(k.numel() for k in mask.values())
        assert sum(int((~k).sum()) for k in mask.values()) == pruned_count(target, total)
    layer_sparsities = [float((~k).float().mean()) for k in at8.values()]
    assert max(layer_sparsities) - min(layer_sparsities) > 0.1  # one threshold, not per layer
    assert at8.within(at4)
    assert all(float(model[n][~k].abs().max()) == 0.0 for n, k in at8.items() if (~k).any())


def test_resumed_mp_run_continues_the_schedule(data_bin, tmp_path):
    save = str(tmp_path / "mp_resume")
    run = [*MP, "--save-interval-updates", "2", "--save-rewind-points", "6"]
    train_killed_when(data_bin, save, os.path.join(save, "checkpoint_rewind_6.pt"), *run)  # killed mid-schedule
    last = load(os.path.join(save, "checkpoint_last.pt"))
    stopped = last["optimizer_history"][-1]["num_updates"]
    assert stopped in (4, 6, 8)  # an even update (saved every 2): the next one prunes nothing
    at_stop = Mask.from_state_dict(last["extra_state"][TASK_KEY]["mask"])
    assert_layers_at(at_stop, cubic_sparsity(stopped, 0, 0.8, 2, 10))
    points = [t for t in range(stopped + 1, 13)]
    result = train(data_bin, save, *run[:-1], ",".join(map(str, points)), max_update=12)
    assert "Loaded checkpoint" in result.stdout and "num_updates 12" in result.stdout
    after, _ = mask_at(save, stopped + 1)
    assert all(torch.equal(at_stop[n], after[n]) for n in at_stop)  # no pruning jump on resume
    previous = at_stop
    for update in points[1:]:
        mask, model = mask_at(save, update)
        assert_layers_at(mask, cubic_sparsity(update - update % 2, 0, 0.8, 2, 10))
        assert mask.within(previous)
        assert all(float(model[n][~k].abs().max()) == 0.0 for n, k in mask.items())
        previous = mask
    assert_layers_at(previous, 0.8)


def test_mp_from_a_mask_and_weights_starts_at_least_at_that_sparsity(data_bin, slt_run, tmp_path):
    save = str(tmp_path / "mp_from_slt")
    source = slt_run["best"]  # mask at 0.8, so s_0 = 0.8 even though --prune-initial-sparsity is 0
    rewind = os.path.join(slt_run["dir"], "checkpoint_rewind_4.pt")
    train(data_bin, save, "--prune-method", "mp", "--prune-sparsity", "0.9", "--prune-start", "0",
          "--prune-end", "6", "--prune-frequency", "2", "--prune-mask-from", source, "--prune-rewind-from", rewind,
          "--save-rewind-points", "0,8", max_update=8)
    start, start_model = mask_at(save, 0)
    slt_mask = Mask.load(os.path.join(slt_run["dir"], "mask.pt"))
    assert all(torch.equal(start[n], slt_mask[n]) for n in start)
    theta = load(rewind)["model"]
    assert all(torch.equal(start_model[n], theta[n]) for n in start_model)  # theta_k of SLT is already masked
    final, _ = mask_at(save, 8)
    assert final.within(slt_mask)
    assert_layers_at(final, 0.9)


def test_clt_and_its_random_sign_control(data_bin, dense_run, tmp_path):
    common = ["--prune-sparsity", "0.8", "--prune-mask-from", dense_run["best"], "--prune-rewind-from",
              dense_run["rewind4"], "--save-rewind-points", "0"]
    theta = load(dense_run["rewind4"])["model"]
    starts = {}
    for label, extra in (("clt", []), ("signs", ["--prune-clt-random-signs", "--prune-seed", "5"]),
                         ("signs_again", ["--prune-clt-random-signs", "--prune-seed", "5"])):
        save = str(tmp_path / label)
        train(data_bin, save, "--prune-method", "clt", *common, *extra, max_update=1)
        starts[label] = (load(os.path.join(save, "checkpoint_rewind_0.pt"))["model"],
                         Mask.load(os.path.join(save, "mask.pt")))
    model, mask = starts["clt"]
    for name, keep in mask.items():
        value = math.sqrt(6 / (keep.shape[0] + keep.shape[1]))
        assert torch.allclose(model[name][keep].abs(), torch.full_like(model[name][keep], value)), name
        assert float(model[name][~keep].abs().max()) == 0.0
        signs_match = torch.sign(model[name][keep]) == torch.where(theta[name][keep] < 0, -1.0, 1.0)
        assert bool(signs_match.all()), name
    assert torch.equal(model["encoder.layers.0.fc1.bias"], theta["encoder.layers.0.fc1.bias"])
    random_model, _ = starts["signs"]
    name = "encoder.layers.0.fc1.weight"
    keep = mask[name]
    agreement = float((torch.sign(random_model[name][keep]) == torch.sign(model[name][keep])).float().mean())
    assert 0.3 < agreement < 0.7
    assert all(torch.equal(random_model[n], starts["signs_again"][0][n]) for n in random_model)


def test_random_mask_and_reinit_controls_are_seeded(data_bin, dense_run, tmp_path):
    common = ["--prune-method", "slt", "--prune-sparsity", "0.8", "--prune-mask-from", dense_run["best"],
              "--prune-rewind-from", dense_run["rewind4"], "--save-rewind-points", "0"]
    runs = {}
    for label, extra in (("random", ["--prune-random-mask", "--prune-seed", "3"]),
                         ("random_again", ["--prune-random-mask", "--prune-seed", "3"]),
                         ("reinit", ["--prune-reinit", "--prune-seed", "3"]),
                         ("reinit_other", ["--prune-reinit", "--prune-seed", "4"])):
        save = str(tmp_path / label)
        train(data_bin, save, *common, *extra, max_update=1)
        runs[label] = (Mask.load(os.path.join(save, "mask.pt")),
                       load(os.path.join(save, "checkpoint_rewind_0.pt"))["model"])
    dense = load(dense_run["best"])["model"]
    magnitude = magnitude_mask({n: dense[n] for n in runs["random"][0]}, 0.8)
    random_mask, random_start = runs["random"]
    assert random_mask.layer_sparsity() == magnitude.layer_sparsity()
    overlap = sum(int((random_mask[n] & magnitude[n]).sum()) for n in magnitude) / (magnitude.total() - magnitude.pruned())
    assert overlap < 0.4  # about 0.2 for a random mask, 1.0 for the magnitude mask
    assert all(torch.equal(random_mask[n], runs["random_again"][0][n]) for n in random_mask)
    theta = load(dense_run["rewind4"])["model"]
    assert torch.equal(random_start["encoder.layers.0.fc1.weight"],
                       theta["encoder.layers.0.fc1.weight"] * random_mask["encoder.layers.0.fc1.weight"])
    reinit_mask, reinit_start = runs["reinit"]
    assert all(torch.equal(reinit_mask[n], magnitude[n]) for n in magnitude)  # the mask is the real one
    name = "encoder.layers.0.fc1.weight"
    assert not torch.equal(reinit_start[name], theta[name] * reinit_mask[name])
    assert not torch.equal(reinit_start[name], runs["reinit_other"][1][name])
    assert float(reinit_start[name][~reinit_mask[name]].abs().max()) == 0.0
    bound = math.sqrt(6 / sum(reinit_start[name].shape))  # fairseq inits Linear with xavier_uniform
    assert float(reinit_start[name].abs().max()) <= bound


def test_mp_initial_sparsity_prunes_the_weights_the_run_starts_with(data_bin, dense_run, tmp_path):
    save = str(tmp_path / "mp_restored")
    train(data_bin, save, "--prune-method", "mp", "--prune-sparsity", "0.8", "--prune-initial-sparsity", "0.5",
          "--prune-start", "0", "--prune-end", "4", "--prune-frequency", "2", "--restore-file", dense_run["last"],
          "--reset-optimizer", "--reset-dataloader", "--reset-meters", "--reset-lr-scheduler",
          "--save-rewind-points", "0,2,4", max_update=4)
    start, start_model = mask_at(save, 0)
    dense = load(dense_run["last"])["model"]
    expected = magnitude_mask({n: dense[n] for n in start}, 0.5)
    assert all(torch.equal(start[n], expected[n]) for n in start)
    assert all(torch.equal(start_model[n], dense[n] * start[n]) for n in start)
    # mid-schedule with s_0 = 0.5: s_2 = s_T + (s_0 - s_T) (1 - (2 - 0) / (4 - 0))^3, written out here
    middle, _ = mask_at(save, 2)
    s_2 = 0.8 + (0.5 - 0.8) * (1 - 2 / 4) ** 3
    assert abs(s_2 - 0.7625) < 1e-12
    for name, keep in middle.items():
        assert int((~keep).sum()) == int(s_2 * keep.numel() + 0.5), name
    assert middle.within(start)
    final, _ = mask_at(save, 4)
    assert final.within(middle)
    assert_layers_at(final, 0.8)


@pytest.mark.parametrize("killed", [False, True])
def test_mp_best_checkpoint_is_one_at_the_target_sparsity(data_bin, dense_run, tmp_path, killed):
    """From trained weights at a tiny learning rate, pruning to 98 % raises the validation loss, so fairseq
    alone keeps a best from before the schedule reached 98 %; the plugin makes no best before it, and
    checkpoint_best.pt is a 98 %-sparse model; also when the run is killed mid-schedule and resumed
    (the hold, stored in the checkpoint as an unbeatable best, is released on the update that reaches 98 %)."""
    save = str(tmp_path / "mp_best")
    run = ["--prune-method", "mp", "--prune-sparsity", "0.98", "--prune-start", "4", "--prune-end", "5",
           "--prune-frequency", "2", "--save-interval-updates", "2", "--lr", "1e-6",
           "--prune-rewind-from", dense_run["best"]]
    if killed:
        train_killed_when(data_bin, save, os.path.join(save, "checkpoint_1_4.pt"), *run, max_update=10)
    train(data_bin, save, *run, max_update=10)
    best, last = (load(os.path.join(save, f"checkpoint_{name}.pt")) for name in ("best", "last"))
    assert best["optimizer_history"][-1]["num_updates"] >= 5
    masks = Checkpoint(os.path.join(save, "checkpoint_best.pt")).mask()
    assert abs(masks.sparsity() - 0.98) < 0.005
    for name, kept in masks.items():
        assert int((best["model"][name] != 0).sum()) <= int(kept.sum()), name
    assert math.isfinite(last["extra_state"]["best"])  # past the schedule the best is a loss again
    assert best["extra_state"]["val_loss"] == last["extra_state"]["best"]


def test_patience_counts_from_the_update_that_reaches_the_target_sparsity(data_bin, dense_run, tmp_path):
    """--patience N stops a run after N validations that do not beat the best. While MP prunes trained weights
    at a tiny learning rate, every validation is worse than the last, so fairseq alone would stop the run at
    its second validation with the model at a fraction of the sparsity asked for. The plugin counts patience
    from the update that reaches the target, as it does the best checkpoint: the run gets there, and then stops."""
    save = str(tmp_path / "mp_patience")
    result = train(data_bin, save, "--prune-method", "mp", "--prune-sparsity", "0.98", "--prune-start", "2",
                   "--prune-end", "8", "--prune-frequency", "2", "--save-interval-updates", "2", "--lr", "1e-6",
                   "--prune-rewind-from", dense_run["best"], "--patience", "1", max_update=30)
    last = load(os.path.join(save, "checkpoint_last.pt"))
    assert abs(Checkpoint(os.path.join(save, "checkpoint_last.pt")).mask().sparsity() - 0.98) < 0.005
    stopped = last["optimizer_history"][-1]["num_updates"]
    assert 8 < stopped < 30, stopped  # patience still stops the run, once its sparsity is the one asked for
    assert "early stop since valid performance hasn't improved for last 1 runs" in result.stdout + result.stderr
    assert finished(save) is None and load(os.path.join(save, "checkpoint_last.pt"))["extra_state"][TASK_KEY][
        "stopped"] == "patience"  # results and pack take it as finished


def test_a_run_stopped_before_its_schedule_ends_says_so_at_exit(data_bin, tmp_path):
    """fairseq's --stop-time-hours (like Ctrl-C) ends a run wherever it is; an MP run stopped before its schedule's
    end holds a fraction of its sparsity and no checkpoint_best.pt. It says so as it exits; a finished run does not."""
    mp = ["--prune-method", "mp", "--prune-sparsity", "0.9", "--prune-start", "2", "--prune-end", "6",
          "--prune-frequency", "2"]
    stopped = train(data_bin, str(tmp_path / "stopped"), *mp, "--stop-time-hours", "1e-9")
    output = stopped.stdout + stopped.stderr
    assert "the run stopped after update 1, before its schedule reached sparsity 0.9 (update 6): its mask is at " \
           "sparsity 0.0000" in output, output[-3000:]
    assert not os.path.exists(tmp_path / "stopped" / "checkpoint_best.pt")
    done = train(data_bin, str(tmp_path / "finished"), *mp)
    assert "the run stopped after" not in done.stdout + done.stderr
    assert finished(str(tmp_path / "stopped")) == "its last checkpoint at update 1 of 12"  # results, pack: unfinished
    assert finished(str(tmp_path / "finished")) is None


def test_with_max_epoch_a_schedule_past_the_runs_last_update_is_refused_before_training(data_bin, tmp_path):
    """--max-epoch without --max-update: the run's last update is known once its batches are, and an MP schedule
    ending after it was accepted and stopped short (a "90 %" run ended at 6 %). The bound is fairseq's own count:
    a schedule within it trains to the target; one ending an update past the run's last is refused in one line,
    nothing written."""
    mp = ["--prune-method", "mp", "--prune-sparsity", "0.8", "--prune-start", "2", "--prune-frequency", "2",
          "--max-update", "0", "--max-epoch", "2", "--update-freq", "2"]
    first = str(tmp_path / "within")
    train(data_bin, first, *mp, "--prune-end", "20")
    last = load(os.path.join(first, "checkpoint_last.pt"))["optimizer_history"][-1]["num_updates"]
    assert abs(Checkpoint(os.path.join(first, "checkpoint_last.pt")).mask().sparsity() - 0.8) < 0.005
    assert finished(first) is None  # by its epochs: results and pack take it (they called it "update N of ?")
    short = str(tmp_path / "short")
    train(data_bin, short, *mp, "--prune-end", "20", "--stop-time-hours", "1e-9")
    assert finished(short) == "its last checkpoint at update 1, in epoch 1 of --max-epoch 2"
    beyond = tmp_path / "beyond"
    result = train(data_bin, str(beyond), *mp, "--prune-end", str(last + 1), check=False)
    one_error_line(result, f"--prune-end {last + 1} is beyond the run's last update, {last} (--max-epoch 2 of ",
                   " batches each, --update-freq 2): the run would stop before reaching --prune-sparsity 0.8")
    assert not beyond.exists() or os.listdir(beyond) == []


def test_epoch_updates_group_each_epochs_batches_by_its_update_freq():
    assert epoch_updates(50, 2, [2], False) == 50
    assert epoch_updates(51, 1, [2], False) == 26 and epoch_updates(51, 1, [2], True) == 25
    assert epoch_updates(50, 3, [1, 2], False) == 50 + 25 + 25  # the last entry holds for later epochs
