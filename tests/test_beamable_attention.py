"""Beam search under translation_slt attends to each sentence's encoder output once, reorders its cache through a
list of modules made once per batch, copies the encoder output only where sentences leave the batch, and
translates exactly as stock fairseq does; outside a beam search (training, scoring) the model is untouched."""
import argparse

import pytest
import torch
from fairseq.models.transformer import TransformerEncoderBase
from fairseq.tasks.translation import TranslationTask

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
