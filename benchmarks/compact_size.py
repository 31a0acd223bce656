"""Size of compact checkpoints (fairseq-slt compress) against the dense fp32 weights and xz -9.

For each pruned checkpoint: the bytes of its weights as dense fp32, the compact file with fp32 (bit-exact),
fp16 and bf16 values, the raw bitmap + fp32 values figure, the entropy limit H(p) + 32 (1 - p) bits per
weight, and xz -9 of the checkpoint without optimizer state (what a user would try first) and of the file
as it is. Usage: python benchmarks/compact_size.py CHECKPOINT [CHECKPOINT ...]
"""
import argparse
import io
import lzma
import math
import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from fairseq_slt.checkpoints import Checkpoint, inference_state  # noqa: E402
from fairseq_slt.pruning import atomic_save  # noqa: E402
from fairseq_slt.pruning.compact import compress, matrix_sparsity  # noqa: E402


def limits(rows):
    """(raw bitmap + fp32 values, entropy limit) in bytes, dense-stored tensors added as they are."""
    raw = entropy = 0.0
    for row in rows:
        if row["kind"] == "packed":
            n, p = row["numel"], row["nonzero"] / row["numel"]
            raw += n / 8 + 4 * row["nonzero"]
            entropy += n * -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / 8 + 4 * row["nonzero"]
        else:
            raw += row["bytes"]
            entropy += row["bytes"]
    return raw, entropy


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    print("| checkpoint | zeros | dense fp32 | compact fp32 (bit-exact) | compact fp16 | compact bf16 "
          "| raw bitmap + fp32 | entropy limit | xz -9 weights only | xz -9 of the file |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in args.checkpoints:
        checkpoint = Checkpoint(path)
        meta, mask = inference_state(checkpoint.state), checkpoint.mask()
        sizes, rows = {}, None
        with tempfile.TemporaryDirectory() as work:
            for values in ("fp32", "fp16", "bf16"):
                state, report = compress(checkpoint.model, meta, values, masks=mask if mask is not None else {})
                rows = report if values == "fp32" else rows
                out = os.path.join(work, f"{values}.pt")
                atomic_save(state, out)
                sizes[values] = os.path.getsize(out)
        dense = sum(row["dense_fp32_bytes"] for row in rows)
        raw, entropy = limits(rows)
        plain = io.BytesIO()
        torch.save(dict(meta, model=checkpoint.model), plain)
        with open(path, "rb") as handle:
            whole = len(lzma.compress(handle.read(), preset=9))
        weights_only = len(lzma.compress(plain.getvalue(), preset=9))

        def cell(size):
            return f"{size / 1e6:.3f} MB ({100 * size / dense:.2f} %)"

        name = os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))
        print(f"| {name} | {100 * matrix_sparsity(rows):.1f} % | {dense / 1e6:.3f} MB | {cell(sizes['fp32'])} | "
              f"{cell(sizes['fp16'])} | {cell(sizes['bf16'])} | {cell(raw)} | {cell(entropy)} | {cell(weights_only)} "
              f"| {cell(whole)} |", flush=True)


if __name__ == "__main__":
    main()
