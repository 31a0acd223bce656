"""--sparse-inference: CSR linear layers give the dense model's translations."""
import argparse
import copy
import gzip
import inspect
import logging
import os
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from conftest import MULTI30K, SHORT_HYPOTHESES, USER_DIR, run_tool, train
from fairseq_slt import csr_kernel, native, sparse_inference, step_trial
from test_compact import _hypotheses


def _translate(task, models, subset="test", **generation):
    """Beam-5 token sequences (or as ``generation`` says) for every sentence of the subset, the way fairseq-generate
    batches them."""
    generator = task.build_generator(models, argparse.Namespace(**{"beam": 5, "max_len_b": 30, **generation}))
    batches = task.get_batch_iterator(dataset=task.dataset(subset), max_sentences=16).next_epoch_itr(shuffle=False)
    results = {}
    for sample in batches:
        for sentence, hypotheses in zip(sample["id"].tolist(), task.inference_step(generator, models, sample)):
            results[sentence] = hypotheses[0]["tokens"].tolist()
    return results


@pytest.fixture(scope="module")
def loaded(data_bin, slt_run):
    from fairseq import checkpoint_utils
    import fairseq_slt.tasks  # noqa: F401  (registers translation_slt; the package was imported before fairseq)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([slt_run["best"]], arg_overrides={"data": data_bin})
    task.load_dataset("test")
    for model in models:
        model.prepare_for_inference_(OmegaConf.create({"generation": {"beam": 5}}))  # as fairseq-generate does
    return task, models


@pytest.mark.parametrize("kernel", ["rows", "torch"])
def test_csr_layers_always_sparse_translate_like_the_dense_model(loaded, kernel, monkeypatch):
    task, models = loaded
    model = copy.deepcopy(models[0])
    ways, ran = [], set()
    sparse_product = sparse_inference.SparseLinear.sparse
    monkeypatch.setattr(sparse_inference.SparseLinear, "sparse", lambda self, x, way: ways.append(way.kernel)
                        or ran.add(id(self)) or sparse_product(self, x, way))
    with torch.no_grad():
        dense = _translate(task, models)
        plan = sparse_inference.Plan(always=True, blocks=csr_kernel.BLOCKS if kernel == "rows" else ())
        replaced = sparse_inference.sparsify(model, plan)
        sparse = _translate(task, [model])
    # every pruned linear layer: 6 in the encoder layer, 10 in the decoder layer, the output projection
    assert len(replaced) == 17 and "decoder.output_projection" in replaced
    assert plan.calls["sparse"] > 100 and plan.calls["dense"] == 0  # the CSR path really ran
    assert set(ways) == {kernel}  # and the way asked for
    # in every replaced layer: the encoder's self-attention too, which fairseq runs in torch's fused attention
    assert {name for name, module in model.named_modules() if id(module) in ran} == set(replaced)
    assert len(dense) >= 90 and sparse == dense


def _pruned(out, inputs, seed, bias=True):
    """A linear layer at about 90 % zeros, with a few outputs that keep no weight and one that keeps all."""
    torch.manual_seed(seed)
    linear = nn.Linear(inputs, out, bias=bias)
    with torch.no_grad():
        linear.weight[torch.rand(out, inputs) < 0.9] = 0
        linear.weight[:3] = 0
        linear.weight[-1] = torch.randn(inputs)
    return linear


def test_the_row_major_kernel_computes_linear_for_every_blocking_threads_and_shape():
    assert csr_kernel.load() is not None  # built here (the C++ compiler is part of the machine), not skipped
    for out, inputs, bias in ((64, 48, True), (40, 200, False), (130, 24, True)):
        layer = sparse_inference.SparseLinear(_pruned(out, inputs, seed=out), sparse_inference.Plan())
        assert layer.takes_kernel()
        for rows in (1, 5, 8, 9, 63, 64, 65, 200):
            x = torch.randn(rows, 2 * inputs)[:, ::2]  # not contiguous
            expected = layer.dense(x)
            for block in csr_kernel.BLOCKS:
                for threads in (1, 2):
                    way = sparse_inference.Way("rows", block, threads)
                    torch.testing.assert_close(layer.sparse(x, way), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # a 3-dimensional input (a decoding step's: 5 x 1) keeps its leading shape
        for x in (torch.randn(3, 7, inputs), torch.randn(5, 1, inputs), torch.randn(7, 3, inputs).transpose(0, 1)):
            for threads in (1, 2):
                torch.testing.assert_close(layer.sparse(x, sparse_inference.Way("rows", 8, threads)), layer.dense(x))


def test_the_kernel_is_built_once_into_the_cache_and_its_absence_leaves_torch_csr(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FAIRSEQ_SLT_CACHE", str(tmp_path))
    monkeypatch.setattr(csr_kernel, "_state", {})
    assert csr_kernel.load() is not None
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # whole, no partial file left
    stamp, run, commands = built[0].stat().st_mtime_ns, native.subprocess.run, []
    monkeypatch.setattr(native.subprocess, "run", lambda command, **kw: commands.append(command) or run(command, **kw))
    monkeypatch.setattr(csr_kernel, "_state", {})
    assert csr_kernel.load() is not None  # loaded again: the compiler asked its version, nothing compiled
    assert [command[1:] for command in commands] == [["--version"]] and built[0].stat().st_mtime_ns == stamp
    monkeypatch.undo()
    monkeypatch.setattr(csr_kernel, "_state", {})
    monkeypatch.setenv("FAIRSEQ_SLT_CACHE", str(tmp_path / "other"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-compiler"))  # no compiler: nothing built, torch CSR only
    with caplog.at_level("WARNING"):
        assert csr_kernel.load() is None
    assert "torch's CSR product only" in caplog.text and not (tmp_path / "other").exists()
    layer = sparse_inference.SparseLinear(_pruned(64, 48, seed=1), sparse_inference.Plan())
    assert not layer.takes_kernel()
    ways = sparse_inference.Plan().ways(layer, 64)
    assert ways and all(way.kernel == "torch" for way in ways)
    x = torch.randn(20, 48)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.dense(x), rtol=1e-5, atol=1e-5)


def test_sparse_linear_matches_dense_and_the_plan_times_each_size_once(monkeypatch):
    torch.manual_seed(0)
    linear = nn.Linear(256, 512)
    with torch.no_grad():
        linear.weight[torch.rand(512, 256) < 0.9] = 0
    model = nn.Sequential(linear, nn.ReLU(), nn.Linear(512, 8))  # the dense second layer stays nn.Linear
    plan = sparse_inference.Plan()
    assert sparse_inference.sparsify(model, plan) == ["0"] and type(model[2]) is nn.Linear
    layer = model[0]
    assert layer.weight is linear.weight and list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = torch.randn(3, 50, 256)
    ways = plan.ways(layer, 256)  # 150 rows: torch's in blocks of 64 (the last one partial) and in one product
    assert {(way.kernel, way.rows) for way in ways} == {("torch", 64), ("torch", 256)} | {
        ("rows", block) for block in csr_kernel.BLOCKS}
    with torch.no_grad():
        for way in ways:
            torch.testing.assert_close(layer.sparse(x, way), layer.dense(x), rtol=1e-5, atol=1e-5)
        for rows in (5, 7, 8, 100):
            model(torch.randn(rows, 256))
    buckets = sorted(key[3] for key in plan.decisions)
    assert buckets == [8, 128]  # 5, 7 and 8 rows share one timing
    timed, dense = [], sparse_inference.SparseLinear.dense
    monkeypatch.setattr(sparse_inference.SparseLinear, "dense", lambda self, x: timed.append(x.shape[0]) or dense(self, x))
    with torch.no_grad():
        layer(torch.randn(1500, 256))  # a bucket of 2048 rows is timed on SAMPLE_ROWS of them
    assert set(timed[:-1]) == {sparse_inference.SAMPLE_ROWS} and len(plan.decisions) == 3
    monkeypatch.undo()
    assert [way.rows for way in plan.ways(layer, 8) if way.kernel == "rows"] == [8] * len({1, torch.get_num_threads()})
    assert all(way.threads == torch.get_num_threads() for way in ways if way.kernel == "rows")  # > 16 rows: all
    for (*_, bucket, _threads), (way, _, _) in plan.decisions.items():  # dense, or the fastest way timed
        assert way is None or way in plan.ways(layer, bucket)
    used = []
    sparse = sparse_inference.SparseLinear.sparse
    monkeypatch.setattr(sparse_inference.SparseLinear, "sparse", lambda self, x, way: used.append(way) or sparse(self, x, way))
    key = next(k for k in plan.decisions if k[3] == 128)
    hundred = x.reshape(-1, 256)[:100]
    chosen = sparse_inference.Way("rows", 16, 1)
    for decision, runs in ((chosen, [chosen]), (None, [])):  # a call runs as its bucket's decision says
        plan.decisions[key] = (decision, 1.0, 0.5)
        used.clear()
        with torch.no_grad():
            torch.testing.assert_close(model(hundred), model[2](torch.relu(linear(hundred))), rtol=1e-5, atol=1e-5)
        assert used == runs
    with torch.enable_grad():  # training (gradients) always runs dense
        layer(torch.randn(2, 256, requires_grad=True)).sum().backward()
    assert linear.weight.grad is not None


class TwoSteps(nn.Module):
    """An encoder and a decoder, as fairseq's model: each a step the trial checks."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder, self.decoder = nn.Linear(256, 256), nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 64))
        with torch.no_grad():
            for layer in (self.encoder, self.decoder[0], self.decoder[1]):
                layer.weight[torch.rand_like(layer.weight) < 0.9] = 0

    def forward(self, x):
        return self.decoder(self.encoder(x))


@pytest.mark.parametrize("slower", ["sparse", "dense"])
def test_whole_steps_keep_the_layer_choices_only_where_they_are_faster(slower, monkeypatch):
    """The plan says sparse for every layer; a whole step decides. A kernel made 3 ms slower loses."""
    model = TwoSteps()
    plan = sparse_inference.Plan(always=True)
    trial = step_trial.StepTrial(plan, pairs=4, seconds=0, early_pairs=None)
    assert sorted(sparse_inference.sparsify(model, plan, trial=trial)) == ["decoder.0", "decoder.1", "encoder"]
    kernel = getattr(sparse_inference.SparseLinear, slower)
    monkeypatch.setattr(sparse_inference.SparseLinear, slower, lambda self, x, *way: (time.sleep(0.003), kernel(self, x, *way))[1])
    x = torch.randn(4, 256)
    with torch.no_grad():
        expected = torch.nn.functional.linear(torch.nn.functional.linear(torch.nn.functional.linear(
            x, model.encoder.weight, model.encoder.bias), model.decoder[0].weight, model.decoder[0].bias),
            model.decoder[1].weight, model.decoder[1].bias)
        outputs = [model(x) for _ in range(12)]
    for out in outputs:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    keep = slower == "dense"
    assert trial.choices == {("encoder", 4, torch.get_num_threads()): keep, ("decoder", 4, torch.get_num_threads()): keep}
    assert trial.calls == {"trial": 16, "plan": 8 if keep else 0, "dense": 0 if keep else 8}
    # 1 + 2 layers: 4 trial calls of each step with the plan, then 4 more of each when it is kept
    assert plan.calls["sparse"] == 3 * 4 + (3 * 4 if keep else 0)
    assert len(trial.summary()) == 2 and all(("kept" if keep else ": dense") in line for line in trial.summary())


class VirtualClock:
    """Time that passes only when a patched layer spends it: the trial sees exactly the costs a test sets, however
    loaded the machine is."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def costs(self, monkeypatch, sparse, dense):
        """SparseLinear's products still compute, and spend sparse(rows) / dense(rows) seconds of this clock."""
        kernels = sparse_inference.SparseLinear.sparse, sparse_inference.SparseLinear.dense
        monkeypatch.setattr(sparse_inference.SparseLinear, "sparse", lambda layer, x, way: (
            self._spend(sparse(x.shape[0])), kernels[0](layer, x, way))[1])
        monkeypatch.setattr(sparse_inference.SparseLinear, "dense", lambda layer, x: (
            self._spend(dense(x.shape[0])), kernels[1](layer, x))[1])

    def _spend(self, seconds: float) -> None:
        self.now += seconds


def test_one_slow_dense_step_does_not_make_a_slower_plan_win(monkeypatch):
    """The kernel is 2 ms slower on every call, and the first dense step stalls 100 ms (the machine's noise): the
    plan's steps take less time in sum, but not with each side's slowest step left out, and the module stays
    dense."""
    model, plan, clock = TwoSteps(), sparse_inference.Plan(always=True), VirtualClock()
    trial = step_trial.StepTrial(plan, pairs=4, clock=clock, seconds=0)
    sparse_inference.sparsify(model, plan, trial=trial)
    stalls = [0.1]
    clock.costs(monkeypatch, sparse=lambda rows: 0.003, dense=lambda rows: 0.001 + (stalls.pop() if stalls else 0))
    with torch.no_grad():
        for _ in range(8):
            model(torch.randn(4, 256))
    encoder = ("encoder", 4, torch.get_num_threads())
    plan_seconds, dense_seconds = (sum(t) for t in trial.trials[encoder])
    assert plan_seconds < 0.5 * dense_seconds  # the sum alone would keep the slower plan
    assert trial.choices == {encoder: False, ("decoder", 4, torch.get_num_threads()): False}
    assert "whole encoder calls, rows <= 4" in trial.summary()[1] and "the slowest of each left out" in trial.summary()[1]


def test_calls_of_two_sizes_in_one_bucket_keep_a_faster_plan(monkeypatch):
    """Batches of 5 and 8 rows alternate (as the encoder's batches differ in length), and every layer takes 1 ms
    a row dense and 0.77 ms with the plan: the plan is 1.3x faster on each call, though an 8-row call with it
    takes longer than the 5-row dense call beside it in half the pairs. It is kept."""
    model, plan, clock = TwoSteps(), sparse_inference.Plan(always=True), VirtualClock()
    trial = step_trial.StepTrial(plan, pairs=4, clock=clock, seconds=0)
    sparse_inference.sparsify(model, plan, trial=trial)
    clock.costs(monkeypatch, sparse=lambda rows: 0.00077 * rows, dense=lambda rows: 0.001 * rows)
    with torch.no_grad():
        for rows in [5, 8] * 4:
            model(torch.randn(rows, 256))
    paired = [plan_s < dense_s for plan_s, dense_s in zip(*trial.trials[("encoder", 8, torch.get_num_threads())])]
    assert paired.count(True) == 2  # pair by pair, the plan would lose half
    assert trial.choices == {("encoder", 8, torch.get_num_threads()): True,
                             ("decoder", 8, torch.get_num_threads()): True}


def test_steps_in_which_the_plan_timed_layers_are_not_counted(monkeypatch):
    """Each layer's first two calls time its ways (50 ms, left out of the step's time) and leave the step 6 ms
    slower (cold caches); the plan takes 1 ms a layer, dense 1.5 ms. Counting those steps would send both
    modules dense; without them the faster plan is kept."""
    model, plan, clock = TwoSteps(), sparse_inference.Plan(), VirtualClock()
    trial = step_trial.StepTrial(plan, pairs=4, clock=clock, seconds=0)
    sparse_inference.sparsify(model, plan, trial=trial)
    clock.costs(monkeypatch, sparse=lambda rows: 0.001, dense=lambda rows: 0.0015)
    timed = {}

    def decide(self, layer, rows):  # as Plan._decide, with the timing's cost set
        timed[layer] = timed.get(layer, 0) + 1
        if timed[layer] <= 2:
            self.calibration_seconds += 0.05
            clock.now += 0.05 + 0.006
        return self.ways(layer, sparse_inference.rows_bucket(rows))[0]

    monkeypatch.setattr(sparse_inference.Plan, "_decide", decide)
    with torch.no_grad():
        for _ in range(10):
            model(torch.randn(4, 256))
    threads = torch.get_num_threads()
    assert trial.choices == {("encoder", 4, threads): True, ("decoder", 4, threads): True}
    assert [len(t) for t in trial.trials[("encoder", 4, threads)]] == [4, 4]
    assert trial.trials[("decoder", 4, threads)][0] == pytest.approx([0.002] * 4)
    assert trial.calls["trial"] == 2 * 10


def test_short_steps_are_timed_until_each_mode_took_the_trial_seconds(monkeypatch):
    """A layer takes 1 ms with the plan and 2 ms dense; 4 pairs at the least, 19.5 ms of each mode: the encoder
    (one layer) is decided once 20 of its calls ran each way (40 calls in all, alternating), the decoder (two
    layers) once 10 did; with at most 6 pairs, after 6 pairs."""
    threads = torch.get_num_threads()
    for max_pairs, encoder_calls, encoder_counts, decoder_counts in ((64, 40, [20, 20], [10, 10]),
                                                                     (6, 12, [6, 6], [6, 6])):
        model, plan, clock = TwoSteps(), sparse_inference.Plan(always=True), VirtualClock()
        trial = step_trial.StepTrial(plan, pairs=4, clock=clock, seconds=0.0195, max_pairs=max_pairs,
                                      early_pairs=None)
        sparse_inference.sparsify(model, plan, trial=trial)
        clock.costs(monkeypatch, sparse=lambda rows: 0.001, dense=lambda rows: 0.002)
        calls = 0
        with torch.no_grad():
            while ("encoder", 4, threads) not in trial.choices and calls < 200:
                model(torch.randn(4, 256))
                calls += 1
        assert calls == encoder_calls
        assert trial.choices == {("encoder", 4, threads): True, ("decoder", 4, threads): True}
        assert [len(t) for t in trial.trials[("encoder", 4, threads)]] == encoder_counts
        assert [len(t) for t in trial.trials[("decoder", 4, threads)]] == decoder_counts
        assert f"over {min(encoder_counts)} calls each" in trial.summary()[1]


@pytest.mark.parametrize("plan_cost, pairs", [(0.00055, 3), (0.00065, 8)])
def test_a_plan_far_ahead_is_kept_after_three_pairs(monkeypatch, plan_cost, pairs):
    """Dense takes 1 ms a layer: a plan at 0.55 ms is kept after 3 pairs, one at 0.65 ms after the usual 8."""
    model, plan, clock = TwoSteps(), sparse_inference.Plan(always=True), VirtualClock()
    trial = step_trial.StepTrial(plan, pairs=8, clock=clock, seconds=0)
    sparse_inference.sparsify(model, plan, trial=trial)
    clock.costs(monkeypatch, sparse=lambda rows: plan_cost, dense=lambda rows: 0.001)
    with torch.no_grad():
        for _ in range(16):
            model(torch.randn(4, 256))
    threads = torch.get_num_threads()
    assert trial.choices == {("encoder", 4, threads): True, ("decoder", 4, threads): True}
    assert [len(t) for t in trial.trials[("encoder", 4, threads)]] == [pairs, pairs]
    assert trial.calls == {"trial": 4 * pairs, "plan": 2 * (16 - 2 * pairs), "dense": 0}


def test_both_modes_are_compared_on_as_many_calls(monkeypatch):
    """The plan takes 0.96 ms a call, dense 1 ms, margin 0.97, each mode timed for 20.5 ms: the plan is kept.
    Its 22nd call (a pair that starts with the plan) reaches 20.5 ms beside 21 dense calls; comparing those
    would send the module dense."""
    model, plan, clock = TwoSteps(), sparse_inference.Plan(always=True), VirtualClock()
    trial = step_trial.StepTrial(plan, pairs=4, clock=clock, seconds=0.0205, early_pairs=None)
    sparse_inference.sparsify(model, plan, trial=trial)
    clock.costs(monkeypatch, sparse=lambda rows: 0.00096, dense=lambda rows: 0.001)
    with torch.no_grad():
        for _ in range(64):
            model(torch.randn(4, 256))
    encoder = trial.trials[("encoder", 4, torch.get_num_threads())]
    assert len(encoder[0]) == len(encoder[1]) == 22  # 21 x 0.96 ms < 20.5 ms <= 22 x 0.96 ms
    assert trial.choices[("encoder", 4, torch.get_num_threads())] is True


def test_generate_with_sparse_inference_gives_the_dense_translations(data_bin, slt_run):
    # batches of 16: 6 of them run 31 decoding steps each in one rows bucket (80 rows), more than the step trial's
    # TRIAL_PAIRS_MAX pairs, so that it decides there however fast the steps are (at 32 a batch the tiny model's
    # 0.3 ms steps often had it decide nowhere)
    dense, _ = _hypotheses(data_bin, slt_run["best"], "--batch-size", 16)
    sparse, result = _hypotheses(data_bin, slt_run["best"], "--batch-size", 16, "--sparse-inference")
    assert sparse == dense
    assert "--sparse-inference: 17 linear layers" in result.stdout
    assert "--sparse-inference: whole decoder calls, rows <= " in result.stdout + result.stderr
    assert "linear-layer calls ran sparse" in result.stdout


def test_the_hub_interface_makes_each_model_sparse_once_and_translates_as_dense(data_bin, slt_run, caplog):
    """fairseq's hub interface (from_pretrained(..., sparse_inference=True), then translate) builds a generator per
    call: the model is made sparse, and its encoder and decoder wrapped for the step trial, on the first call only.
    Wrapped again on every call, each call ran through one more wrapper, and the 200th ended in a RecursionError."""
    from fairseq.models.transformer import TransformerModel
    import fairseq_slt.tasks  # noqa: F401  (registers translation_slt; the package was imported before fairseq)
    hubs = {mode: TransformerModel.from_pretrained(
        slt_run["dir"], checkpoint_file="checkpoint_best.pt", data_name_or_path=data_bin, user_dir=USER_DIR,
        bpe="sentencepiece", sentencepiece_model=os.path.join(os.path.dirname(data_bin), "spm.model"),
        **({"sparse_inference": True} if mode == "sparse" else {})).eval() for mode in ("dense", "sparse")}
    with gzip.open(os.path.join(MULTI30K, "val.en.gz"), "rt") as text:
        sentences = [next(text).strip() for _ in range(12)]
    dense = hubs["dense"].translate(sentences, beam=5, max_len_a=0, max_len_b=12)
    with caplog.at_level(logging.INFO, logger="fairseq_slt.tasks.translation_slt"):
        for _ in range(3):
            assert hubs["sparse"].translate(sentences, beam=5, max_len_a=0, max_len_b=12) == dense
    model = hubs["sparse"].models[0]
    assert isinstance(model.decoder.layers[0].fc1, sparse_inference.SparseLinear)
    for part in (model.encoder, model.decoder):  # the trial's wrapper calls the module's own forward
        wrapped = inspect.getclosurevars(part.forward).nonlocals["forward"]
        assert getattr(wrapped, "__self__", None) is part and wrapped.__func__ is type(part).forward
    assert sum("linear layers with at least" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("sparse", [False, True])
def test_two_threads_translate_through_one_hub_model_as_one_thread_does(data_bin, slt_run, sparse):
    """A threaded server on one hub model: one thread's batches of 20 sentences turn the beamable attention on (the
    decoder's beam size), the other's of 7 do not. The plugin set that and its other per-generation state on the
    shared modules, so the other thread ended in an IndexError (or translated wrongly); stock fairseq's task did not.
    Generations under the plugin's task now take turns."""
    from fairseq.models.transformer import TransformerModel
    import fairseq_slt.tasks  # noqa: F401
    hub = TransformerModel.from_pretrained(
        slt_run["dir"], checkpoint_file="checkpoint_best.pt", data_name_or_path=data_bin, user_dir=USER_DIR,
        bpe="sentencepiece", sentencepiece_model=os.path.join(os.path.dirname(data_bin), "spm.model"),
        **({"sparse_inference": True} if sparse else {})).eval()
    with gzip.open(os.path.join(MULTI30K, "val.en.gz"), "rt") as text:
        sentences = [next(text).strip() for _ in range(120)]
    work = {"wide": [sentences[i:i + 20] for i in range(0, 60, 20)],
            "narrow": [sentences[i:i + 7] for i in range(60, 116, 7)]}
    options = dict(beam=5, max_len_a=0, max_len_b=12)
    expected = {name: [hub.translate(batch, **options) for batch in batches] for name, batches in work.items()}
    outcomes = []

    def serve(name):
        try:
            for _ in range(6):
                outcomes.append(all(hub.translate(batch, **options) == out
                                    for batch, out in zip(work[name], expected[name])))
        except Exception as err:  # noqa: BLE001 (the failure under test)
            outcomes.append(repr(err))
    threads = [threading.Thread(target=serve, args=(name,)) for name in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == [True] * 12


def test_sampling_draws_the_dense_models_tokens_with_sparse_inference(loaded, monkeypatch):
    """--sampling --seed: the plan's timing inputs must not come from torch's global generator, which sampling
    draws from (they did: every sampled translation changed with --sparse-inference)."""
    task, models = loaded
    # the plan times every layer as it does, but keeps the sparse way however the timing came out: the tiny model's
    # 32-wide products timed 7 % slower sparse in one busy run, which sent every layer dense and nothing ran sparse
    monkeypatch.setattr(sparse_inference, "MARGIN", float("inf"))
    model, plan = copy.deepcopy(models[0]), sparse_inference.Plan()
    sparse_inference.sparsify(model, plan, trial=step_trial.StepTrial(plan))
    sampled = {}
    with torch.no_grad():
        for name, engine in (("dense", models), ("sparse", [model])):
            torch.manual_seed(3)  # as fairseq-generate --seed 3
            sampled[name] = _translate(task, engine, sampling=True, sampling_topk=10, beam=2)
            sampled[name + " next draw"] = torch.rand(4)
    assert plan.decisions and plan.calls["sparse"] > 0  # the plan timed layers and ran sparse products
    assert len(sampled["dense"]) >= 90 and sampled["sparse"] == sampled["dense"]
    assert torch.equal(sampled["sparse next draw"], sampled["dense next draw"])  # the same draws, no more


def test_generate_refuses_sparse_inference_of_a_float16_model_in_one_line(data_bin, slt_run):
    """fairseq-generate --fp16 halves the model: no CSR product on CPU takes float16, where the timing of the
    first sparse layer ended in a traceback from torch."""
    result = run_tool("fairseq-generate", data_bin, "--user-dir", USER_DIR, "--task", "translation_slt", "--path",
                      slt_run["best"], "--gen-subset", "test", "--beam", 5, "--cpu", "--fp16", "--sparse-inference",
                      *SHORT_HYPOTHESES.split(), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert [line for line in result.stderr.splitlines() if "error" in line.lower()] == [
        "fairseq-slt: error: --sparse-inference has no CSR product for float16 weights (drop --fp16 / --bf16: it runs "
        "float32 models)"]
    assert not [line for line in result.stdout.splitlines() if line.startswith("H-")]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_sparsify_takes_the_weights_a_csr_product_runs_and_leaves_the_others(dtype):
    torch.manual_seed(0)
    linear = nn.Linear(64, 64).to(dtype)
    with torch.no_grad():
        linear.weight[torch.rand(64, 64) < 0.9] = 0
    model, plan = nn.Sequential(linear), sparse_inference.Plan(always=True)
    taken = dtype in (torch.float32, torch.float64)
    assert sparse_inference.sparsify(model, plan) == (["0"] if taken else [])
    x = torch.randn(5, 64, dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(model(x), F.linear(x, linear.weight, linear.bias))
    assert plan.calls == {"sparse": int(taken), "dense": 0}


def test_generate_translates_every_test_sentence_where_fairseq_drops_the_last_batch(data_bin, dense_run):
    """100 test sentences at --batch-size 64: fairseq's own task leaves the last 4 out (a last batch that is not
    a multiple of --required-batch-size-multiple 8); under the plugin's task every sentence is translated."""
    for task, count in (("translation_slt", 100), ("translation", 96)):
        result = run_tool("fairseq-generate", data_bin, "--user-dir", USER_DIR, "--task", task, "--path",
                          dense_run["best"], "--gen-subset", "test", "--beam", 1, "--batch-size", 64,
                          *SHORT_HYPOTHESES.split())
        ids = sorted(int(line.split("\t")[0][2:]) for line in result.stdout.splitlines() if line.startswith("H-"))
        assert len(ids) == count and (count < 100 or ids == list(range(100))), task


def test_the_training_split_keeps_fairseqs_batches(data_bin, dense_run):
    """Batches of 3 (fewer than --required-batch-size-multiple 8): fairseq drops the last of every split; the
    plugin's task keeps it for the test split only, so a resumed run finds the training batches it left."""
    import fairseq.tasks  # noqa: F401 (before the plugin's, which registers its task there)
    import fairseq_slt.tasks  # noqa: F401
    from fairseq import checkpoint_utils

    _, _, task = checkpoint_utils.load_model_ensemble_and_task([dense_run["best"]], arg_overrides={"data": data_bin})
    covered = {}
    for split in ("train", "test"):
        task.load_dataset(split)
        batches = task.get_batch_iterator(dataset=task.dataset(split), max_sentences=3, required_batch_size_multiple=8,
                                          disable_iterator_cache=True).frozen_batches
        covered[split] = sorted(int(i) for batch in batches for i in batch)
    assert covered["test"] == list(range(100))
    assert len(covered["train"]) == len(task.dataset("train")) - 2  # 2000 = 666 x 3 + 2: fairseq's 666 batches


def test_the_last_batch_is_kept_from_indices_given_as_an_iterator():
    """fairseq's batch_by_size also takes a generator of indices, which its call uses up: the batches past it
    are found in the indices read before that call."""
    from fairseq_slt import fairseq_patches

    fairseq_patches.install()
    with fairseq_patches.keeping_last_batch(True):
        batches = fairseq_patches.batch_by_size_keeping_the_last(
            (i for i in range(13)), lambda i: 10, max_sentences=4, required_batch_size_multiple=4)
    assert [list(map(int, batch)) for batch in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12]]


def test_sparse_inference_is_refused_in_training(data_bin, tmp_path):
    result = train(data_bin, str(tmp_path / "run"), "--sparse-inference", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "fairseq-slt: error: --sparse-inference is an option of fairseq-generate and fairseq-interactive, not of training"]
    run = tmp_path / "run"
    assert not run.exists() or not list(run.iterdir())  # fairseq-train itself makes the (empty) save dir first
