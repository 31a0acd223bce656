"""Alignments (``--print-alignment``) for every hypothesis a search finalized, however many a sentence has.

fairseq's ``SequenceGeneratorWithAlignment.generate`` takes each sentence to have exactly ``beam`` finalized
hypotheses: it repeats each source ``beam`` times and reads hypothesis ``i % beam`` of sentence ``i // beam``.
A lexically constrained search (``fairseq-interactive --constraints``) can finalize fewer (3 of 5 for a
Multi30k sentence with the constraint "ein"), and the run ends in an IndexError. ``aligning`` gives such a
generator a ``generate`` that pairs each finalized hypothesis with its own sentence: with ``beam`` hypotheses
everywhere it computes what fairseq's does (the same sources, the same collated tokens, the same attention),
and elsewhere it aligns the hypotheses there are.
"""
import torch
from fairseq.data import data_utils
from fairseq.sequence_generator import SequenceGeneratorWithAlignment


def _generate(generator):
    @torch.no_grad()
    def generate(models, sample, **kwargs):
        finalized = generator._generate(sample, **kwargs)  # vocab_passes' within inference_step, or fairseq's
        pairs = [(sentence, hypothesis) for sentence, hypotheses in enumerate(finalized)
                 for hypothesis in hypotheses]
        if not pairs:
            return finalized
        rows = torch.tensor([sentence for sentence, _ in pairs], device=sample["net_input"]["src_tokens"].device)
        src_tokens = sample["net_input"]["src_tokens"].index_select(0, rows)
        src_lengths = sample["net_input"]["src_lengths"].index_select(0, rows)
        tokens = [hypothesis["tokens"] for _, hypothesis in pairs]
        prev_output_tokens = data_utils.collate_tokens(tokens, generator.pad, generator.eos,
                                                       generator.left_pad_target, move_eos_to_beginning=True)
        tgt_tokens = data_utils.collate_tokens(tokens, generator.pad, generator.eos, generator.left_pad_target,
                                               move_eos_to_beginning=False)
        if any(getattr(m, "full_context_alignment", False) for m in generator.model.models):
            attn = generator.model.forward_align(src_tokens, src_lengths, prev_output_tokens)
        else:
            attn = [hypothesis["attention"].transpose(1, 0) for _, hypothesis in pairs]
        src_tokens, tgt_tokens, attn = src_tokens.cpu(), tgt_tokens.cpu(), [a.cpu() for a in attn]
        for i, (_, hypothesis) in enumerate(pairs):
            hypothesis["alignment"] = generator.extract_alignment(attn[i], src_tokens[i], tgt_tokens[i],
                                                                  generator.pad, generator.eos)
        return finalized

    return generate


def aligning(generator):
    """The generator, given a ``generate`` that aligns each sentence's own hypotheses where it is fairseq's
    ``SequenceGeneratorWithAlignment`` (its method not overridden); any other generator as it is."""
    if isinstance(generator, SequenceGeneratorWithAlignment) and \
            type(generator).generate is SequenceGeneratorWithAlignment.generate and "generate" not in vars(generator):
        generator.generate = _generate(generator)
    return generator
