"""Beam search attends to each sentence's encoder output once, not once per hypothesis.

fairseq's SequenceGenerator copies the encoder output for each of a sentence's beam hypotheses. Models that
have ``set_beam_size`` (BART) are told the beam size, and their encoder-decoder attention then projects a
sentence's keys and values once and keeps them through the search (``MultiheadAttention``'s beamable path).
fairseq's transformer has no ``set_beam_size``, so at every step each decoder layer reorders
(``index_select``) the encoder keys and values of all hypotheses, which are copies of the same few: about a
sixth of a base-size model's decoding time at batch 64. ``generating`` turns the beamable path on for one
generation and off after it: outside beam search a batch's sentences are not beams of each other, and the
path would give every sentence the encoder output of the first of each group of ``beam`` sentences.
Small batches keep fairseq's path: there the copies cost less than the beamable path's extra work per
attention call (an einsum in place of a bmm). Sampling keeps it too: the einsum's scores differ from fairseq's in
the last bits (within 1e-6), which is enough to flip a sampled token now and then, and with it every later draw of
its batch (627 of Multi30k's 1000 top-p samples of the demo-size model differed from fairseq's at the same --seed);
fairseq's path samples fairseq's tokens exactly. On 1 thread, the beamable path's speed over fairseq's was
0.88-0.94x for the demo-size model at 1-8 sentences, 1.01x at 16 and 1.09x at 64. For the base-size model
it was 0.98-0.99x at 1-4, 1.07x at 16 and 1.19x at 64.
"""
import contextlib

from fairseq.models import FairseqIncrementalDecoder
from fairseq.search import Sampling
from fairseq.sequence_generator import SequenceGenerator

MIN_SENTENCES = 16  # batches with fewer sentences keep fairseq's path


def _decoders(generator, models, sample):
    """The decoders that fairseq's generator leaves without the beam size: none unless it is a beam search
    (not sampling) over at least MIN_SENTENCES sentences."""
    if not isinstance(generator, SequenceGenerator) or generator.beam_size <= 1 or \
            isinstance(generator.search, Sampling):
        return []
    if sample["net_input"]["src_tokens"].size(0) < MIN_SENTENCES:
        return []
    return [model.decoder for model in models
            if not hasattr(model, "set_beam_size") and isinstance(getattr(model, "decoder", None),
                                                                  FairseqIncrementalDecoder)]


@contextlib.contextmanager
def generating(generator, models, sample):
    """Within: the models' encoder-decoder attention is beamable for this generator's beam size (for a
    batch of at least MIN_SENTENCES sentences)."""
    decoders = _decoders(generator, models, sample)
    for decoder in decoders:
        decoder.set_beam_size(generator.beam_size)
    try:
        yield
    finally:
        for decoder in decoders:
            decoder.set_beam_size(1)
