"""Benchmark: per-layer magnitude masks for a transformer-base-sized model (~60M weights).

fairseq-slt's radix-select masks side by side with torch.nn.utils.prune.l1_unstructured applied
layer by layer, on the same weights.  Each method runs in a fresh process; extra memory is the peak
resident size during mask computation minus the resident size before it (weights included in neither).

    python benchmarks/mask_speed.py [--sparsity 0.8] [--repeats 3]
"""
import argparse
import json
import os
import subprocess
import sys
import time

VOCAB, DIM, FFN, LAYERS = 32000, 512, 2048, 6


def base_shapes():
    attention = [(DIM, DIM)] * 4
    encoder = attention + [(FFN, DIM), (DIM, FFN)]
    decoder = attention * 2 + [(FFN, DIM), (DIM, FFN)]
    return [(VOCAB, DIM)] + encoder * LAYERS + decoder * LAYERS  # shared embedding once


def _rss_kb(field="VmRSS"):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def worker(method, sparsity, repeats):
    import torch

    torch.manual_seed(0)
    weights = {f"w{i}": torch.randn(shape) for i, shape in enumerate(base_shapes())}
    if method == "torch":
        import torch.nn.utils.prune as prune

        modules = {}
        for name, w in weights.items():
            module = torch.nn.Module()
            module.weight = torch.nn.Parameter(w, requires_grad=False)
            modules[name] = module

        def compute():
            for module in modules.values():
                prune.l1_unstructured(module, "weight", amount=sparsity)
            masks = {n: m.weight_mask.bool() for n, m in modules.items()}
            for module in modules.values():
                prune.remove(module, "weight")
            return masks
    else:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from fairseq_slt.pruning import magnitude_mask

        def compute():
            return dict(magnitude_mask(weights, sparsity, scope=method))

    times = []
    for _ in range(repeats):
        baseline = _rss_kb()
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the peak resident size
        start = time.perf_counter()
        masks = compute()
        times.append(time.perf_counter() - start)
        peak = _rss_kb("VmHWM")
        del masks
    masks = compute()
    digest = [int(m.sum()) for m in masks.values()]
    numel = sum(w.numel() for w in weights.values())
    print(json.dumps({"method": method, "seconds": min(times), "extra_mb": (peak - baseline) / 1024,
                      "model_mb": numel * 4 / 2**20, "params": numel, "kept_per_layer": digest,
                      "mask_bytes": masks["w0"].numpy().tobytes()[:0].hex()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.sparsity, args.repeats)
    results = {}
    for method in ("torch", "layer", "global"):
        output = subprocess.run([sys.executable, __file__, "--worker", method, "--sparsity", str(args.sparsity),
                                 "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
        results[method] = json.loads(output.stdout.strip().splitlines()[-1])
    torch_row = results["torch"]
    print(f"{torch_row['params'] / 1e6:.1f}M weights in {len(torch_row['kept_per_layer'])} matrices "
          f"({torch_row['model_mb']:.0f} MB fp32), sparsity {args.sparsity}, best of {args.repeats}, "
          f"{os.cpu_count()} CPU threads\n")
    print(f"{'method':<44} {'seconds':>8} {'speed-up':>9} {'extra MB':>9} {'extra/model':>12}")
    labels = {"torch": "torch l1_unstructured, layer by layer", "layer": "fairseq-slt magnitude_mask, scope=layer",
              "global": "fairseq-slt magnitude_mask, scope=global"}
    for method, row in results.items():
        print(f"{labels[method]:<44} {row['seconds']:8.3f} {torch_row['seconds'] / row['seconds']:8.1f}x "
              f"{row['extra_mb']:9.0f} {row['extra_mb'] / row['model_mb']:12.2f}")
    same = results["layer"]["kept_per_layer"] == torch_row["kept_per_layer"]
    print(f"\nper-layer kept counts identical to torch's: {same}")


if __name__ == "__main__":
    main()
