"""--print-alignment under translation_slt aligns every hypothesis a search finalized: fairseq's alignments where
each sentence has a beam's worth, and no IndexError where a constrained search finalized fewer."""
import argparse

import torch
from fairseq import utils
from fairseq.data import data_utils
from fairseq.sequence_generator import SequenceGeneratorWithAlignment
from fairseq.token_generation_constraints import pack_constraints


def _samples(task, sentences=8):
    return task.get_batch_iterator(dataset=task.dataset("test"), max_sentences=sentences,
                                   disable_iterator_cache=True).next_epoch_itr(shuffle=False)


def _pairs(alignment):
    return [(int(source), int(target)) for source, target in alignment]


def _alignments(results):
    return [[_pairs(h["alignment"]) for h in hypotheses] for hypotheses in results]


def test_full_beams_align_as_fairseqs_generator(slt_model):
    task, model = slt_model
    generator = task.build_generator([model], argparse.Namespace(beam=5, max_len_b=20, print_alignment="hard"))
    assert isinstance(generator, SequenceGeneratorWithAlignment) and "generate" in vars(generator)
    with torch.no_grad():
        for sample in _samples(task):
            ours = task.inference_step(generator, [model], sample)
            fairseqs = SequenceGeneratorWithAlignment.generate(generator, [model], sample)
            assert all(len(hypotheses) == 5 for hypotheses in ours)
            assert _alignments(ours) == _alignments(fairseqs)


def test_a_constrained_search_with_fewer_hypotheses_aligns_each_of_them(slt_model):
    task, model = slt_model
    generator = task.build_generator([model], argparse.Namespace(beam=5, max_len_b=20, print_alignment="hard",
                                                                 constraints="ordered"))
    words = [task.target_dictionary.index(w) for w in ("▁ein", "▁Mann", "▁Hund", "▁auf")]
    counts, raised = [], 0
    with torch.no_grad():
        for sample in _samples(task):
            if raised >= 2:  # (a constrained search is slow: enough batches seen)
                break
            rows = len(sample["id"])
            constraints = pack_constraints([[torch.tensor([words[i % len(words)]])] for i in range(rows)])
            try:  # fairseq's own generate reads a beam's worth of hypotheses for every sentence
                SequenceGeneratorWithAlignment.generate(generator, [model], sample, constraints=constraints)
            except IndexError:
                raised += 1
            results = task.inference_step(generator, [model], sample, constraints=constraints)
            for sentence, hypotheses in enumerate(results):
                counts.append(len(hypotheses))
                source = utils.strip_pad(sample["net_input"]["src_tokens"][sentence], task.source_dictionary.pad())
                tokens = data_utils.collate_tokens([h["tokens"] for h in hypotheses], task.target_dictionary.pad(),
                                                   task.target_dictionary.eos())
                for h, target in zip(hypotheses, tokens):  # each hypothesis with its own sentence's source
                    expected = utils.extract_hard_alignment(
                        h["attention"].transpose(1, 0), sample["net_input"]["src_tokens"][sentence], target,
                        task.target_dictionary.pad(), task.target_dictionary.eos())
                    assert _pairs(h["alignment"]) == _pairs(expected) != []
                    assert all(s < len(source) and t < len(h["tokens"]) for s, t in _pairs(h["alignment"]))
    assert min(counts) < 5 and raised > 0  # some sentences had fewer than a beam's hypotheses: fairseq failed there
