"""Sparse vs dense inference on CPU: beam search over the Multi30k test set with fairseq's own generator.

For each model (demo: 2+2 layers, 128 dims; base: transformer-base size, 6+6 layers, 512/2048) and each
sparsity, the weight matrices (embeddings and output projection included) are magnitude-pruned per
layer, then the same sentences are translated with beam 5 at each batch size and thread count by
  dense   the pruned model as fairseq runs it
  sparse  the same model after --sparse-inference's conversion (CSR where the timing finds it faster)
Prints sentences/s side by side, the ratio, how many hypotheses differ from dense, and the time the
plan's timing took (excluded from the measured pass: a warm-up pass on the first batches comes first).
Weights: --demo-checkpoint (a trained demo-size checkpoint) or random; base is random (fairseq's
initialisation) unless --base-checkpoint. Hypotheses are capped at 1.0 x source + 5 tokens for every
model, so that random models decode realistic lengths.
Usage: python benchmarks/inference_speed.py --data DATA_BIN [--demo-checkpoint CKPT] [--profile]
"""
import argparse
import copy
import logging
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import fairseq.tasks  # noqa: E402,F401  (before the plugin, so that importing it registers its task)
import fairseq_slt.tasks  # noqa: E402,F401
from fairseq_slt import sparse_inference  # noqa: E402
from fairseq_slt.pruning import magnitude_mask, safe_load  # noqa: E402

ARCH = {
    "demo": "--encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128 --decoder-embed-dim 128 "
            "--encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512 --encoder-attention-heads 4 --decoder-attention-heads 4",
    "base": "--encoder-layers 6 --decoder-layers 6 --encoder-embed-dim 512 --decoder-embed-dim 512 "
            "--encoder-ffn-embed-dim 2048 --decoder-ffn-embed-dim 2048 --encoder-attention-heads 8 --decoder-attention-heads 8",
}


def build(data, arch, checkpoint):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    state = safe_load(checkpoint)["model"] if checkpoint else {}
    pre_norm = ["--encoder-normalize-before", "--decoder-normalize-before"] if "encoder.layer_norm.weight" in state else []
    argv = [data, "--user-dir", os.path.join(ROOT, "fairseq_slt"), "--task", "translation_slt", "--arch", "transformer",
            "--share-all-embeddings", "--cpu", "--seed", "1", *ARCH[arch].split(), *pre_norm]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = fairseq.tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    model = task.build_model(cfg.model, from_checkpoint=True)  # from_checkpoint: no pruning run is set up
    if checkpoint:
        model.load_state_dict(state)  # 13_base_model.sh's is pre-norm
    task.load_dataset("test")
    return task, cfg, model.eval()


def pruned(model, sparsity):
    model = copy.deepcopy(model)
    if sparsity > 0:
        weights = {name: p for name, p in model.named_parameters() if p.dim() >= 2}
        mask = magnitude_mask({name: p.detach() for name, p in weights.items()}, sparsity)
        with torch.no_grad():
            for name, keep in mask.items():
                weights[name].mul_(keep)
    return model


def batches(task, batch_size, sentences):
    dataset = task.dataset("test")
    indices = [i for i in range(min(sentences, len(dataset)))]
    return [dataset.collater([dataset[i] for i in indices[start:start + batch_size]])
            for start in range(0, len(indices), batch_size)]


def translate(task, model, samples):
    generator = task.build_generator([model], argparse.Namespace(beam=5, max_len_a=1.0, max_len_b=5))
    output = {}
    with torch.no_grad():
        for sample in samples:
            for sentence, hypotheses in zip(sample["id"].tolist(), task.inference_step(generator, [model], sample)):
                output[sentence] = hypotheses[0]["tokens"].tolist()
    return output


def timed(task, model, samples):
    translate(task, model, samples[:1])  # warm-up (and the sparse plan's timings for most sizes)
    started = time.perf_counter()
    output = translate(task, model, samples)
    return output, time.perf_counter() - started


def profile(task, model, samples, label, rows=12):
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for _ in range(2):  # the first profiled pass inflates allocation-heavy ops (index_select, cat): discarded
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            translate(task, model, samples)
    print(f"\nprofile: {label}, self CPU time by operator (top {rows})")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main():
    logging.disable(logging.WARNING)  # fairseq's per-model INFO lines would break up the table
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a data-bin with the Multi30k test set (fairseq-slt prepare)")
    parser.add_argument("--models", nargs="+", default=["demo", "base"], choices=list(ARCH))
    parser.add_argument("--demo-checkpoint", help="trained demo-size weights (default: random)")
    parser.add_argument("--base-checkpoint", help="trained base-size weights (default: random)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0, 0.8, 0.9, 0.95, 0.98])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sentences", type=int, default=1000, help="test sentences per run at batch sizes > 1")
    parser.add_argument("--sentences-batch1", type=int, default=100, help="test sentences per run at batch size 1")
    parser.add_argument("--base-sentences", type=int, default=128, help="base model: sentences at batch sizes > 1")
    parser.add_argument("--base-sentences-batch1", type=int, default=20, help="base model: sentences at batch size 1")
    parser.add_argument("--profile", action="store_true",
                        help="operator profiles of base at 90 %%, batch 64, 64 sentences, dense and sparse, per thread count")
    parser.add_argument("--profile-only", action="store_true", help="with --profile: the profiles without the table")
    args = parser.parse_args()
    started = time.perf_counter()

    print(f"torch {torch.__version__}, MKL {torch.backends.mkl.is_available()}, beam 5, "
          f"max length 1.0 x source + 5; decisions by --sparse-inference's plan")
    print(f"{'model':<5} {'sparsity':>8} {'batch':>5} {'thr':>3} {'sents':>5} {'dense sent/s':>12} "
          f"{'sparse sent/s':>13} {'ratio':>6} {'differ':>6} {'plan s':>6}")
    for name in args.models:
        task, cfg, dense_model = build(args.data, name, args.demo_checkpoint if name == "demo" else args.base_checkpoint)
        for sparsity in args.sparsities:
            model = pruned(dense_model, sparsity)
            sparse_model, plan = copy.deepcopy(model), sparse_inference.Plan()
            for each in (model, sparse_model):  # as fairseq-generate does (sets the beam size: beamable mm)
                each.prepare_for_inference_(cfg)
            sparse_inference.sparsify(sparse_model, plan)
            for batch_size in args.batch_sizes:
                if name == "base":
                    count = args.base_sentences_batch1 if batch_size == 1 else args.base_sentences
                else:
                    count = args.sentences_batch1 if batch_size == 1 else args.sentences
                samples = batches(task, batch_size, count)
                for threads in args.threads if not args.profile_only else ():
                    torch.set_num_threads(threads)
                    before = plan.calibration_seconds
                    reference, dense_s = timed(task, model, samples)
                    output, sparse_s = timed(task, sparse_model, samples)
                    differ = sum(output[i] != reference[i] for i in reference)
                    print(f"{name:<5} {100 * sparsity:>7g}% {batch_size:>5} {threads:>3} {len(reference):>5} "
                          f"{len(reference) / dense_s:>12.2f} {len(reference) / sparse_s:>13.2f} "
                          f"{dense_s / sparse_s:>5.2f}x {differ:>6} {plan.calibration_seconds - before:>6.2f}",
                          flush=True)
            if args.profile and name == "base" and sparsity == 0.9:
                samples = batches(task, 64, 64)
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    for label, each in (("dense", model), ("sparse", sparse_model)):
                        profile(task, each, samples, f"base, 90 %, batch 64, {threads} thread(s), {label}")
    print(f"benchmark wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
