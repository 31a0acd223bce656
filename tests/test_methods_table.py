"""The method table, the schedule and a PruningRun, in-process on a tiny nn.Module (no fairseq-train)."""
import os
import re
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT
from fairseq_slt.checkpoints import write_model_checkpoint
from fairseq_slt.pruning import UserError, magnitude_mask
from fairseq_slt.pruning.enforce import bits
from fairseq_slt.pruning.methods import TABLE, label, method
from fairseq_slt.pruning.schedule import Schedule, cubic_sparsity
from fairseq_slt.run import Phase, PruningRun
from fairseq_slt.run.options import run_identity, validate_options


def test_no_module_outside_the_table_compares_method_names():
    names = "|".join(TABLE)
    comparison = re.compile(rf'''(==|!=)\s*["']({names})["']|in \(["']({names})["']|["']({names})["'] (not )?in ''')
    found = []
    for folder, _, files in os.walk(os.path.join(ROOT, "fairseq_slt")):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".py") and not path.endswith(os.path.join("pruning", "methods.py")):
                found += [f"{path}:{n}" for n, line in enumerate(open(path), 1) if comparison.search(line)]
    assert found == []


def test_each_entry_says_what_the_rest_of_the_package_asks():
    assert [m.name for m in TABLE.values() if m.from_checkpoints] == ["lt", "slt", "clt"]
    assert [m.name for m in TABLE.values() if m.gradual] == ["mp"] and not method("none").prunes
    assert method("lt").rewind_to == "theta_0" and method("clt").kept_weights == "constant"
    method("lt").check_rewind_update(0)
    with pytest.raises(UserError, match="lt rewinds to update 0, but --prune-rewind-from is from update 7"):
        method("lt").check_rewind_update(7)
    with pytest.raises(UserError, match="a checkpoint from update 0 is --prune-method lt"):
        method("slt").check_rewind_update(0)
    with pytest.raises(UserError, match="--prune-method must be one of none, lt, slt, clt, mp, got 'magic'"):
        method("magic")
    assert label("none", []) == "dense" and label("mp", ["slt", "none"]) == "slt-mp"
    assert label("slt", ["mp"]) == "mp-slt" and label("slt", ["slt", "none"]) == "slt"


def test_the_schedule_prunes_on_its_steps_only_and_follows_the_cubic_curve():
    mp = Schedule(True, 0.2, 0.9, 10, 50, 10)
    assert [u for u in range(0, 60) if mp.target_at(u) is not None] == [10, 20, 30, 40, 50]
    assert all(mp.target_at(u) == cubic_sparsity(u, 0.2, 0.9, 10, 50) for u in (10, 20, 30, 40, 50))
    assert mp.sparsity_at(0) == 0.2 and mp.sparsity_at(50) == pytest.approx(0.9)
    one_shot = Schedule(False, 0.0, 0.8, 0, 0, 1)
    assert all(one_shot.target_at(u) is None for u in range(20)) and one_shot.sparsity_at(5) == 0.8


def _cfg(save_dir, **options):
    base = dict(prune_method="none", prune_sparsity=0.0, prune_scope="layer", prune_params=None, prune_mask_from=None,
                prune_rewind_from=None, prune_initial_sparsity=0.0, prune_start=0, prune_end=0, prune_frequency=1,
                prune_clt_random_signs=False, prune_random_mask=False, prune_reinit=False, prune_seed=1,
                prune_dense_gradients=False, save_rewind_points="", max_update=20, save_dir=str(save_dir),
                restore_file="checkpoint_last.pt", distributed_rank=0, distributed_world_size=1,
                ddp_backend="legacy_ddp", cpu=True, seed=1, log_interval=1)
    return SimpleNamespace(**dict(base, **options))


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def _steps(run, model, optimizer, count, clip=None, accumulate=1):
    for update in range(count):
        if update == 0 and run.phase is not Phase.RUNNING:
            run.start(run.updates_done, optimizer)
        for _ in range(accumulate):
            model(torch.randn(8, 16)).pow(2).mean().backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad()
        run.after_step(run.updates_done)


def _exact(run):
    """Pruned positions hold +0.0, all bits zero (not merely == 0)."""
    return all(not bits(run.params[name].detach())[~keep].any() for name, keep in run.mask.items())


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "nag"])
def test_an_slt_run_in_process_starts_from_its_mask_and_rewind_point_and_stays_exact(optimizer, tmp_path):
    torch.manual_seed(0)
    dense, rewind = Tiny(), Tiny()
    config = {"model": {"_name": "tiny"}}
    write_model_checkpoint(str(tmp_path / "best.pt"), dense.state_dict(), config, 100, 1, {})
    write_model_checkpoint(str(tmp_path / "rewind.pt"), rewind.state_dict(), config, 5, 1, {})
    cfg = _cfg(tmp_path / "run", prune_method="slt", prune_sparsity=0.75, prune_mask_from=str(tmp_path / "best.pt"),
               prune_rewind_from=str(tmp_path / "rewind.pt"))
    validate_options(cfg)
    model = Tiny()
    run = PruningRun(cfg, model, lambda: config)
    assert run.phase is Phase.NEW and run.identity == run_identity(cfg, None)
    assert run.plan.sparsity == 0.75 and set(run.plan.weights) == set(model.state_dict())  # computed once, here
    expected = magnitude_mask({n: p for n, p in dense.named_parameters() if n.endswith("weight")}, 0.75, None, "layer")
    make = {"adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
            "sgd": lambda p: torch.optim.SGD(p, lr=0.1), "nag": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9,
                                                                                          nesterov=True)}[optimizer]
    opt = make(model.parameters())
    run.start(0, opt)
    assert run.plan is None  # applied, and not kept
    kept = {n: p for n, p in rewind.named_parameters()}
    assert all(torch.equal(run.mask[n], expected[n]) for n in expected)  # the mask of θ_T, on θ_k:
    assert all(torch.equal(run.params[n].detach()[k], kept[n].detach()[k]) for n, k in run.mask.items())
    _steps(run, model, opt, 6, clip=0.1, accumulate=2)
    assert run.updates_done == 6 and _exact(run) and abs(run.mask.sparsity() - 0.75) < 0.01


def test_mp_in_process_follows_its_schedule_and_never_unprunes(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(tmp_path / "mp", prune_method="mp", prune_sparsity=0.8, prune_start=0, prune_end=8, prune_frequency=2)
    validate_options(cfg)
    model = Tiny()
    run = PruningRun(cfg, model, lambda: {})
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    previous = None
    run.start(0, opt)
    for update in range(10):
        _steps(run, model, opt, 1)
        expected = run.schedule.sparsity_at(update + 1 - (update + 1) % 2 if update + 1 <= 8 else 8)
        assert abs(run.mask.sparsity() - expected) < 0.02, update
        assert previous is None or run.mask.within(previous)
        assert _exact(run)
        previous = run.mask
    assert abs(run.mask.sparsity() - 0.8) < 0.01


def test_results_labels_n_m_runs_apart_from_unstructured_ones():
    from fairseq_slt.cli.results import label_of

    assert label_of({"method": "slt", "mask_from": "/runs/dense/checkpoint_best.pt", "prune_pattern": "2:4"},
                    {"/runs/dense": {"method": "none"}}) == "slt 2:4"
    assert label_of({"method": "mp", "prune_pattern": "2:4"}, {}) == "mp 2:4"
    assert label_of({"method": "slt", "mask_from": "/runs/dense/checkpoint_best.pt"},
                    {"/runs/dense": {"method": "none"}}) == "slt"


def _changed(value):
    return {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v + 0.05}.get(type(value), lambda v: "x/other")(value)


def test_the_identity_is_what_the_options_declare_and_nothing_else(tmp_path):
    """Each option PruningOptions declares part of the identity changes it for a method it applies to, and
    the run refuses a save dir of the other value; an option declared outside it never changes it."""
    import dataclasses
    from fairseq_slt.run import folder
    from fairseq_slt.run.options import IDENTITY, PruningOptions, option_of
    example = {"always": "slt", "prunes": "slt", "given": "slt", "gradual": "mp", "control": "clt"}
    for field in dataclasses.fields(PruningOptions):
        spec = field.metadata["identity"]
        chosen = example[spec.when] if spec else "slt"
        if field.name == "prune_method":
            continue  # every other case changes the method's own options
        if spec and spec.when == "control" and field.name not in method(chosen).controls:
            chosen = "slt"
        base = _cfg(tmp_path, prune_method=chosen, prune_sparsity=0.5, prune_pattern=None, sparse_inference=False,
                    prune_mask_from="a.pt", prune_rewind_from="b.pt", save_rewind_points="0")
        value = getattr(base, field.name)
        other = SimpleNamespace(**dict(vars(base), **{field.name: _changed(value if value is not None else "2:4")}))
        before, after = run_identity(base, "d"), run_identity(other, "d")
        if spec is None:
            assert before == after, field.name
            continue
        assert before != after, field.name
        key = spec.key or field.name
        shown = before.get(key) if before.get(key) is not None else "none"
        assert folder.differences(before, after) == [f"{option_of(key)} {shown} there, {after[key]} here"], field.name
        assert folder.differences(after, before) == [f"{option_of(key)} {after[key]} there, {shown} here"], field.name
        assert option_of(key) == "--" + field.name.replace("_", "-")
    outside = {f.name for f in dataclasses.fields(PruningOptions)} - set(IDENTITY)
    assert outside == {"save_rewind_points", "sparse_inference"}  # every option that changes the training is in it
    assert run_identity(_cfg(tmp_path, seed=2), None) != run_identity(_cfg(tmp_path, seed=1), None)
