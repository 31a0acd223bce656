"""Beam search's passes over the whole vocabulary, without the ones that cost more than their work.

At every step fairseq's SequenceGenerator makes several passes over the step's scores, hypotheses x vocabulary
(320 x 4008 for the demo-size model at batch 64). Two of them cost more than their work:
- ``lprobs[lprobs != lprobs] = torch.tensor(-math.inf).to(lprobs)`` (NaN to -inf) compares every entry into a
  mask and then assigns through it: 650 us at batch 64 on two threads here (1,300 us on one), where
  ``torch.nan_to_num_(lprobs, nan=-inf, posinf=inf, neginf=-inf)`` leaves the same bits in 40 us;
- ``decoder_out[0][:, -1:, :].div_(temperature)`` divides every logit even at temperature 1 (x / 1.0 is x).
And ``model.get_normalized_probs`` writes the log-probabilities into a new hypotheses x vocabulary tensor at
every step: a fresh 5 MB at batch 64, whose pages the process often faults in anew (fairseq's log_softmax took
740-1430 us a step at 320 x 4008 on one thread in a run, 540-575 us written over the logits, the same bits).
Where it is fairseq's own (the model's and its decoder's methods not overridden, no adaptive softmax), they are
written over the logits, which nothing reads after (fairseq already divides them in place by the temperature):
1.04x dense and 1.06-1.08x --sparse-inference at batch 64, 1.00-1.01x at batch 1, on the demo-size model
(benchmarks/vocab_passes.py --without logits).
``generating`` gives one generation fairseq's own ``SequenceGenerator._generate`` and
``EnsembleModel.forward_decoder``, compiled from fairseq's source with just those lines replaced (each found
exactly once, or the method stays fairseq's), on the instances, removed after. They keep fairseq's file name
and line numbers, so a traceback points into fairseq's source.

A third pass is fairseq's ``BeamSearch.step``: it adds each hypothesis's score to its row (a new hypotheses x
vocabulary tensor) and takes ``torch.topk`` of each sentence's sums. ``beam_topk.cpp`` finds the same k best
without either: 100 us a step in place of 265 on two threads (200 in place of 460 on one), on the steps of the
demo-size model at batch 64. Where two of the k + 1 best sums are equal (which of them torch.topk returns first
is its own choice), or a sum is NaN, or the kernel cannot be built here, the step is fairseq's.

With all three the demo-size model translated 1.11-1.13x faster dense and 1.17-1.18x faster with
--sparse-inference at batch 64, 1.02x and 1.06x at batch 1, with the same hypotheses (one and two threads;
benchmarks/vocab_passes.py); the base-size model, whose products dominate, within the noise.
"""
import contextlib
import ctypes
import functools
import inspect
import textwrap
import types
from pathlib import Path
from typing import Callable, Optional

import torch
from fairseq.models import BaseFairseqModel, FairseqDecoder
from fairseq.models.transformer import TransformerModelBase
from fairseq.search import BeamSearch
from fairseq.sequence_generator import EnsembleModel, SequenceGenerator

from . import native

SOURCE = Path(__file__).with_name("beam_topk.cpp")

REWRITES = {
    (SequenceGenerator, "_generate"): [
        ("lprobs[lprobs != lprobs] = torch.tensor(-math.inf).to(lprobs)",
         "torch.nan_to_num_(lprobs, nan=-math.inf, posinf=math.inf, neginf=-math.inf)")],
    (EnsembleModel, "forward_decoder"): [
        ("decoder_out[0][:, -1:, :].div_(temperature),",
         "decoder_out[0][:, -1:, :] if temperature == 1 else decoder_out[0][:, -1:, :].div_(temperature),"),
        ("probs = model.get_normalized_probs(", "probs = self.slt_log_probs[i](")],
}
_compiled = {}
_state = {}  # "lib": the top-k kernel's library or None, once load() has run


def rewritten(cls, name: str) -> Optional[Callable]:
    """``cls.name`` compiled from fairseq's source with REWRITES made, or None where its source is not there
    or differs from what they replace."""
    if (cls, name) not in _compiled:
        _compiled[cls, name] = _compile(vars(cls)[name], REWRITES[cls, name])
    return _compiled[cls, name]


def _compile(function, replacements) -> Optional[Callable]:
    try:
        lines, first = inspect.getsourcelines(function)
        filename = inspect.getsourcefile(function)
    except (OSError, TypeError):
        return None
    source = textwrap.dedent("".join(lines))
    for old, new in replacements:
        if source.count(old) != 1:
            return None
        source = source.replace(old, new)
    made = {}  # the def lands here, not in fairseq's module, whose globals it keeps (live, as the original's)
    exec(compile("\n" * (first - 1) + source, filename or "<fairseq>", "exec"), function.__globals__, made)
    result = made[function.__name__]
    result.__qualname__ = function.__qualname__
    return result


def _declare(lib: ctypes.CDLL) -> None:
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    lib.beam_topk.argtypes = [pointer, pointer, size, size, size, size, pointer, pointer, ctypes.c_int]
    lib.beam_topk.restype = ctypes.c_int


def load() -> Optional[ctypes.CDLL]:
    """The top-k kernel's library (built on first use), or None where it cannot be built here."""
    if "lib" not in _state:
        _state["lib"] = native.load(SOURCE, _declare, "beam search takes torch.topk: no top-k kernel")
    return _state["lib"]


def beam_step(self, step, lprobs, scores, prev_output_tokens=None, original_batch_idxs=None,
              candidate_multiple=2):
    """``BeamSearch.step``, the k best by the kernel where they are one exact answer (else by fairseq's step)."""
    sentences, beam, vocab = lprobs.size()
    lib = load() if step > 0 else None  # the first step takes each sentence's first hypothesis alone
    if lib is not None and lprobs.dtype == scores.dtype == torch.float32 and lprobs.device.type == "cpu" \
            and lprobs.is_contiguous():
        k = min(candidate_multiple * beam, beam * vocab - 1)
        hypotheses = scores[:, :, step - 1].contiguous()
        values, flat = torch.empty(sentences, k), torch.empty(sentences, k, dtype=torch.int64)
        if not lib.beam_topk(lprobs.data_ptr(), hypotheses.data_ptr(), sentences, beam, vocab, k, values.data_ptr(),
                             flat.data_ptr(), torch.get_num_threads()):
            return values, flat.fmod(vocab), torch.div(flat, vocab, rounding_mode="trunc")  # as fairseq's
    return BeamSearch.step(self, step, lprobs, scores, prev_output_tokens, original_batch_idxs, candidate_multiple)


def _over_the_logits(model, net_output, log_probs, sample=None):
    """fairseq's log-probabilities (its ``utils.log_softmax``: float32 logits in, float32 out), written over the
    logits; anything else as the model gives it."""
    logits = net_output[0]
    if log_probs and logits.dtype == torch.float32 and logits.is_contiguous():
        return torch.log_softmax(logits, -1, out=logits)
    return model.get_normalized_probs(net_output, log_probs, sample)


def _fairseqs_log_probs(model) -> bool:
    """Whether the model's log-probabilities are fairseq's log_softmax of its decoder's logits: its and its
    decoder's methods fairseq's own (not overridden by a class or on the instance), no adaptive softmax."""
    decoder = getattr(model, "decoder", None)
    names = ("get_normalized_probs", "get_normalized_probs_scriptable")
    return (isinstance(model, BaseFairseqModel) and isinstance(decoder, FairseqDecoder)
            and getattr(type(model), names[0]) in (BaseFairseqModel.get_normalized_probs,
                                                   TransformerModelBase.get_normalized_probs)
            and getattr(type(model), names[1]) is BaseFairseqModel.get_normalized_probs_scriptable
            and all(getattr(type(decoder), name) is getattr(FairseqDecoder, name) for name in names)
            and not any(name in vars(module) for name in names for module in (model, decoder))
            and getattr(decoder, "adaptive_softmax", None) is None and not getattr(decoder, "onnx_trace", False))


def _targets(generator):
    """(instance, method name, rewritten function) for this generator: fairseq's own methods only (a subclass's
    override stays as it is)."""
    if not isinstance(generator, SequenceGenerator):
        return []
    pairs = [(generator, SequenceGenerator, "_generate")]
    if isinstance(getattr(generator, "model", None), EnsembleModel):
        pairs.append((generator.model, EnsembleModel, "forward_decoder"))
    found = []
    for instance, cls, name in pairs:
        if getattr(type(instance), name) is vars(cls)[name] and name not in vars(instance):
            function = rewritten(cls, name)
            if function is not None:
                found.append((instance, name, function))
    search = getattr(generator, "search", None)
    if type(search) is BeamSearch and "step" not in vars(search):  # not a subclass: its step may differ
        found.append((search, "step", beam_step))
    return found


@contextlib.contextmanager
def generating(generator):
    """Within: this SequenceGenerator's generation loop, its ensemble's decoder step and its beam search's step
    as fairseq's, less the passes above."""
    targets = _targets(generator)
    ensemble = next((instance for instance, name, _ in targets if name == "forward_decoder"), None)
    if ensemble is not None:  # the rewritten decoder step's log-probabilities, model by model
        ensemble.slt_log_probs = [functools.partial(_over_the_logits, model) if _fairseqs_log_probs(model)
                                  else model.get_normalized_probs for model in ensemble.models]
    for instance, name, function in targets:
        setattr(instance, name, types.MethodType(function, instance))
    try:
        yield
    finally:
        for instance, name, _ in targets:
            delattr(instance, name)
        if ensemble is not None:
            del ensemble.slt_log_probs
