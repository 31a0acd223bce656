"""How much a sparse kernel can gain at most: the share of a translation run spent in linear layers.

--sparse-inference speeds up the weight matrices' products (nn.Linear) and nothing else: beam search, attention,
the KV cache and Python's own work stay as they are. For each checkpoint, thread count and batch size, this
translates the same sentences as benchmarks/serving.py does (fairseq dense under the plugin's task, beam 5,
natural lengths, batches of similar source lengths; every projection through nn.Linear, as --sparse-inference
runs them) in --repeats rounds, timing every nn.Linear call with perf_counter. It prints the median share s of
the run's wall time spent inside them, then Amdahl's law: the whole run's speedup 1 / (1 - s + s / x) with the
linear layers x = 2 and 3 times faster and free (x -> infinity), and the x that issue 15's targets (1.5x at
batch 1, 1.2x at larger batches) need ("never": not even free linear layers reach it).
Usage: python benchmarks/linear_share.py --data DATA_BIN CKPT [CKPT ...] [--labels ...]
"""
import argparse
import logging
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import add_model_arguments, fairseq_translate, load_fairseq, model_labels  # noqa: E402


def whole_run_speedup(share: float, faster: float) -> float:
    return 1 / (1 - share + share / faster)


def needed(share: float, target: float) -> str:
    """How many times faster the linear layers must get for the whole run to reach ``target``."""
    rest = 1 / target - (1 - share)
    return "never" if rest <= 0 else f"{share / rest:.1f}x"


def linear_share(task, model, sources, batch_size: int, repeats: int):
    """The median share of wall time inside nn.Linear over ``repeats`` rounds, and the rounds' range."""
    inside, forward = [0.0], nn.Linear.forward

    def timed_forward(self, x):
        started = time.perf_counter()
        out = forward(self, x)
        inside[0] += time.perf_counter() - started
        return out

    fairseq_translate(task, model, sources[:batch_size], batch_size, 0)  # warm-up
    shares = []
    for _ in range(repeats):
        inside[0] = 0.0
        nn.Linear.forward = timed_forward
        try:
            started = time.perf_counter()
            fairseq_translate(task, model, sources, batch_size, 0)
            shares.append(inside[0] / (time.perf_counter() - started))
        finally:
            nn.Linear.forward = forward
    return statistics.median(shares), min(shares), max(shares)


def main():
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, sentences=128, sentences_batch1=20, repeats=3,
                        repeats_help="rounds (the median share kept)")
    args = parser.parse_args()
    labels = model_labels(args)
    print(f"torch {torch.__version__}; fairseq dense under the plugin's task, beam 5, natural lengths; share of wall "
          f"time inside nn.Linear, median of {args.repeats} rounds (range); whole-run speedup if the linear layers "
          "were 2x / 3x faster / free; linear-layer speedup that 1.5x (batch 1) or 1.2x (larger batches) needs")
    print(f"{'model':<12} {'batch':>5} {'thr':>3} {'sents':>5} {'linear share':>18} {'2x':>6} {'3x':>6} {'free':>6} "
          f"{'target':>6} {'needs':>6}")
    for checkpoint, label in zip(args.checkpoints, labels):
        task, model = load_fairseq(checkpoint, args.data)
        for module in model.modules():  # the encoder's self-attention projections through nn.Linear, as sparsify
            if hasattr(module, "skip_embed_dim_check"):  # makes them run (else torch's fused attention takes them)
                module.skip_embed_dim_check = True
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch_size in args.batch_sizes:
                count = args.sentences_batch1 if batch_size == 1 else args.sentences
                sources = list(range(min(count, len(task.dataset("test")))))
                share, low, high = linear_share(task, model, sources, batch_size, args.repeats)
                target = 1.5 if batch_size == 1 else 1.2
                speedups = [f"{whole_run_speedup(share, x):>5.2f}x" for x in (2, 3, float("inf"))]
                print(f"{label[:12]:<12} {batch_size:>5} {threads:>3} {len(sources):>5} "
                      f"{f'{share:.1%} ({low:.0%}-{high:.0%})':>18} {' '.join(speedups)} {target:>5}x "
                      f"{needed(share, target):>6}", flush=True)


if __name__ == "__main__":
    main()
