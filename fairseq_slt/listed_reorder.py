"""Beam search reorders the decoder's cached keys and values without walking all its modules at every step.

After each step fairseq's SequenceGenerator calls ``reorder_incremental_state_scripting`` on the decoder, which
walks ``self.modules()`` and calls ``reorder_incremental_state`` on every module that has one (the attention
layers, and the decoder itself). The modules do not change during a generation, so ``generating`` lists them
once and puts a method that calls just those on the decoder instance, removed after. The demo-size model (2+2
layers, 128 dims) translated 1.07x faster with the list at batch 1 (beam 5, one thread, 40 sentences, 5 rounds),
and level at batch 64, where the products dominate.
"""
import contextlib
import types

from fairseq.models import FairseqIncrementalDecoder


def _listed(modules):
    def reorder_incremental_state_scripting(self, incremental_state, new_order):
        for module in modules:  # fairseq's loop, over the list instead of a walk
            result = module.reorder_incremental_state(incremental_state, new_order)
            if result is not None:
                incremental_state = result
    return reorder_incremental_state_scripting


@contextlib.contextmanager
def generating(models):
    """Within: each model's incremental decoder reorders through a list of its modules made here."""
    decoders = [model.decoder for model in models
                if isinstance(getattr(model, "decoder", None), FairseqIncrementalDecoder)
                and "reorder_incremental_state_scripting" not in vars(model.decoder)]
    for decoder in decoders:
        modules = [m for m in decoder.modules() if hasattr(m, "reorder_incremental_state")]
        decoder.reorder_incremental_state_scripting = types.MethodType(_listed(modules), decoder)
    try:
        yield
    finally:
        for decoder in decoders:
            del decoder.reorder_incremental_state_scripting
