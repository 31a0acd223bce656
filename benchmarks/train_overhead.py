"""Cost of keeping pruned weights at zero while training, in one process with fairseq's own Trainer.

Variants, interleaved round by round on the same batches, model, seed and number of updates:
  dense        fairseq's translation training, no mask
  plugin       translation_slt with an SLT mask at --sparsity (pruned gradients zeroed in place after
               backward, the weights after each optimizer step, statistics on logged updates)
  plugin-dense-grads  the same with --prune-dense-gradients (only the weights zeroed after each step)
  torch-prune  the same mask with torch.nn.utils.prune.custom_from_mask (weight = weight_orig * mask in a
               forward pre-hook, on every forward)
  forward-mask the same mask multiplied into the weights before every forward (open_lth's way)
Prints updates/s and words/s (target tokens) per variant and model, the median over the rounds, and the
ratio to dense. Usage: python benchmarks/train_overhead.py [--models demo base] [--rounds 3] [--threads 1]
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import fairseq.tasks  # noqa: E402,F401  (before the plugin, so that importing it registers its task)
import fairseq_slt.criterions  # noqa: E402,F401
import fairseq_slt.tasks  # noqa: E402,F401
from fairseq_slt.checkpoints import write_model_checkpoint  # noqa: E402
from fairseq_slt.pruning import magnitude_mask, prunable_parameters  # noqa: E402

MULTI30K = os.path.join(ROOT, "..", "shared", "data", "multi30k")
MODELS = {  # name -> (architecture options, --max-tokens per update)
    "demo": ("--arch transformer --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128 --decoder-embed-dim 128 "
             "--encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512 --encoder-attention-heads 4 "
             "--decoder-attention-heads 4 --share-all-embeddings", 4096),
    "base": ("--arch transformer --encoder-layers 6 --decoder-layers 6 --encoder-embed-dim 512 --decoder-embed-dim 512 "
             "--encoder-ffn-embed-dim 2048 --decoder-ffn-embed-dim 2048 --encoder-attention-heads 8 "
             "--decoder-attention-heads 8 --share-all-embeddings", 1024),
}
TRAIN = ("--optimizer adam --adam-betas (0.9,0.98) --lr 0.0005 --lr-scheduler inverse_sqrt --warmup-updates 100 "
         "--weight-decay 0.0001 --label-smoothing 0.1 --cpu --num-workers 0 --seed 1 --no-progress-bar")
VARIANTS = ("dense", "plugin", "plugin-dense-grads", "torch-prune", "forward-mask")


def config(data, model, max_tokens, save_dir, extra=()):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [data, "--user-dir", os.path.join(ROOT, "fairseq_slt"), "--task", "translation_slt", "--criterion",
            "label_smoothed_cross_entropy_slt", *model.split(), *TRAIN.split(), "--max-tokens", str(max_tokens),
            "--save-dir", save_dir, *extra]
    return convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))


def module_and_name(model, parameter_name):
    path, attr = parameter_name.rsplit(".", 1)
    return model.get_submodule(path), attr


class Variant:
    def __init__(self, name, data, model_args, max_tokens, mask, mask_checkpoint, work):
        from fairseq import tasks, utils
        from fairseq.trainer import Trainer

        extra = []
        if name.startswith("plugin"):
            extra = ["--prune-method", "slt", "--prune-sparsity", str(mask.sparsity()), "--prune-mask-from",
                     mask_checkpoint, "--prune-rewind-from", mask_checkpoint]
            if name == "plugin-dense-grads":
                extra.append("--prune-dense-gradients")
        cfg = config(data, model_args, max_tokens, os.path.join(work, name), extra)
        utils.set_torch_seed(1)
        self.task = tasks.setup_task(cfg.task)
        self.task.load_dataset("train")
        model = self.task.build_model(cfg.model)
        if name == "torch-prune":
            import torch.nn.utils.prune as prune
            for parameter_name, keep in mask.items():
                prune.custom_from_mask(*module_and_name(model, parameter_name), mask=keep.float())
            if hasattr(model.decoder, "output_projection"):  # tied to the embedding: the same mask there too
                prune.custom_from_mask(model.decoder.output_projection, "weight",
                                       mask=mask["encoder.embed_tokens.weight"].float())
            # fairseq's attention reads q/k/v/out_proj.weight directly (F.multi_head_attention_forward), so
            # their pruning hooks never run and the second update fails; run them at each attention call
            from fairseq.modules import MultiheadAttention

            def recompute(attention, inputs):
                for projection in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj):
                    for hook in projection._forward_pre_hooks.values():
                        hook(projection, None)
            for module in model.modules():
                if isinstance(module, MultiheadAttention):
                    module.register_forward_pre_hook(recompute)
        elif name == "forward-mask":
            params = prunable_parameters(model.named_parameters())
            with torch.no_grad():
                for parameter_name, keep in mask.items():
                    params[parameter_name].mul_(keep)

            def apply_mask(module, inputs):
                with torch.no_grad():
                    for parameter_name, keep in mask.items():
                        params[parameter_name].mul_(keep)
            model.register_forward_pre_hook(apply_mask)
        self.trainer = Trainer(cfg, self.task, model, self.task.build_criterion(cfg.criterion))
        self.cfg = cfg

    def batches(self, count):
        iterator = self.task.get_batch_iterator(dataset=self.task.dataset("train"), max_tokens=self.cfg.dataset.max_tokens,
                                                seed=1).next_epoch_itr(shuffle=False)
        return [next(iterator) for _ in range(count)]

    def run(self, batches):
        start = time.perf_counter()
        for sample in batches:
            self.trainer.train_step([sample])
        return time.perf_counter() - start


def prepare_data(work):
    from fairseq_slt.cli.prepare import add_arguments, prepare

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = os.path.join(work, "data")
    prepare(parser.parse_args(["--raw-dir", MULTI30K, "--out", out, "--train-lines", "5000", "--eval-lines", "100",
                               "--vocab-size", "4000", "--workers", "1"]))
    return os.path.join(out, "data-bin")


def benchmark(name, data, work, args):
    from fairseq import tasks, utils

    model_args, max_tokens = MODELS[name]
    # the mask: the lowest --sparsity of each weight matrix of the seeded initial model, written as a checkpoint
    cfg = config(data, model_args, max_tokens, os.path.join(work, f"{name}-init"))
    utils.set_torch_seed(1)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    params = prunable_parameters(model.named_parameters())
    mask = magnitude_mask(params, args.sparsity)
    mask_checkpoint = os.path.join(work, f"{name}-mask.pt")
    from omegaconf import OmegaConf
    write_model_checkpoint(mask_checkpoint, model.state_dict(), OmegaConf.to_container(cfg), 1, 1, {})
    names = ["dense", *[v for v in args.variants if v != "dense"]]  # dense: the reference
    variants = {v: Variant(v, data, model_args, max_tokens, mask, mask_checkpoint, os.path.join(work, name))
                for v in names}
    batches = variants["dense"].batches(args.warmup + args.updates)
    words = sum(int(b["ntokens"]) for b in batches[args.warmup:])
    for variant in variants.values():  # builds the optimizers, first allocations
        variant.run(batches[:args.warmup])
    seconds = {v: [] for v in names}
    for _ in range(args.rounds):
        for v in names:
            seconds[v].append(variants[v].run(batches[args.warmup:]))
    parameters = sum(p.numel() for p in model.parameters())
    print(f"\n{name}: {parameters / 1e6:.1f}M parameters, {mask.total() / 1e6:.1f}M prunable, sparsity "
          f"{mask.sparsity():.3f}; {args.updates} updates of ~{words // args.updates} target tokens, median of "
          f"{args.rounds} rounds, {torch.get_num_threads()} thread(s)")
    print(f"  {'variant':<13} {'updates/s':>10} {'words/s':>10} {'vs dense':>9}")
    dense = statistics.median(seconds["dense"])
    for v in names:
        median = statistics.median(seconds[v])
        print(f"  {v:<13} {args.updates / median:10.3f} {words / median:10.0f} {dense / median:9.3f}")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo", "base"], choices=sorted(MODELS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=10, help="timed updates per variant and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--data", help="a data-bin (default: a 5000-pair slice of Multi30k, prepared once)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import logging
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as work:
        data = args.data or prepare_data(work)
        for name in args.models:
            benchmark(name, data, work, args)


if __name__ == "__main__":
    main()
