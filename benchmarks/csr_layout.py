"""What the CSR product of --sparse-inference costs beside its kernel: the layout copies around it.

fairseq hands a linear layer x (rows x in, row-major) and wants x W^T (rows x out, row-major). Torch's CSR
product on CPU (MKL) computes W x^T: it needs x^T row-major (a strided copy of x) and returns (out x rows),
which must be copied back transposed (fairseq_slt.sparse_inference.SparseLinear.sparse). For weight matrices
of a checkpoint (its zeros as they are) this times, against dense F.linear:
  kernel     the CSR product alone, its input transposed beforehand, its output left transposed
  as used    the same with both copies (what --sparse-inference runs)
  colmajor   MKL on column-major operands (no copies: x's memory is x^T column-major), out= a transposed view
  dense@csr  torch.mm(x, CSR of W^T): the product in fairseq's layout, torch's own kernel
Ratios are dense time over each way's time (best of 15 calls). Usage:
  python benchmarks/csr_layout.py CHECKPOINT [--weights NAME ...] [--rows 5 64 320] [--threads 1 2]
"""
import argparse
import os
import sys
import time
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def csr(matrix):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        c = matrix.to_sparse_csr()
        return torch.sparse_csr_tensor(c.crow_indices().int(), c.col_indices().int(), c.values(), size=c.shape)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--weights", nargs="+", default=DEFAULT)
    parser.add_argument("--rows", type=int, nargs="+", default=[5, 64, 320])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    state = safe_load(args.checkpoint)["model"]
    print(f"torch {torch.__version__}; ratios: dense time / each way's time (best of 15 calls)")
    print(f"{'weight':<44} {'shape':>9} {'zeros':>5} {'thr':>3} {'rows':>4} {'dense us':>8} {'kernel':>7} "
          f"{'as used':>7} {'colmajor':>8} {'dense@csr':>9}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in args.weights:
            weight = state[name].float().contiguous()
            out_features = weight.shape[0]
            by_rows, by_columns = csr(weight), csr(weight.t().contiguous())
            zeros = float((weight == 0).float().mean())
            for rows in args.rows:
                x = torch.randn(rows, weight.shape[1])
                x_t = x.t().contiguous()
                dense = best_of(lambda: F.linear(x, weight))
                kernel = best_of(lambda: torch.mm(by_rows, x_t))
                used = best_of(lambda: torch.mm(by_rows, x.t()).t().contiguous())

                def colmajor():
                    y = torch.empty(rows, out_features)
                    torch.mm(by_rows, x.t(), out=y.t())
                    return y
                assert torch.allclose(colmajor(), F.linear(x, weight), atol=1e-4)
                column = best_of(colmajor)
                other = best_of(lambda: torch.mm(x, by_columns))
                print(f"{name:<44} {'x'.join(map(str, weight.shape)):>9} {100 * zeros:>4.0f}% {threads:>3} {rows:>4} "
                      f"{dense * 1e6:>8.0f} {dense / kernel:>6.2f}x {dense / used:>6.2f}x {dense / column:>7.2f}x "
                      f"{dense / other:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
