"""What fairseq_slt/vocab_passes.py (or lean_decoder_step.py) saves: beam search with and without it, in one
process, side by side.

Under --task translation_slt beam search leaves out fairseq's costliest passes over the step's scores
(hypotheses x vocabulary): its NaN test, the division by a temperature of 1, and BeamSearch.step's new tensor of
sums and torch.topk over it (a C++ kernel finds the same k best). For each checkpoint, thread count and batch
size this translates the same sentences as benchmarks/serving.py does (beam 5, natural lengths, batches of
similar source lengths), fairseq dense and --sparse-inference (the layer plan and its whole-step trial made
once, before timing), each with the plugin's inference step as it is ("with") and with vocab_passes alone left
out ("without"), the four alternating in --repeats rounds, the order swapped each round. It prints the medians,
each one's speedup from the change (the median of the rounds' ratios), the sparse-over-dense ratio without and
with it, and whether the hypotheses differ (they must not). ``--without logits``: "without" leaves out one part
alone, the log-probabilities written over the logits (a new tensor at every step, as fairseq makes); ``--without
lean``: "without" leaves out lean_decoder_step instead (every step through fairseq's decoder and layer forwards).
Usage: python benchmarks/vocab_passes.py --data DATA_BIN CKPT [CKPT ...] [--labels ...] [--without all|logits|lean]
"""
import argparse
import contextlib
import copy
import logging
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import add_model_arguments, fairseq_translate, load_fairseq, model_labels  # noqa: E402


def translate(task, model, sources, batch_size: int, passes: bool, without: str = "all"):
    from fairseq_slt import lean_decoder_step, vocab_passes

    generating, fairseqs_log_probs = vocab_passes.generating, vocab_passes._fairseqs_log_probs
    leaning = lean_decoder_step.generating
    if not passes and without == "lean":
        lean_decoder_step.generating = lambda models: contextlib.nullcontext()
    if not passes and without == "all":
        vocab_passes.generating = lambda generator: contextlib.nullcontext()
    if not passes and without == "logits":  # every model's log-probabilities its own: a new tensor
        vocab_passes._fairseqs_log_probs = lambda model: False
    try:
        started = time.perf_counter()
        output = fairseq_translate(task, model, sources, batch_size, 0)
        return time.perf_counter() - started, output
    finally:
        vocab_passes.generating, vocab_passes._fairseqs_log_probs = generating, fairseqs_log_probs
        lean_decoder_step.generating = leaning


def main():
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, sentences=256, sentences_batch1=60, repeats=5,
                        repeats_help="rounds (medians kept)")
    parser.add_argument("--without", choices=("all", "logits", "lean"), default="all",
                        help="what 'without' leaves out: vocab_passes (all), the log-probabilities written over "
                             "the logits alone, or lean_decoder_step (lean)")
    args = parser.parse_args()
    from fairseq_slt import sparse_inference, step_trial

    labels = model_labels(args)
    left_out = {"all": "vocab_passes", "logits": "the log-probabilities over the logits",
                "lean": "lean_decoder_step"}[args.without]
    print(f"torch {torch.__version__}; beam 5, natural lengths; seconds, medians of {args.repeats} rounds; 'gain': "
          f"without / with {left_out}, "
          "the median of the rounds' ratios; 'sparse/dense': dense time / sparse time")
    print(f"{'model':<12} {'batch':>5} {'thr':>3} {'sents':>5} {'dense without':>13} {'with':>6} {'gain':>6} "
          f"{'sparse without':>14} {'with':>6} {'gain':>6} {'sparse/dense without':>20} {'with':>6} "
          f"{'hyps differ':>11}")
    for checkpoint, label in zip(args.checkpoints, labels):
        task, dense = load_fairseq(checkpoint, args.data)
        for threads in args.threads:
            torch.set_num_threads(threads)
            plan = sparse_inference.Plan()
            sparse = copy.deepcopy(dense)
            sparse_inference.sparsify(sparse, plan, trial=step_trial.StepTrial(plan))
            for batch_size in args.batch_sizes:
                count = args.sentences_batch1 if batch_size == 1 else args.sentences
                sources = list(range(min(count, len(task.dataset("test")))))
                runs = [(name, model, passes) for name, model in (("dense", dense), ("sparse", sparse))
                        for passes in (False, True)]
                for name, model, passes in runs:  # warm-up: the plan times its layers, the trial decides
                    for _ in range(3):
                        translate(task, model, sources, batch_size, passes, args.without)
                seconds, outputs = {(name, passes): [] for name, _, passes in runs}, {}
                for round_ in range(args.repeats):
                    for name, model, passes in (runs if round_ % 2 == 0 else runs[::-1]):
                        elapsed, output = translate(task, model, sources, batch_size, passes, args.without)
                        seconds[name, passes].append(elapsed)
                        outputs[name, passes] = output
                median = {key: statistics.median(values) for key, values in seconds.items()}

                def gain(name):
                    return statistics.median(a / b for a, b in zip(seconds[name, False], seconds[name, True]))

                def ratio(passes):
                    return statistics.median(a / b for a, b in zip(seconds["dense", passes],
                                                                   seconds["sparse", passes]))

                differ = sum(outputs[name, False][i] != outputs[name, True][i] for name in ("dense", "sparse")
                             for i in sources)
                print(f"{label[:12]:<12} {batch_size:>5} {threads:>3} {len(sources):>5} "
                      f"{median['dense', False]:>13.3f} {median['dense', True]:>6.3f} {gain('dense'):>5.2f}x "
                      f"{median['sparse', False]:>14.3f} {median['sparse', True]:>6.3f} {gain('sparse'):>5.2f}x "
                      f"{ratio(False):>19.2f}x {ratio(True):>5.2f}x {differ:>11}", flush=True)


if __name__ == "__main__":
    main()
