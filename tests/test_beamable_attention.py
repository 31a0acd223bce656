"""Beam search under translation_slt attends to each sentence's encoder output once, reorders its cache through a
list of modules made once per batch, copies the encoder output only where sentences leave the batch, and
translates exactly as stock fairseq does; outside a beam search (training, scoring) the model is untouched."""
import argparse
import collections
import contextlib
import math

import pytest
import torch
from fairseq.models.transformer import TransformerEncoderBase
from fairseq.sequence_generator import EnsembleModel, SequenceGenerator
from fairseq.tasks.translation import TranslationTask
from torch.overrides import TorchFunctionMode

from fairseq_slt import vocab_passes
from fairseq_slt.beamable_attention import MIN_SENTENCES


@pytest.fixture(scope="module")
def loaded(data_bin, slt_run):
    from fairseq import checkpoint_utils
    import fairseq_slt.tasks  # noqa: F401  (registers translation_slt)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([slt_run["best"]], arg_overrides={"data": data_bin})
    task.load_dataset("test")
    return task, models[0].eval()


def _generate(task, model, step, **options):
    """Every hypothesis (tokens, score, alignment) of every test sentence, and the batch sizes that the first
    decoder layer's encoder attention projected keys for."""
    generator = task.build_generator([model], argparse.Namespace(**{"beam": 5, "max_len_b": 30, **options}))
    projected = []
    hook = model.decoder.layers[0].encoder_attn.k_proj.register_forward_hook(
        lambda module, inputs, output: projected.append(inputs[0].size(1)))
    batches = task.get_batch_iterator(dataset=task.dataset("test"), max_sentences=16).next_epoch_itr(shuffle=False)
    results, sentences = {}, []
    try:
        with torch.no_grad():
            for sample in batches:
                sentences.append(len(sample["id"]))
                for sentence, hypotheses in zip(sample["id"].tolist(), step(generator, [model], sample)):
                    results[sentence] = [(h["tokens"].tolist(), h["score"].item(), _pairs(h.get("alignment")))
                                         for h in hypotheses]
    finally:
        hook.remove()
    return results, projected, sentences


def _pairs(alignment):
    return None if alignment is None else [(int(source), int(target)) for source, target in alignment]


def _stock(task):
    return lambda generator, models, sample: TranslationTask.inference_step(task, generator, models, sample)


@pytest.mark.parametrize("alignment", [None, "hard"])
def test_beam_search_projects_encoder_keys_once_per_sentence_and_translates_as_stock_fairseq(loaded, alignment):
    task, model = loaded
    stock, stock_projected, sentences = _generate(task, model, _stock(task), print_alignment=alignment)
    ours, projected, _ = _generate(task, model, task.inference_step, print_alignment=alignment)
    assert stock_projected == [5 * n for n in sentences]  # fairseq: once per hypothesis
    # here: once per sentence, where a batch has enough sentences for it to pay; else as fairseq
    assert projected == [n if n >= MIN_SENTENCES else 5 * n for n in sentences]
    assert MIN_SENTENCES in sentences and min(sentences) < MIN_SENTENCES  # both kinds of batch
    assert len(ours) >= 90 and ours.keys() == stock.keys()
    assert all(bool(h[2]) == bool(alignment) for hypotheses in ours.values() for h in hypotheses)
    for sentence, hypotheses in stock.items():
        assert [h[0] for h in ours[sentence]] == [h[0] for h in hypotheses]  # all five, in order
        assert [h[1] for h in ours[sentence]] == pytest.approx([h[1] for h in hypotheses], abs=1e-5)
        if alignment:
            assert [h[2] for h in ours[sentence]] == [h[2] for h in hypotheses]  # (source, target) pairs


@pytest.mark.parametrize("sampling", [dict(sampling_topk=10), dict(sampling_topp=0.9)], ids=["top-k", "top-p"])
def test_sampling_keeps_fairseqs_attention_path_and_draws_its_tokens_exactly(loaded, sampling):
    """The beamable path's einsum differs from fairseq's scores in the last bits: enough to flip a sampled token,
    and every later draw of its batch with it (627 of 1000 top-p samples on the Multi30k model)."""
    task, model = loaded
    results = {}
    for name, step in (("stock", _stock(task)), ("ours", task.inference_step)):
        torch.manual_seed(3)
        results[name] = _generate(task, model, step, beam=3, nbest=3, sampling=True, **sampling)
    (stock, stock_projected, sentences), (ours, projected, _) = results["stock"], results["ours"]
    assert MIN_SENTENCES in sentences and projected == stock_projected == [3 * n for n in sentences]
    assert len(ours) >= 90 and ours == stock  # tokens and scores, bit for bit


def test_after_a_generation_training_and_scoring_see_the_model_unchanged(loaded):
    task, model = loaded
    sample = next(iter(task.get_batch_iterator(dataset=task.dataset("test"), max_sentences=10).next_epoch_itr(
        shuffle=False)))  # 10 sentences: two groups of a beam's size
    scorer = task.build_generator([model], argparse.Namespace(score_reference=True))
    with torch.no_grad():
        logits_before = model(**sample["net_input"])[0]
        scores_before = [h[0]["score"].item() for h in task.inference_step(scorer, [model], sample)]
        _generate(task, model, task.inference_step)
        logits_after = model(**sample["net_input"])[0]
        scores_after = [h[0]["score"].item() for h in task.inference_step(scorer, [model], sample)]
    assert torch.equal(logits_after, logits_before)
    assert scores_after == scores_before
    assert {m.beam_size for m in model.modules() if hasattr(m, "beam_size")} == {1}


def test_beam_search_lists_the_decoders_reordering_modules_once_per_batch_not_once_per_step(loaded):
    task, model = loaded
    walks, modules = [], model.decoder.modules
    model.decoder.modules = lambda: walks.append(1) or modules()  # counts fairseq's walks over the decoder
    try:
        _, _, stock_sentences = _generate(task, model, _stock(task))
        stock_walks = len(walks)
        walks.clear()
        _, _, sentences = _generate(task, model, task.inference_step)
    finally:
        del model.decoder.modules
    assert stock_walks > 10 * len(stock_sentences)  # fairseq: one walk per decoding step
    assert len(walks) == len(sentences)  # here: one per batch, the list made before its search
    assert "reorder_incremental_state_scripting" not in vars(model.decoder)  # fairseq's method again after it


@pytest.fixture
def ending_early(loaded, monkeypatch):
    """Every hypothesis ends once it is as long as its source (read from the encoder output's rows): the tiny
    model alone runs every sentence to the batch's length limit, so that none would leave a batch early."""
    task, model = loaded
    decoding = model.decoder.forward

    def ending(tokens, encoder_out, **kwargs):
        output = decoding(tokens, encoder_out=encoder_out, **kwargs)
        lengths = encoder_out["src_lengths"][0].view(-1)
        output[0][lengths <= tokens.size(1), -1, task.target_dictionary.eos()] = 1e4
        return output

    monkeypatch.setattr(model.decoder, "forward", ending)  # fairseq's generator calls decoder.forward itself


def _tokens(results):
    return {sentence: [h[0] for h in hypotheses] for sentence, hypotheses in results.items()}


def test_beam_search_copies_the_encoder_output_only_where_sentences_leave_the_batch(loaded, ending_early,
                                                                                    monkeypatch):
    task, model = loaded
    copies, copying = [], TransformerEncoderBase.reorder_encoder_out

    def counted(encoder, encoder_out, new_order):  # fairseq's copy, recording (rows held, rows ordered)
        copies.append((encoder_out["encoder_out"][0].size(1), new_order.numel()))
        return copying(encoder, encoder_out, new_order)

    monkeypatch.setattr(TransformerEncoderBase, "reorder_encoder_out", counted)
    stock, _, sentences = _generate(task, model, _stock(task))
    stock_copies = list(copies)
    copies.clear()
    ours, _, _ = _generate(task, model, task.inference_step)
    changed = [(held, ordered) for held, ordered in stock_copies if held != ordered]
    assert len(stock_copies) > 5 * len(sentences)  # fairseq: one copy per decoding step
    assert len(changed) > 2 * len(sentences)  # the copies before each batch's search, and sentences leaving
    assert copies == changed  # here: those copies alone, as fairseq makes them
    assert _tokens(ours) == _tokens(stock)
    assert {len(h[0][0]) for h in stock.values()} != {31}  # not all run to the length limit
    assert "reorder_encoder_out" not in vars(model.encoder)  # fairseq's method again after it


@pytest.mark.parametrize("search", [dict(beam=1), dict(beam=3, sampling=True, sampling_topk=10),
                                    dict(nbest=3, lenpen=0.6), dict(match_source_len=True)],
                         ids=["greedy", "sampling", "nbest-lenpen", "match-source-len"])
def test_other_searches_translate_as_stock_fairseq_with_sentences_leaving_early(loaded, ending_early, search):
    task, model = loaded
    torch.manual_seed(1)
    stock, _, _ = _generate(task, model, _stock(task), **search)
    torch.manual_seed(1)
    ours, _, _ = _generate(task, model, task.inference_step, **search)
    assert len(ours) >= 90 and _tokens(ours) == _tokens(stock)


def test_diverse_beam_search_indexes_each_sentence_by_its_place_in_the_batch(loaded):
    """fairseq's DiverseBeamSearch keeps each sentence's group overlap in a tensor of the batch's size, which its
    generator indexes by the dataset's ids: an IndexError from the first batch holding an id past its size (and,
    on the Multi30k model, 2 of 16 sentences translated otherwise where a batch's ids are a shuffle of its
    places). Under translation_slt the search indexes by the places, whatever the ids."""
    task, model = loaded
    search = dict(beam=4, diverse_beam_groups=2, diverse_beam_strength=0.5)
    with pytest.raises(IndexError):
        _generate(task, model, _stock(task), **search)
    ours, _, sentences = _generate(task, model, task.inference_step, **search)
    places, _, _ = _generate(task, model, lambda generator, models, sample: TranslationTask.inference_step(
        task, generator, models, {**sample, "id": torch.arange(len(sample["id"]))}), **search)
    reversed_ids, _, _ = _generate(task, model, lambda generator, models, sample: task.inference_step(
        generator, models, {**sample, "id": sample["id"].flip(0)}), **search)
    assert len(ours) >= 90 and len(sentences) > 1 and _tokens(ours) == _tokens(places) == _tokens(reversed_ids)
    assert any(len({tuple(tokens) for tokens, _, _ in hypotheses}) == 4 for hypotheses in ours.values())


class _Counting(TorchFunctionMode):
    """Counts the torch calls that make beam search's vocabulary-wide passes."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name == "ne" and len(args) == 2 and args[0] is args[1]:
            name = "ne(x, x)"  # fairseq's NaN test
        elif name == "topk" and args[0].size(-1) > 100:
            name = "topk(sums)"  # the search's candidates (not its pick among them)
        elif name == "log_softmax" and (kwargs or {}).get("out") is args[0]:
            name = "log_softmax over the logits"
        self.calls[name] += 1
        return func(*args, **(kwargs or {}))


def _with_nans(model, monkeypatch):
    """Log-probabilities with NaN and -inf entries (every 7th token of every 3rd hypothesis, and more), the same
    for every run."""
    normalized = model.get_normalized_probs

    def spoiled(net_output, log_probs, sample=None):
        lprobs = normalized(net_output, log_probs, sample)
        lprobs[::3, ..., 5::7] = math.nan
        lprobs[1::3, ..., 9::11] = -math.inf
        return lprobs

    monkeypatch.setattr(model, "get_normalized_probs", spoiled)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_beam_search_leaves_out_fairseqs_costly_vocabulary_passes_and_finds_the_same_bits(loaded, monkeypatch,
                                                                                          temperature):
    task, model = loaded
    _with_nans(model, monkeypatch)
    results, calls, built, build = {}, {}, [], task.build_generator
    monkeypatch.setattr(task, "build_generator", lambda *args, **kw: built.append(build(*args, **kw)) or built[-1])
    for passes in ("fairseq's", "ours"):
        with monkeypatch.context() as patches:
            if passes == "fairseq's":  # the plugin's inference step less vocab_passes alone
                patches.setattr(vocab_passes, "generating", lambda generator: contextlib.nullcontext())
            with _Counting() as counting:
                results[passes], _, sentences = _generate(task, model, task.inference_step, temperature=temperature,
                                                          max_len_b=12)
            calls[passes] = counting.calls
    steps = calls["fairseq's"]["ne(x, x)"]
    assert steps > 10 * len(sentences) and calls["fairseq's"]["topk(sums)"] == steps  # fairseq: one of each a step
    assert calls["ours"]["ne(x, x)"] == 0 and calls["ours"]["nan_to_num_"] == steps
    # the temperature's division of every logit at every step: left out at temperature 1 alone
    assert calls["fairseq's"]["div_"] - calls["ours"]["div_"] == (steps if temperature == 1 else 0)
    # torch.topk: the first step of each batch, the last (at the length limit every token but end-of-sentence is
    # -inf: the k best tie), and the rare step where two of the k + 1 best sums are equal; the kernel took the rest
    assert 2 * len(sentences) <= calls["ours"]["topk(sums)"] <= 2 * len(sentences) + steps // 20
    ours, stock = results["ours"], results["fairseq's"]
    assert len(ours) >= 90 and ours.keys() == stock.keys()
    for sentence, hypotheses in stock.items():
        assert [h[:2] for h in ours[sentence]] == [h[:2] for h in hypotheses]  # tokens and scores, exactly
    assert {len(h[0][0]) for h in stock.values()} == {13}  # every hypothesis ran to the length limit
    generator = built[-1]  # fairseq's methods again after the search
    assert "_generate" not in vars(generator) and "forward_decoder" not in vars(generator.model)
    assert "step" not in vars(generator.search)


def test_where_fairseqs_source_differs_or_no_kernel_is_built_beam_search_is_fairseqs(loaded, monkeypatch):
    task, model = loaded
    stock, _, _ = _generate(task, model, _stock(task), max_len_b=8)
    monkeypatch.setattr(vocab_passes, "_compiled", {})
    monkeypatch.setitem(vocab_passes.REWRITES, (SequenceGenerator, "_generate"), [("not in fairseq's source", "")])
    monkeypatch.setattr(vocab_passes, "_state", {"lib": None})
    with _Counting() as counting:
        ours, _, sentences = _generate(task, model, task.inference_step, max_len_b=8)
    assert vocab_passes.rewritten(SequenceGenerator, "_generate") is None
    assert vocab_passes.rewritten(EnsembleModel, "forward_decoder") is not None
    assert counting.calls["ne(x, x)"] == counting.calls["topk(sums)"] > 5 * len(sentences)  # fairseq's, every step
    assert counting.calls["div_"] < len(sentences) + 1  # the decoder step's rewrite still made (no division a step)
    assert _tokens(ours) == _tokens(stock)


def test_the_rewritten_methods_point_tracebacks_into_fairseqs_source():
    for cls, name in vocab_passes.REWRITES:
        original, rewritten = vars(cls)[name], vocab_passes.rewritten(cls, name)
        assert rewritten is not None  # fairseq's source still has each line replaced: the rewrite is made
        assert rewritten.__code__.co_filename == original.__code__.co_filename
        assert rewritten.__code__.co_firstlineno == original.__code__.co_firstlineno
        assert rewritten.__globals__ is original.__globals__ and rewritten.__qualname__ == original.__qualname__


def _bits(tensor):
    """Each entry's bits, every NaN as one."""
    return torch.where(tensor.isnan(), torch.tensor(math.nan), tensor).view(torch.int32)


def test_each_rewritten_line_leaves_the_bits_fairseqs_line_leaves():
    special = torch.tensor([math.nan, -math.nan, math.inf, -math.inf, -0.0, 0.0, 1e-45, -1e-45, -3.4e38, 3.4e38, -1.5,
                            torch.finfo().max, torch.finfo().min])
    for replacements in vocab_passes.REWRITES.values():
        for old, new in replacements:
            if new.endswith("("):  # the head of fairseq's call of get_normalized_probs: the next test's
                continue
            for temperature in (1, 1.0, 0.7):
                outcomes = []
                for line in (old, new):
                    scope = {"torch": torch, "math": math, "lprobs": special.repeat(4, 1), "temperature": temperature,
                             "decoder_out": (special.view(1, 1, -1).repeat(2, 3, 1),)}
                    statement = line.rstrip(",")
                    try:  # an expression (an element of fairseq's tuple), or else a statement
                        compile(statement, "<line>", "eval")
                        statement = f"result = {statement}"
                    except SyntaxError:
                        pass
                    exec(statement, scope)
                    outcomes.append([scope.get("result", scope["lprobs"]), scope["lprobs"], scope["decoder_out"][0]])
                for ours, fairseqs in zip(*outcomes):
                    assert torch.equal(_bits(ours), _bits(fairseqs)), (old, temperature)


def test_log_probabilities_written_over_the_logits_have_fairseqs_bits(loaded):
    from fairseq import utils

    task, model = loaded
    special = torch.tensor([math.nan, math.inf, -math.inf, -0.0, 0.0, 1e-45, -1e-45, -3.4e38, 3.4e38, -1.5,
                            torch.finfo().max, torch.finfo().min])
    rows = [special, special[3:], torch.randn(40) * 30, torch.full((12,), -math.inf), torch.full((12,), math.inf)]
    for row in rows:
        logits = row.view(1, 1, -1).repeat(3, 1, 1)
        fairseqs = utils.log_softmax(logits.clone(), dim=-1)
        ours = vocab_passes._over_the_logits(model, (logits, None), True)
        assert ours.data_ptr() == logits.data_ptr() and torch.equal(_bits(ours), _bits(fairseqs))
    doubles = torch.randn(2, 1, 7, dtype=torch.float64)  # not float32: the model's own, a new tensor
    ours = vocab_passes._over_the_logits(model, (doubles, None), True)
    assert ours.dtype == torch.float32 and torch.equal(ours, model.get_normalized_probs((doubles, None), True))
    assert vocab_passes._fairseqs_log_probs(model)
    model.get_normalized_probs = lambda *args, **kwargs: None  # a user's own, on the instance
    try:
        assert not vocab_passes._fairseqs_log_probs(model)
    finally:
        del model.get_normalized_probs


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_beam_search_writes_log_probabilities_over_the_logits_and_finds_fairseqs_bits(loaded, monkeypatch,
                                                                                     temperature):
    task, model = loaded
    results, calls = {}, {}
    for passes in ("fairseq's", "ours"):
        with monkeypatch.context() as patches:
            if passes == "fairseq's":
                patches.setattr(vocab_passes, "generating", lambda generator: contextlib.nullcontext())
            with _Counting() as counting:
                results[passes], _, _ = _generate(task, model, task.inference_step, temperature=temperature)
            calls[passes] = counting.calls
    steps = calls["fairseq's"]["log_softmax"]
    assert steps > 100 and calls["ours"]["log_softmax over the logits"] == steps and calls["ours"]["log_softmax"] == 0
    ours, stock = results["ours"], results["fairseq's"]
    assert len(ours) >= 90 and ours == stock  # tokens, scores and alignments, exactly
