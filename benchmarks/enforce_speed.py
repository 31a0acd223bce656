"""Benchmark: the per-step cost of zeroing pruned weights, on transformer-base-sized matrices (~54M weights).

  mul_  the tensor times a 0/1 factor in its dtype (what the plugin did before: a pruned negative weight
        becomes -0.0)
  and_  the tensor's bits ANDed with a word per weight (-1 kept, 0 pruned): what the plugin does now,
        pruned positions +0.0, all bits zero
Rounds interleave the two; each prints the median of 5 passes over every matrix.
Usage: python benchmarks/enforce_speed.py [--sparsity 0.9] [--rounds 5] [--threads 1]
"""
import argparse
import statistics
import time

import torch

VOCAB, DIM, FFN, LAYERS = 32000, 512, 2048, 6


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = [(VOCAB, DIM)] + [(DIM, DIM)] * 4 * LAYERS * 2 + [(FFN, DIM), (DIM, FFN)] * LAYERS * 2
    weights = [torch.randn(s) for s in shapes]
    keeps = [torch.rand(s) >= args.sparsity for s in shapes]
    factors = [k.float() for k in keeps]
    words = [-k.to(torch.int32) for k in keeps]
    print(f"{sum(w.numel() for w in weights) / 1e6:.1f}M weights, sparsity {args.sparsity}, {args.threads} thread(s)")

    def mul():
        for w, f in zip(weights, factors):
            w.mul_(f)

    def bit_and():
        for w, f in zip(weights, words):
            w.view(torch.int32).bitwise_and_(f)

    for round_ in range(args.rounds):
        line = []
        for name, run in (("mul_", mul), ("and_", bit_and)):
            times = []
            for _ in range(5):
                started = time.perf_counter()
                run()
                times.append(time.perf_counter() - started)
            line.append(f"{name} {1000 * statistics.median(times):6.1f} ms")
        print(f"round {round_ + 1}: " + "   ".join(line))


if __name__ == "__main__":
    main()
