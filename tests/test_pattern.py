"""--prune-pattern N:M: the mask function, the run in-process, and through fairseq-train (resumed, 2 ranks)."""
import os

import pytest
import torch

from conftest import load, train, train_killed_when, train_ranks
from test_distributed import assert_two_ranks_agree_with_the_checkpoint
from test_methods_table import Tiny, _cfg, _exact, _steps
from fairseq_slt.checkpoints import TASK_KEY
from fairseq_slt.pruning import Mask, UserError
from fairseq_slt.pruning.enforce import bits
from fairseq_slt.pruning.pattern import follows, parse_pattern, pattern_mask, random_pattern_mask
from fairseq_slt.run import PruningRun
from fairseq_slt.run.options import validate_options


def _groups(keep, m):
    return keep.reshape(keep.shape[0], -1, m).sum(-1)


def test_the_mask_keeps_the_n_largest_of_every_group_and_respects_the_previous_one():
    torch.manual_seed(0)
    weights = {"a": torch.randn(6, 16), "b": torch.randn(3, 8)}
    mask = pattern_mask({n: w.abs() for n, w in weights.items()}, 2, 4)
    for name, keep in mask.items():
        assert bool((_groups(keep, 4) == 2).all())
        groups = weights[name].abs().reshape(keep.shape[0], -1, 4)
        kept = groups[keep.reshape(groups.shape)].reshape(*groups.shape[:2], 2)
        dropped = groups[~keep.reshape(groups.shape)].reshape(*groups.shape[:2], 2)
        assert bool((kept.min(-1).values >= dropped.max(-1).values).all())  # the two largest of each four
    one = pattern_mask({n: w.abs() for n, w in weights.items()}, 1, 4, previous_mask=mask)
    assert one.within(mask) and follows(one, (1, 4)) and abs(one.sparsity() - 0.75) < 1e-9
    control = random_pattern_mask(weights, 2, 4, seed=3, previous_mask=None)
    assert follows(control, (2, 4)) and not all(torch.equal(control[n], mask[n]) for n in mask)
    for bad in ("4:2", "2:2", "0:4", "2-4", "x"):
        with pytest.raises(UserError, match="--prune-pattern must be N:M"):
            parse_pattern(bad)


def test_slt_and_mp_in_process_follow_the_pattern_and_mp_ramps_the_kept_count(tmp_path):
    from fairseq_slt.checkpoints import write_model_checkpoint

    torch.manual_seed(0)
    dense, rewind = Tiny(), Tiny()
    write_model_checkpoint(str(tmp_path / "best.pt"), dense.state_dict(), {}, 100, 1, {})
    write_model_checkpoint(str(tmp_path / "rewind.pt"), rewind.state_dict(), {}, 5, 1, {})
    cfg = _cfg(tmp_path / "slt", prune_method="slt", prune_sparsity=0.5, prune_pattern="2:4",
               prune_mask_from=str(tmp_path / "best.pt"), prune_rewind_from=str(tmp_path / "rewind.pt"))
    validate_options(cfg)
    model = Tiny()
    run = PruningRun(cfg, model, lambda: {})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    _steps(run, model, optimizer, 4)
    expected = pattern_mask({n: p.detach().abs() for n, p in dense.named_parameters() if n.endswith("weight")}, 2, 4)
    assert all(torch.equal(run.mask[n], expected[n]) for n in expected) and follows(run.mask, (2, 4)) and _exact(run)

    cfg = _cfg(tmp_path / "mp", prune_method="mp", prune_sparsity=0.5, prune_pattern="2:4", prune_end=8,
               prune_frequency=2)
    validate_options(cfg)
    model = Tiny()
    run = PruningRun(cfg, model, lambda: {})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    kept = []
    run.start(0, optimizer)
    for _ in range(10):
        _steps(run, model, optimizer, 1)
        kept.append(sorted({int(c) for keep in run.mask.values() for c in _groups(keep, 4).flatten()}))
        assert _exact(run)
    assert kept[0] == [4] and kept[-1] == [2] and [3] in kept  # 4 -> 3 -> 2 kept a group, on the cubic schedule


@pytest.mark.parametrize("options, error", [
    (["--prune-sparsity", "0.6"], "--prune-pattern 2:4 keeps 2 of every 4 weights: --prune-sparsity must be 0.5"),
    (["--prune-sparsity", "0.5", "--prune-scope", "global"], "it takes --prune-scope layer"),
])
def test_options_that_contradict_the_pattern_are_refused(options, error, tmp_path):
    cfg = _cfg(tmp_path, prune_method="mp", prune_pattern="2:4", prune_end=8, **{
        "prune_sparsity": float(options[1]), "prune_scope": options[3] if len(options) > 2 else "layer"})
    with pytest.raises(UserError, match=error):
        validate_options(cfg)


def test_a_pattern_that_does_not_divide_a_matrix_is_refused(tmp_path):
    cfg = _cfg(tmp_path, prune_method="mp", prune_sparsity=0.8, prune_pattern="1:5", prune_end=8)
    with pytest.raises(UserError, match=r"first.weight has shape \(32, 16\); its input dimension .* multiple of 5"):
        PruningRun(cfg, Tiny(), lambda: {})


def _pattern_exact(path, pattern):
    state = load(path)
    mask = Mask.from_state_dict(state["extra_state"][TASK_KEY]["mask"])
    assert follows(mask, pattern)
    assert all(not bits(state["model"][n])[~k].any() for n, k in mask.items())
    return mask


def test_fairseq_train_with_a_pattern_resumes_and_runs_on_two_ranks(data_bin, dense_run, tmp_path):
    mp = ("--prune-method", "mp", "--prune-sparsity", "0.5", "--prune-pattern", "2:4", "--prune-end", "8",
          "--prune-frequency", "2", "--save-rewind-points", "5,6")
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    train(data_bin, whole, *mp)
    final = _pattern_exact(os.path.join(whole, "checkpoint_last.pt"), (2, 4))
    assert abs(final.sparsity() - 0.5) < 1e-9
    train_killed_when(data_bin, broken, os.path.join(broken, "checkpoint_rewind_6.pt"), *mp)
    train(data_bin, broken, *mp)
    resumed = _pattern_exact(os.path.join(broken, "checkpoint_last.pt"), (2, 4))
    assert all(torch.equal(resumed[n], final[n]) for n in final)
    slt = ("--prune-method", "slt", "--prune-sparsity", "0.5", "--prune-pattern", "2:4", "--prune-mask-from",
           dense_run["best"], "--prune-rewind-from", dense_run["rewind4"], "--ddp-backend", "legacy_ddp")
    save = str(tmp_path / "ranks")
    mask, _ = assert_two_ranks_agree_with_the_checkpoint(train_ranks(data_bin, save, *slt), save, 12)
    assert follows(mask, (2, 4))


def test_iterate_takes_n_m_levels_each_inside_the_last(data_bin, dense_run, tmp_path):
    from test_iterate import driver_args
    from conftest import run_tool

    work = str(tmp_path / "nm")
    run_tool("fairseq-slt", *driver_args(work, "--levels", "0.5,0.75", "--rewind-k", "4", "--pattern-group", "4",
                                        "--dense-dir", dense_run["dir"], data=data_bin, max_update=4))
    half = _pattern_exact(os.path.join(work, "slt_0.5", "checkpoint_last.pt"), (2, 4))
    quarter = _pattern_exact(os.path.join(work, "slt_0.75", "checkpoint_last.pt"), (1, 4))
    assert quarter.within(half) and abs(quarter.sparsity() - 0.75) < 1e-9
    refused = run_tool("fairseq-slt", *driver_args(str(tmp_path / "odd"), "--levels", "0.5,0.8", "--rewind-k", "4",
                                                  "--pattern-group", "4", data=data_bin), check=False)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "fairseq-slt iterate: error: --pattern-group 4: level 0.8 is not a whole number of weights of every 4 (use "
        "levels k/4)"] and not os.path.exists(tmp_path / "odd")
