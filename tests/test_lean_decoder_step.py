"""Beam search under translation_slt takes each decoder layer's one-token steps the lean way, and its translations
(tokens, scores, per-token scores, attention) are fairseq's bit for bit; layers with features the lean step does
not have, and calls that are not one-token steps, run fairseq's forward."""
import argparse
import contextlib
import copy
import functools

import pytest
import torch
from fairseq.models.transformer import TransformerModel
from fairseq.tasks.translation import TranslationTask

from fairseq_slt import lean_decoder_step, sparse_inference


def _pre_norm_model(task):
    """Two pre-norm decoder layers of 4 heads with random weights (not the post-norm 1-layer test model)."""
    args = argparse.Namespace(arch="transformer", encoder_layers=1, decoder_layers=2, encoder_embed_dim=32,
                              decoder_embed_dim=32, encoder_ffn_embed_dim=64, decoder_ffn_embed_dim=64,
                              encoder_attention_heads=4, decoder_attention_heads=4, decoder_normalize_before=True,
                              encoder_normalize_before=True, share_all_embeddings=True, activation_fn="gelu")
    from fairseq.models.transformer import base_architecture
    base_architecture(args)
    torch.manual_seed(5)
    return TransformerModel.build_model(args, task).eval()


SENTENCES = 48  # the test set's first (shortest) 48 sentences: 12 batches of 4, 3 of 16


def _generate(task, model, lean: bool, monkeypatch, batch: int = 4, stock: bool = False, **options):
    """Every hypothesis of every test sentence: tokens, score, per-token scores and attention, as tensors.
    ``model``: one model or an ensemble's list; ``stock``: through fairseq's own task's inference_step."""
    if not lean:
        monkeypatch.setattr(lean_decoder_step, "generating", lambda models: contextlib.nullcontext())
    models = model if isinstance(model, list) else [model]
    step = functools.partial(TranslationTask.inference_step, task) if stock else task.inference_step
    generator = task.build_generator(models, argparse.Namespace(**{"beam": 5, "max_len_b": 20, **options}))
    batches = task.get_batch_iterator(dataset=task.dataset("test"), max_sentences=batch,
                                      disable_iterator_cache=True).next_epoch_itr(shuffle=False)
    results = {}
    try:
        with torch.no_grad():
            for sample in batches:
                if len(results) >= SENTENCES:
                    break
                for sentence, hypotheses in zip(sample["id"].tolist(), step(generator, models, sample)):
                    results[sentence] = [(h["tokens"], h["score"], h["positional_scores"], h["attention"],
                                          h.get("alignment")) for h in hypotheses]
    finally:
        monkeypatch.undo()
    return results


def _same(ours, fairseqs):
    assert len(ours) == SENTENCES and ours.keys() == fairseqs.keys()
    for sentence, hypotheses in fairseqs.items():
        assert len(ours[sentence]) == len(hypotheses)
        for mine, theirs in zip(ours[sentence], hypotheses):
            for a, b in zip(mine, theirs):  # tensors, and the alignment's list of pairs (or None)
                assert torch.equal(a, b) if torch.is_tensor(a) else a == b, sentence


NONE = {"lean": 0, "fairseq": 0, "lean decoder": 0, "fairseq decoder": 0}


def _counted(run):
    lean_decoder_step.counts.update(NONE)
    result = run()
    return result, dict(lean_decoder_step.counts)


@pytest.mark.parametrize("model_kind, options", [
    ("post-norm trained", dict(print_alignment="hard", nbest=3)), ("post-norm trained", dict(beam=1)),
    ("post-norm trained", dict(batch=16)), ("pre-norm gelu", dict()),
    ("pre-norm gelu", dict(batch=16, print_alignment="hard"))],
    ids=["alignment-nbest", "greedy", "beamable", "pre-norm", "pre-norm-beamable-alignment"])
def test_lean_steps_translate_bit_for_bit_as_fairseqs_forward(slt_model, monkeypatch, model_kind, options):
    """Batches of 4 sentences, and of 16 (the encoder attention's beamable path: its keys one a sentence, the
    scores by fairseq's einsum)."""
    task, model = slt_model
    if model_kind != "post-norm trained":
        model = _pre_norm_model(task)
        options = dict(options, min_len=12)  # random weights: else most hypotheses end within a few steps
    fairseqs, counted = _counted(lambda: _generate(task, model, False, monkeypatch, **options))
    assert counted == NONE  # fairseq's forward, not wrapped at all
    ours, counted = _counted(lambda: _generate(task, model, True, monkeypatch, **options))
    _same(ours, fairseqs)
    layers = len(model.decoder.layers)
    # the first step of each batch projects the encoder output (fairseq's forward); every later step is lean
    batches = -(-len(ours) // options.get("batch", 4))
    assert counted["fairseq"] == layers * batches and counted["lean"] > 10 * counted["fairseq"]
    # the decoder's own part of every step (embeddings, final norm) too, the first step's included
    assert counted["lean decoder"] == (counted["lean"] + counted["fairseq"]) // layers
    assert counted["fairseq decoder"] == 0
    assert all("forward" not in vars(layer) for layer in model.decoder.layers)  # fairseq's forward again after


def test_with_sparse_inference_the_steps_are_lean_and_translate_as_fairseqs_forward(slt_model, monkeypatch):
    task, model = slt_model
    sparse, plan = copy.deepcopy(model), sparse_inference.Plan(always=True)
    sparse_inference.sparsify(sparse, plan)  # no step trial: its alternating dense steps differ in the last bits
    assert not any(m.training for m in sparse.modules())  # the CSR layers are in eval mode, as the model
    fairseqs = _generate(task, sparse, False, monkeypatch)
    ours, counted = _counted(lambda: _generate(task, sparse, True, monkeypatch))
    _same(ours, fairseqs)
    assert counted["lean"] > 10 * counted["fairseq"] > 0 and plan.calls["sparse"] > 0


def test_an_ensemble_translates_bit_for_bit_as_fairseqs_own_task(slt_model, monkeypatch):
    """fairseq-generate --path A.pt:B.pt under the plugin's task: each model of the ensemble takes lean steps and
    its log-probabilities written over its own logits, and fairseq averages them: the hypotheses, scores and
    alignments of fairseq's translation task, bit for bit."""
    task, model = slt_model
    other = copy.deepcopy(model)
    with torch.no_grad():  # a second model that disagrees with the first
        noise = torch.Generator().manual_seed(3)
        for parameter in other.parameters():
            parameter.mul_(1 + 0.5 * torch.randn(parameter.shape, generator=noise))
    options = dict(print_alignment="hard", nbest=2)
    fairseqs, counted = _counted(lambda: _generate(task, [model, other], True, monkeypatch, stock=True, **options))
    assert counted == NONE
    ours, counted = _counted(lambda: _generate(task, [model, other], True, monkeypatch, **options))
    _same(ours, fairseqs)
    layers, batches = len(model.decoder.layers), -(-SENTENCES // 4)
    assert counted["fairseq"] == 2 * layers * batches and counted["lean"] > 10 * counted["fairseq"]  # both models
    alone = _generate(task, model, True, monkeypatch, **options)  # the second model counts
    assert sum(not torch.equal(alone[n][0][1], ours[n][0][1]) for n in ours) > SENTENCES // 2


@pytest.mark.parametrize("feature", ["hook", "dropout at inference", "training mode"])
def test_layers_with_features_the_lean_step_lacks_keep_fairseqs_forward(slt_model, monkeypatch, feature):
    task, model = slt_model
    model = copy.deepcopy(model)
    layer = model.decoder.layers[0]
    if feature == "hook":
        layer.fc1.register_forward_hook(lambda module, inputs, output: output)
    elif feature == "dropout at inference":
        layer.dropout_module.apply_during_inference = True
        layer.dropout_module.p = 0.0  # retained but of no effect, so that the translations can be compared
    else:
        layer.final_layer_norm.train()
    fairseqs = _generate(task, model, False, monkeypatch, batch=16)
    ours, counted = _counted(lambda: _generate(task, model, True, monkeypatch, batch=16))
    assert counted == NONE  # neither the layer nor the decoder (whose layers must all be lean) wrapped
    _same(ours, fairseqs)


def test_scoring_runs_fairseqs_forward(slt_model):
    """fairseq-generate --score-reference runs whole sentences: no one-token steps."""
    task, model = slt_model
    sample = next(iter(task.get_batch_iterator(dataset=task.dataset("test"), max_sentences=8,
                                               disable_iterator_cache=True).next_epoch_itr(shuffle=False)))
    scorer = task.build_generator([model], argparse.Namespace(score_reference=True))
    with torch.no_grad():
        (scores, counted) = _counted(lambda: [h[0]["score"] for h in task.inference_step(scorer, [model], sample)])
    assert counted == dict(NONE, fairseq=len(model.decoder.layers), **{"fairseq decoder": 1})
