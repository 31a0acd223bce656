"""Serving a pruned model on CPU, side by side: fairseq dense, fairseq --sparse-inference, CTranslate2 float32
and int8, on the same checkpoints, sentences, beam (5), batch sizes and thread counts, in one run.

Each checkpoint (a trained pruned model, or ``--prune S`` magnitude-pruning a trained dense one per layer,
one-shot) is translated by every engine at each batch size and thread count, twice per setting:
  natural  the engine's own hypothesis lengths (max 1.2 x source + 10 tokens); BLEU (sacreBLEU,
           detokenized, against --references) is reported from this pass
  fixed    every hypothesis forced to exactly --fixed-length tokens (the same work for every engine)
Each engine and setting runs in a process of its own (two engines' thread pools in one process slow each
other down): fairseq's SequenceGenerator after prepare_for_inference_, as fairseq-generate; --sparse-inference
as the plugin applies it (the layer plan, then the whole-step trial); CTranslate2 from `fairseq-slt
export-ct2 --no-verify` folders (with N threads: N workers of one thread each, as it serves best, each batch
shared out among them; 'ct2 int8 intra' is one batch at a time on N threads; 'ct2 int8 mbsM' the same batches
served in CTranslate2 batches of at most M, the max_batch_size `export-ct2` advises for the model, where that is
smaller; 'ct2 int8 advised' as `export-ct2` tells to serve it: those batches, and CT2_FORCE_CPU_ISA=AVX512 where
it advises that); every engine batches sentences of similar source lengths, as fairseq-generate and CTranslate2's
max_batch_size do. "fairseq dense" is fairseq-generate under the plugin's task (its beam search attends to each
sentence's encoder output once: ``beamable_attention``; it reorders its cache through a list of modules:
``listed_reorder``); "stock fairseq" the same weights through fairseq's own translation task. fairseq dense,
sparse, a second copy of the dense weights ("dense again": the noise floor, two identical engines measured
apart) and stock fairseq share a process. Each of --repeats rounds times every engine once, process after
process (``interleaved``: the processes' order, and the engines' order within one, rotated each round), so that
a drift of the machine's speed reaches all engines of a round alike. One warm-up batch before each timed pass.
Prints the median sentences/s, the ratio to fairseq dense (the median of the rounds' ratios), the rounds'
spread, BLEU, and the sizes on disk.
Usage: python benchmarks/serving.py --data DATA_BIN --references TEST.de CKPT [CKPT ...] [--prune 0.9 ...]
"""
import argparse
import copy
import functools
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import interleaved  # noqa: E402
from fairseq_slt import sparse_inference, step_trial  # noqa: E402
from fairseq_slt.cli import ct2_runtime  # noqa: E402
from fairseq_slt.cli.export_ct2 import _folder_bytes, detokenize, serving_batch_size  # noqa: E402
from fairseq_slt.pruning import magnitude_mask, safe_load  # noqa: E402
from fairseq_slt.pruning.io import atomic_save  # noqa: E402


def pruned_copy(checkpoint: str, sparsity: float, folder: str) -> str:
    state = safe_load(checkpoint)
    weights = {n: w for n, w in state["model"].items() if w.dim() >= 2 and w.is_floating_point()}
    mask = magnitude_mask(weights, sparsity)
    for name, keep in mask.items():
        state["model"][name] = torch.where(keep, state["model"][name], torch.zeros((), dtype=weights[name].dtype))
    path = os.path.join(folder, f"pruned_{sparsity:g}.pt")
    state.pop("last_optimizer_state", None)  # what serving never reads
    atomic_save(state, path)
    return path


def load_fairseq(path: str, data: str):
    import fairseq.tasks  # noqa: F401 (before the plugin, so that importing it registers its task)
    import fairseq_slt.tasks  # noqa: F401
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data})
    model = models[0].eval()
    model.prepare_for_inference_(cfg)
    task.load_dataset("test")
    return task, model


def fairseq_translate(task, model, sources, batch_size: int, fixed: int, stock: bool = False):
    """id -> detokenized hypothesis, in batches of ``batch_size`` sentences of similar source lengths (as
    fairseq-generate batches them, and as CTranslate2 does with max_batch_size); ``stock``: by fairseq's own
    translation task's inference step, not the plugin's."""
    from fairseq.tasks.translation import TranslationTask

    lengths = dict(max_len_a=0, max_len_b=fixed, min_len=fixed) if fixed else dict(max_len_a=1.2, max_len_b=10)
    generator = task.build_generator([model], argparse.Namespace(beam=5, **lengths))
    step = functools.partial(TranslationTask.inference_step, task) if stock else task.inference_step
    dataset, output = task.dataset("test"), {}
    ordered = sorted(sources, key=lambda i: int(dataset.src_sizes[i]))
    with torch.no_grad():
        for start in range(0, len(ordered), batch_size):
            sample = dataset.collater([dataset[i] for i in ordered[start:start + batch_size]])
            for sentence, hyps in zip(sample["id"].tolist(), step(generator, [model], sample)):
                output[sentence] = task.target_dictionary.string(hyps[0]["tokens"], "sentencepiece")
    return output


def ct2_translate(translator, tokens, sources, batch_size: int, fixed: int, most: int = 0):
    """With N workers (inter_threads) each batch is shared out: N batches of batch_size / N sentences at a time
    (at batch 1: N sentences at a time, one a worker); ``most``: batches of at most this many sentences."""
    lengths = dict(min_decoding_length=fixed, max_decoding_length=fixed) if fixed else \
        dict(max_decoding_length=max(int(1.2 * max(len(tokens[i]) for i in sources)) + 10, 16))
    share = -(-batch_size // translator.num_translators)
    share = min(share, most) if most else share
    results = translator.translate_batch([tokens[i] for i in sources], beam_size=5, max_batch_size=share, **lengths)
    return {i: detokenize(r.hypotheses[0], "sentencepiece") for i, r in zip(sources, results)}


def parse_variants(specs) -> dict:
    """``LABEL:VAR=VALUE[,VAR=VALUE]`` -> {label: {VAR: VALUE}}; one error line for a malformed one."""
    variants = {}
    for spec in specs:
        label, _, assignments = spec.partition(":")
        pairs = [a.partition("=") for a in assignments.split(",")]
        if not re.fullmatch(r"[a-z0-9_-]+", label) or label == "intra" or label in variants or \
                not all(re.fullmatch(r"[A-Z][A-Z0-9_]*", k) and eq and v for k, eq, v in pairs):
            raise SystemExit(f"error: --ct2-variant {spec!r}: expected LABEL:VAR=VALUE[,VAR=VALUE], a new lowercase "
                             "label other than 'intra' (e.g. avx512:CT2_FORCE_CPU_ISA=AVX512)")
        variants[label] = {k: v for k, _, v in pairs}
    return variants


def export(checkpoint: str, data: str, quantization: str, folder: str) -> str:
    out = os.path.join(folder, f"ct2-{os.path.basename(checkpoint)}-{quantization}")
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "fairseq-slt"), "export-ct2", checkpoint, out, "--data", data,
                    "--quantization", quantization, "--no-verify", "--force"], check=True, capture_output=True,
                   cwd=ROOT)
    return out


def sparse_engine(task, model, plan, batch_size):
    """A copy of the model under --sparse-inference with this plan (layer plan, then the whole-step trial):
    the engine and the trial."""
    sparse, trial = copy.deepcopy(model), step_trial.StepTrial(plan)
    sparse_inference.sparsify(sparse, plan, trial=trial)
    return (lambda chosen, fixed: fairseq_translate(task, sparse, chosen, batch_size, fixed)), trial


def worker(args) -> None:
    """CTranslate2 (one precision and setting), or fairseq dense, --sparse-inference and their controls, at one
    batch size and thread count, in a process of its own (two engines' thread pools in one process slow each
    other down): times its engines in the rounds the parent asks for (``interleaved.serve``)."""
    import json

    torch.set_num_threads(args.threads[0])
    task, model = load_fairseq(args.checkpoints[0], args.data)
    batch_size = args.batch_sizes[0]
    dataset = task.dataset("test")
    count = args.sentences_batch1 if batch_size == 1 else args.sentences
    sources = list(range(min(count, len(dataset))))
    engines, trial = {}, None
    if args.worker == "fairseq":
        copy_of_dense, plan = copy.deepcopy(model), sparse_inference.Plan()
        engines["fairseq dense"] = lambda chosen, fixed: fairseq_translate(task, model, chosen, batch_size, fixed)
        engines["fairseq sparse"], trial = sparse_engine(task, model, plan, batch_size)
        earlier = {}  # earlier plans: torch's CSR product only (before the row-major kernel), in one blocking
        if args.also_torch_csr:
            earlier["sparse torch csr"] = sparse_inference.Plan(blocks=())
        if args.also_blocks:
            earlier[f"sparse {args.also_blocks} rows"] = sparse_inference.Plan(chunks=(args.also_blocks,), blocks=())
        for name, earlier_plan in earlier.items():
            engines[name] = sparse_engine(task, model, earlier_plan, batch_size)[0]
        # the same dense weights again: how far two identical engines in one process measure apart (noise floor)
        engines["dense again"] = lambda chosen, fixed: fairseq_translate(task, copy_of_dense, chosen, batch_size, fixed)
        engines["stock fairseq"] = lambda chosen, fixed: fairseq_translate(task, model, chosen, batch_size, fixed,
                                                                           stock=True)
    else:
        import ctranslate2
        tokens = {i: [task.source_dictionary[t] for t in dataset.src[i].tolist()[:-1]] for i in sources}
        # "ct2 <precision>": as CTranslate2 serves best with N cores, N workers of one thread (inter_threads), each
        # batch shared out among them; "... intra": one batch at a time on N threads, which is 2-20x slower than
        # one thread on the 2-vCPU machine of docs/benchmarks (the threads' synchronisation costs more than the
        # work it shares)
        del model  # the dataset and dictionary are what CTranslate2's worker needs of fairseq
        intra, threads = args.worker.endswith(" intra"), args.threads[0]
        translator = ctranslate2.Translator(args.ct2_model, device="cpu", inter_threads=1 if intra else threads,
                                            intra_threads=threads if intra else 1)
        engines[args.worker] = lambda chosen, fixed: ct2_translate(translator, tokens, chosen, batch_size, fixed,
                                                                   args.ct2_most)
    interleaved.serve(engines, sources, batch_size)  # the rounds the parent asks for, until it closes stdin
    if trial is not None:
        print("TRIAL " + json.dumps(plan.summary() + trial.summary()), flush=True)


def add_model_arguments(parser, sentences: int, sentences_batch1: int, repeats: int, repeats_help: str) -> None:
    """What the serving benchmarks share: checkpoints, their labels and data, batch sizes, threads, sentences."""
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", required=True)
    parser.add_argument("--labels", nargs="+", help="a name per checkpoint in the table (default: its run folder's)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sentences", type=int, default=sentences, help="test sentences at batch sizes > 1")
    parser.add_argument("--sentences-batch1", type=int, default=sentences_batch1)
    parser.add_argument("--repeats", type=int, default=repeats, help=repeats_help)


def model_labels(args) -> list:
    """--labels, or each checkpoint's run folder; one error line when they do not match the checkpoints."""
    labels = args.labels or [os.path.basename(os.path.dirname(os.path.abspath(c))) for c in args.checkpoints]
    if len(labels) != len(args.checkpoints):
        raise SystemExit(f"error: --labels names {len(labels)} models for {len(args.checkpoints)} checkpoints")
    return labels


def main():
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, sentences=1000, sentences_batch1=100, repeats=5,
                        repeats_help="interleaved timed rounds per setting (median kept, spread printed)")
    parser.add_argument("--references", help="the test set's target side, detokenized")
    parser.add_argument("--prune", type=float, nargs="*", default=[],
                        help="magnitude-prune each checkpoint to these sparsities (one-shot) instead of using it as is")
    parser.add_argument("--fixed-length", type=int, default=24)
    parser.add_argument("--also-blocks", type=int,
                        help="also run --sparse-inference with torch's CSR products in blocks of this many rows only")
    parser.add_argument("--also-torch-csr", action="store_true",
                        help="also run --sparse-inference with torch's CSR products only (no row-major kernel)")
    parser.add_argument("--no-ct2", action="store_true", help="fairseq engines only")
    parser.add_argument("--ct2-variant", action="append", default=[], metavar="LABEL:VAR=VALUE[,VAR=VALUE]",
                        help="also run CTranslate2 int8 with these environment variables, as the engine 'ct2 int8 "
                             "LABEL' (e.g. avx512:CT2_FORCE_CPU_ISA=AVX512 or mkl:CT2_USE_MKL=1); repeatable")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--ct2-model", help=argparse.SUPPRESS)
    parser.add_argument("--ct2-most", type=int, default=0, help=argparse.SUPPRESS)  # CTranslate2's max_batch_size
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    import json

    labels = model_labels(args)
    # engine name -> its environment: CTranslate2 as installed, then int8 under each --ct2-variant
    ct2_envs = {} if args.no_ct2 else {"ct2": {}, **{f"ct2 int8 {label}": env for label, env in
                                                     parse_variants(args.ct2_variant).items()}}
    import ctranslate2
    from sacrebleu.metrics import BLEU

    started = time.perf_counter()
    with open(args.references, encoding="utf-8") as handle:
        refs = [line.rstrip("\n") for line in handle]
    work = tempfile.mkdtemp(prefix="serving-")
    print(f"torch {torch.__version__}, ctranslate2 {ctranslate2.__version__}, beam 5, each engine and setting in a "
          "process of its own (fairseq dense under the plugin's task, sparse, the same dense weights again, and stock "
          "fairseq's translation task in one), each round timing every engine once, process after process, the "
          f"order rotated each round; median of {args.repeats} rounds; sentences/s (ratio to fairseq dense: the "
          "median of the rounds' ratios; then the spread of the rounds, "
          "max - min over the median); BLEU of the natural pass; batches of similar source lengths for every engine; "
          "CTranslate2 with N threads: N workers of one thread (inter_threads=N, intra_threads=1), each batch shared "
          "out among them (N batches of batch/N sentences at a time; at batch 1 N sentences at a time), 'ct2 int8 "
          "intra' one batch at a time on N threads, 'ct2 int8 mbsM' the same batches served in batches of at most M "
          "(max_batch_size=M, what export-ct2 advises for the model, where it is smaller than batch/N), 'ct2 int8 "
          "advised' served as export-ct2 advises (max_batch_size=M, and its environment setting if any)")
    print(f"{'model':<16} {'engine':<16} {'batch':>5} {'thr':>3} {'sents':>5} {'natural':>22} {'fixed':>22} "
          f"{'BLEU':>6}")
    try:
        checkpoints = ([(pruned_copy(c, s, work), f"{name} {100 * s:g}%") for c, name in zip(args.checkpoints, labels)
                        for s in args.prune] or list(zip(args.checkpoints, labels)))
        for checkpoint, label in checkpoints:
            translators = {} if args.no_ct2 else {q: export(checkpoint, args.data, q, work) for q in ("float32", "int8")}
            sizes = {q: _folder_bytes(path) for q, path in translators.items()}
            state = safe_load(checkpoint)
            model, advised = state["model"], serving_batch_size((state.get("cfg") or {}).get("model"))
            matrices = [w for w in model.values() if w.dim() >= 2 and w.is_floating_point()]
            zeros = sum(int((w == 0).sum()) for w in matrices) / sum(w.numel() for w in matrices)
            print(f"# {label}: {100 * zeros:.1f} % zeros in weight matrices; checkpoint "
                  f"{os.path.getsize(checkpoint) / 1e6:.2f} MB" + "".join(
                      f", ct2 {q} {size / 1e6:.2f} MB" for q, size in sizes.items()), flush=True)
            runtimes = {name: ct2_runtime.runtime(translators["int8"], env) for name, env in ct2_envs.items()}
            envs = dict(ct2_envs)  # and export-ct2's advice: batches of at most `advised`, in this environment
            if translators:
                envs["ct2 int8 advised"] = ct2_runtime.isa_setting(runtimes["ct2"]["isa"], ct2_runtime.cpu_flags(),
                                                                   os.environ)
                runtimes["ct2 int8 advised"] = ct2_runtime.runtime(translators["int8"], envs["ct2 int8 advised"])
            for name, found in runtimes.items():
                print(f"# {name}: ISA {found['isa']}, int8 GEMM {found['int8_gemm']}, float32 GEMM "
                      f"{found['float32_gemm']}" + (f"; max_batch_size {advised}" if name.endswith("advised") else ""),
                      flush=True)
            trials = []
            for batch_size in args.batch_sizes:
                for threads in args.threads:
                    # engine -> CTranslate2's max_batch_size (0: each batch shared out among the N workers)
                    ct2 = {"ct2 float32": 0, "ct2 int8": 0, **({"ct2 int8 intra": 0} if threads > 1 else {}),
                           **{name: 0 for name in ct2_envs if name != "ct2"}}
                    if advised < -(-batch_size // threads):
                        ct2[f"ct2 int8 mbs{advised}"] = advised
                    ct2 = {} if args.no_ct2 else {**ct2, "ct2 int8 advised": advised}
                    commands = {}
                    for worker_name in ("fairseq", *ct2):
                        command = [sys.executable, os.path.abspath(__file__), checkpoint, "--data", args.data,
                                   "--worker", worker_name, "--batch-sizes", str(batch_size), "--threads", str(threads),
                                   "--sentences", str(args.sentences), "--sentences-batch1", str(args.sentences_batch1),
                                   *(["--also-blocks", str(args.also_blocks)] if args.also_blocks else []),
                                   *(["--also-torch-csr"] if args.also_torch_csr else [])]
                        if worker_name.startswith("ct2"):
                            command += ["--ct2-model", translators[worker_name.split()[1]],
                                        "--ct2-most", str(ct2[worker_name])]
                        commands[worker_name] = (command, dict(os.environ, OMP_NUM_THREADS=str(threads),
                                                               **envs.get(worker_name, {})))
                    workers = interleaved.Workers(commands)
                    passes = {"natural": 0, "fixed": args.fixed_length}
                    speeds, hyps = {key: {} for key in passes}, {}
                    try:
                        for key, fixed in passes.items():
                            for round_ in range(args.repeats):
                                results = workers.round(fixed, round_, hyps=key == "natural" and round_ == 0)
                                for engine, result in results.items():
                                    speeds[key].setdefault(engine, []).append(result["sentences"] / result["seconds"])
                                    hyps.setdefault(engine, result.get("hyps"))
                    finally:
                        tails = workers.close()
                    trials += [line for text in tails.values() for x in text.splitlines() if x.startswith("TRIAL ")
                               for line in json.loads(x[len("TRIAL "):])]
                    summaries = {key: interleaved.summary(speeds[key], "fairseq dense") for key in passes}
                    for engine, found in hyps.items():
                        bleu = BLEU().corpus_score(found, [refs[:len(found)]]).score
                        cells = [f"{median:>8.2f} ({ratio:.2f}x {100 * spread:>2.0f}%)"
                                 for median, spread, ratio in (summaries[key][engine] for key in passes)]
                        print(f"{label[:16]:<16} {engine:<16} {batch_size:>5} {threads:>3} {len(found):>5} "
                              f"{cells[0]:>22} {cells[1]:>22} {bleu:>6.2f}", flush=True)
            for line in trials:
                print(f"  --sparse-inference: {line}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"benchmark wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
