"""Whole runs, as a user runs them: fairseq-generate with and without --sparse-inference on a trained pruned model.

Each run is a process of its own (`fairseq-generate DATA --task translation_slt --beam 5 --remove-bpe
sentencepiece --scoring sacrebleu` on the first sentences of the test set, as `fairseq-slt results` scores),
timed two ways: the whole process, start to exit (loading, the layer plan's timing and the step trial included:
what --sparse-inference costs a user once), and fairseq's own "Translated ... in X s" (its generation loop).
Dense and sparse runs alternate in --repeats rounds (the order swapped each round); the ratio is dense time over
sparse time, the median of the rounds' ratios. Also printed: the rounds' spread, how many hypotheses differ from
dense, and both BLEU scores.
Usage: python benchmarks/whole_run.py --data DATA_BIN CKPT [CKPT ...] [--labels ...] [--batch-sizes 1 64]
       [--threads 1 2] [--sentences 1000] [--sentences-batch1 200] [--repeats 5]
"""
import argparse
import glob
import os
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import add_model_arguments, model_labels  # noqa: E402  (it puts the checkout on sys.path)
from fairseq_slt.cli import scoring  # noqa: E402

TRANSLATED = re.compile(r"Translated ([\d,]+) sentences \([\d,]+ tokens\) in ([\d.]+)s")
BLEU = re.compile(r"Generate \S+ with beam=\d+: BLEU[4]? = ([\d.]+)")


def first_sentences(data: str, count: int, folder: str) -> str:
    """A data-bin in ``folder`` with the dictionaries and the first ``count`` test sentences of ``data``
    (fairseq-generate's --num-shards does not reach its data iterator)."""
    from fairseq.data import Dictionary, data_utils, indexed_dataset

    os.makedirs(folder)
    for path in glob.glob(os.path.join(data, "dict.*.txt")):
        shutil.copy(path, folder)
    for path in glob.glob(os.path.join(data, "test.*.bin")):
        prefix = path[:-len(".bin")]
        language = prefix.rsplit(".", 1)[1]
        dictionary = Dictionary.load(os.path.join(data, f"dict.{language}.txt"))
        dataset = data_utils.load_indexed_dataset(prefix, dictionary)
        out = os.path.join(folder, os.path.basename(prefix))
        builder = indexed_dataset.make_builder(out + ".bin", impl="mmap", vocab_size=len(dictionary))
        for i in range(min(count, len(dataset))):
            builder.add_item(dataset[i])
        builder.finalize(out + ".idx")
    return folder


def generate(checkpoint: str, data: str, batch_size: int, threads: int, sparse: bool) -> dict:
    """One fairseq-generate process: its wall time, fairseq's generation-loop time, sentences, BLEU, hypotheses."""
    fairseq_generate = os.path.join(os.path.dirname(sys.executable), "fairseq-generate")
    options = argparse.Namespace(data=data, subset="test", beam=5, batch_size=batch_size, remove_bpe="sentencepiece",
                                 references=None, generate_command=shlex.join(
                                     [fairseq_generate] + (["--sparse-inference"] if sparse else [])))
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the child's threads
    started = time.perf_counter()
    generated = scoring.generate(checkpoint, options)
    wall = time.perf_counter() - started
    translated, bleu = TRANSLATED.search(generated.log), BLEU.search(generated.log)
    if translated is None or bleu is None:
        raise SystemExit(f"fairseq-generate printed no timing or BLEU ({shlex.join(generated.command)}):\n"
                         f"{generated.log[-2000:]}")
    return {"wall": wall, "loop": float(translated.group(2)), "sentences": int(translated.group(1).replace(",", "")),
            "bleu": float(bleu.group(1)), "hyps": generated.hyps}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, sentences=1000, sentences_batch1=200, repeats=5,
                        repeats_help="rounds of one dense and one sparse run")
    args = parser.parse_args()
    labels = model_labels(args)
    started = time.perf_counter()
    print(f"fairseq-generate, beam 5, each run a process; seconds are medians of {args.repeats} rounds (dense and "
          "sparse alternating, the order swapped each round); ratio: dense time / sparse time, the median of the "
          "rounds' ratios, then the rounds' spread (max - min over the median)")
    print(f"{'model':<12} {'batch':>5} {'thr':>3} {'sents':>5} {'dense wall s':>12} {'sparse wall s':>13} "
          f"{'whole run':>15} {'dense loop s':>12} {'sparse loop s':>13} {'generation loop':>15} {'hyps differ':>11} "
          f"{'BLEU dense/sparse':>17}")
    work = tempfile.mkdtemp(prefix="whole-run-")
    try:
        subsets = {n: first_sentences(args.data, n, os.path.join(work, str(n)))
                   for n in {args.sentences_batch1 if b == 1 else args.sentences for b in args.batch_sizes}}
        for checkpoint, label in zip(args.checkpoints, labels):
            for batch_size in args.batch_sizes:
                for threads in args.threads:
                    data = subsets[args.sentences_batch1 if batch_size == 1 else args.sentences]
                    measure(checkpoint, label, data, batch_size, threads, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"benchmark wall time: {time.perf_counter() - started:.0f} s")


def measure(checkpoint: str, label: str, data: str, batch_size: int, threads: int, repeats: int) -> None:
    """Dense and sparse runs in alternating rounds; prints one row."""
    runs = {False: [], True: []}
    for round_ in range(repeats):
        for sparse in ((False, True) if round_ % 2 == 0 else (True, False)):
            runs[sparse].append(generate(checkpoint, data, batch_size, threads, sparse))
    dense, sparse = runs[False], runs[True]
    cells = []
    for key in ("wall", "loop"):
        ratios = [d[key] / s[key] for d, s in zip(dense, sparse)]
        ratio = statistics.median(ratios)
        cells += [f"{statistics.median(r[key] for r in dense):>12.2f}",
                  f"{statistics.median(r[key] for r in sparse):>13.2f}",
                  f"{ratio:>8.2f}x ({100 * (max(ratios) - min(ratios)) / ratio:>2.0f}%)"]
    differ = sum(dense[0]["hyps"].get(i) != h for i, h in sparse[0]["hyps"].items())
    print(f"{label[:12]:<12} {batch_size:>5} {threads:>3} {dense[0]['sentences']:>5} {cells[0]} {cells[1]} "
          f"{cells[2]:>15} {cells[3]} {cells[4]} {cells[5]:>15} {differ:>11} "
          f"{dense[0]['bleu']:>8.2f}/{sparse[0]['bleu']:.2f}", flush=True)


if __name__ == "__main__":
    main()
