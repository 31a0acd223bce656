"""What torch's CSR product costs beside its kernel (the layout copies around it), and the row-major kernel.

fairseq hands a linear layer x (rows x in, row-major) and wants x W^T (rows x out, row-major). Torch's CSR
product on CPU (MKL) computes W x^T: it needs x^T row-major (a strided copy of x) and returns (out x rows),
which must be copied back transposed (fairseq_slt.sparse_inference.SparseLinear.sparse). For weight matrices
of a checkpoint (its zeros as they are) this times, against dense F.linear:
  kernel     the CSR product alone, its input transposed beforehand, its output left transposed
  as used    SparseLinear.sparse in one block: the same with both copies (--sparse-inference's torch way)
  colmajor   MKL on column-major operands (no copies: x's memory is x^T column-major), out= a transposed view
  dense@csr  torch.mm(x, CSR of W^T): the product in fairseq's layout, torch's own kernel
  in Ns      SparseLinear.sparse in blocks of N rows (--blocks; the plan times sparse_inference.CHUNKS)
  rows Ns    the row-major kernel of fairseq_slt/csr_kernel.cpp (fairseq's layout, no copies) in blocks of N
             rows on all threads (--kernel-blocks; the plan times csr_kernel.BLOCKS, on one thread and on all)
Ratios are dense time over each way's time (best of 15 calls). Usage:
  python benchmarks/csr_layout.py CHECKPOINT [--weights NAME ...] [--rows 5 64 320 1000] [--threads 1 2]
      [--blocks 64 256] [--kernel-blocks 8 16 32 64]
"""
import argparse
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fairseq_slt import csr_kernel, sparse_inference  # noqa: E402
from fairseq_slt.sparse_inference import Way  # noqa: E402
from fairseq_slt.pruning import safe_load  # noqa: E402

DEFAULT = ["decoder.layers.2.self_attn.q_proj.weight", "decoder.layers.2.fc1.weight", "decoder.layers.2.fc2.weight",
           "decoder.embed_tokens.weight"]


def best_of(run, calls=15):
    run()
    best = float("inf")
    for _ in range(calls):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--weights", nargs="+", default=DEFAULT)
    parser.add_argument("--rows", type=int, nargs="+", default=[5, 64, 320, 1000])
    parser.add_argument("--blocks", type=int, nargs="+", default=list(sparse_inference.CHUNKS))
    parser.add_argument("--kernel-blocks", type=int, nargs="+", default=list(csr_kernel.BLOCKS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    state = safe_load(args.checkpoint)["model"]
    print(f"torch {torch.__version__}; ratios: dense time / each way's time (best of 15 calls)")
    print(f"{'weight':<44} {'shape':>9} {'zeros':>5} {'thr':>3} {'rows':>4} {'dense us':>8} {'kernel':>7} "
          f"{'as used':>7} {'colmajor':>8} {'dense@csr':>9}" + "".join(f"{f'in {b}s':>8}" for b in args.blocks)
          + "".join(f"{f'rows {b}s':>9}" for b in args.kernel_blocks))
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in args.weights:
            weight = state[name].float().contiguous()
            out_features, in_features = weight.shape
            linear = nn.Linear(in_features, out_features, bias=False)
            linear.weight = nn.Parameter(weight, requires_grad=False)
            with torch.no_grad():
                layer = sparse_inference.SparseLinear(linear, sparse_inference.Plan())
            by_rows, by_columns = layer.csr, sparse_inference.csr_of(weight.t().contiguous())
            zeros = float((weight == 0).float().mean())
            for rows in args.rows:
                x = torch.randn(rows, in_features)
                x_t = x.t().contiguous()
                dense = best_of(lambda: layer.dense(x))
                kernel = best_of(lambda: torch.mm(by_rows, x_t))
                used = best_of(lambda: layer.sparse(x, Way("torch", rows)))  # one block

                def colmajor():
                    y = torch.empty(rows, out_features)
                    torch.mm(by_rows, x.t(), out=y.t())
                    return y
                kernels = [lambda b=b: layer.sparse(x, Way("rows", b, threads)) for b in args.kernel_blocks]
                for way in [colmajor, lambda: layer.sparse(x, Way("torch", rows))] + kernels:
                    assert torch.allclose(way(), layer.dense(x), atol=1e-4)
                column = best_of(colmajor)
                other = best_of(lambda: torch.mm(x, by_columns))
                blocked = [dense / best_of(lambda: layer.sparse(x, Way("torch", b))) for b in args.blocks]
                rowmajor = [dense / best_of(way) for way in kernels]
                print(f"{name:<44} {'x'.join(map(str, weight.shape)):>9} {100 * zeros:>4.0f}% {threads:>3} {rows:>4} "
                      f"{dense * 1e6:>8.0f} {dense / kernel:>6.2f}x {dense / used:>6.2f}x {dense / column:>7.2f}x "
                      f"{dense / other:>8.2f}x" + "".join(f"{r:>7.2f}x" for r in blocked)
                      + "".join(f"{r:>8.2f}x" for r in rowmajor), flush=True)


if __name__ == "__main__":
    main()
