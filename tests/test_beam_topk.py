"""The top-k kernel of beam search's step (``beam_topk.cpp``): fairseq's ``BeamSearch.step`` exactly, bit for bit,
for every shape, thread count and kind of entry; where torch.topk's answer depends on how it breaks a tie, or a sum
is NaN, the kernel refuses and the step is fairseq's."""
import math

import pytest
import torch
from fairseq.search import BeamSearch

from fairseq_slt import vocab_passes


class _Dictionary:  # what BeamSearch reads of a target dictionary
    def pad(self):
        return 1

    def unk(self):
        return 3

    def eos(self):
        return 2

    def __len__(self):
        return 1000


def _case(sentences, beam, vocab, seed, step=3):
    generator = torch.Generator().manual_seed(seed)
    lprobs = torch.randn(sentences, beam, vocab, generator=generator).log_softmax(-1)
    lprobs[:, :, 1] = -math.inf  # fairseq's pad, never picked
    scores = torch.randn(sentences, beam, step, generator=generator) * 4
    return lprobs, scores


def _answered(lprobs, scores, step, threads=1):
    """What the kernel itself returns for this step: 0 where it answered."""
    sentences, beam, vocab = lprobs.shape
    k = min(2 * beam, beam * vocab - 1)
    values, flat = torch.empty(sentences, k), torch.empty(sentences, k, dtype=torch.int64)
    hypotheses = scores[:, :, step - 1].contiguous()
    return vocab_passes.load().beam_topk(lprobs.data_ptr(), hypotheses.data_ptr(), sentences, beam, vocab, k,
                                         values.data_ptr(), flat.data_ptr(), threads)


def _same(ours, stock):
    assert len(ours) == len(stock) == 3
    for a, b in zip(ours, stock):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.view(torch.int32) if a.is_floating_point() else a,
                           b.view(torch.int32) if b.is_floating_point() else b)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_kernel_finds_beam_searchs_candidates_bit_for_bit(threads):
    assert vocab_passes.load() is not None  # built here, not skipped
    search = BeamSearch(_Dictionary())
    torch.set_num_threads(threads)
    for seed, (sentences, beam, vocab) in enumerate([(1, 5, 4008), (64, 5, 4008), (3, 1, 17), (7, 4, 63),
                                                     (2, 6, 64), (5, 5, 65), (4, 32, 130), (2, 2, 5)]):
        lprobs, scores = _case(sentences, beam, vocab, seed)
        if beam >= 4:
            scores[0, -1, :] = -math.inf  # a hypothesis out of the search
        assert _answered(lprobs, scores, 3, threads) == 0, (sentences, beam, vocab)  # not fairseq's step
        _same(vocab_passes.beam_step(search, 3, lprobs, scores), search.step(3, lprobs, scores))


def test_ties_and_nans_are_left_to_torch_topk_and_give_its_answer():
    search = BeamSearch(_Dictionary())
    lprobs, scores = _case(4, 5, 300, seed=1)
    assert _answered(lprobs, scores, 3) == 0
    nan = lprobs.clone()
    nan[1, 3, 7] = math.nan
    alike, alike_scores = lprobs.clone(), scores.clone()
    alike[0], alike_scores[0] = -5.0, 0.0  # a sentence whose hypotheses are all alike: all its sums tie
    tenth = (lprobs + scores[:, :, 2:3]).view(4, -1).topk(10).indices[2, 9].item()
    row, column = divmod(tenth, 300)
    edge = lprobs.clone()
    worst = edge[2, row].argmin().item()
    edge[2, row, worst] = edge[2, row, column]  # the 11th best now equals the 10th (the same row: the same sum)
    for case, case_scores in ((nan, scores), (alike, alike_scores), (edge, scores)):
        assert _answered(case, case_scores, 3) != 0
        _same(vocab_passes.beam_step(search, 3, case, case_scores), search.step(3, case, case_scores))
    below = edge.clone()
    below[2, row, worst] = torch.nextafter(below[2, row, worst], torch.tensor(-math.inf))
    _same(vocab_passes.beam_step(search, 3, below, scores), search.step(3, below, scores))


def test_the_first_step_and_other_dtypes_are_fairseqs():
    search = BeamSearch(_Dictionary())
    lprobs, scores = _case(3, 5, 200, seed=2, step=1)
    _same(vocab_passes.beam_step(search, 0, lprobs, scores[:, :, :0]), search.step(0, lprobs, scores[:, :, :0]))
    lprobs, scores = lprobs.double(), scores.double()
    _same(vocab_passes.beam_step(search, 1, lprobs, scores), search.step(1, lprobs, scores))
