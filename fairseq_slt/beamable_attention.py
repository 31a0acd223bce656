"""Beam search attends to each sentence's encoder output once, not once per hypothesis.

fairseq's SequenceGenerator copies the encoder output for each of a sentence's beam hypotheses. Models that
have ``set_beam_size`` (BART) are told the beam size, and their encoder-decoder attention then projects a
sentence's keys and values once and keeps them through the search (``MultiheadAttention``'s beamable path).
fairseq's transformer has no ``set_beam_size``, so at every step each decoder layer reorders
(``index_select``) the encoder keys and values of all hypotheses, which are copies of the same few: about a
tenth of a base-size model's decoding time at batch 64. ``generating`` turns the beamable path on for one
generation and off after it: outside beam search a batch's sentences are not beams of each other, and the
path would give every sentence the encoder output of the first of each group of ``beam`` sentences.
"""
import contextlib

from fairseq.models import FairseqIncrementalDecoder
from fairseq.sequence_generator import SequenceGenerator


def _decoders(generator, models):
    """The decoders that fairseq's generator leaves without the beam size: none unless it is a beam search."""
    if not isinstance(generator, SequenceGenerator) or generator.beam_size <= 1:
        return []
    return [model.decoder for model in models
            if not hasattr(model, "set_beam_size") and isinstance(getattr(model, "decoder", None),
                                                                  FairseqIncrementalDecoder)]


@contextlib.contextmanager
def generating(generator, models):
    """Within: the models' encoder-decoder attention is beamable for this generator's beam size."""
    decoders = _decoders(generator, models)
    for decoder in decoders:
        decoder.set_beam_size(generator.beam_size)
    try:
        yield
    finally:
        for decoder in decoders:
            decoder.set_beam_size(1)
