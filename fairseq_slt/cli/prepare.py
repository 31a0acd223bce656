"""``fairseq-slt prepare``: Multi30k (or any gzip/plain parallel text) -> SentencePiece -> fairseq binaries.

Every stage skips itself when its output exists, so an interrupted preparation resumes.
"""
import gzip
import os
import shutil
import subprocess
import sys
import urllib.request

UPSTREAM = "https://github.com/multi30k/dataset/raw/master/data/task1/raw"
SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr", "test1": "test_2017_flickr"}


def add_arguments(parser):
    parser.add_argument("--raw-dir", default=os.environ.get("MULTI30K_DIR", "../shared/data/multi30k"),
                        help="folder with <split>.<lang>.gz; missing files are downloaded from upstream")
    parser.add_argument("--out", required=True, help="output folder (raw/, spm.model, data-bin/)")
    parser.add_argument("--src", default="en")
    parser.add_argument("--tgt", default="de")
    parser.add_argument("--vocab-size", type=int, default=8000, help="joint SentencePiece vocabulary")
    parser.add_argument("--train-lines", type=int, default=0, help="use only the first N training pairs (0: all)")
    parser.add_argument("--eval-lines", type=int, default=0, help="use only the first N valid/test pairs (0: all)")
    parser.add_argument("--workers", type=int, default=2)


def _read_lines(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def _fetch(raw_dir, name, download_dir):
    for candidate in (os.path.join(raw_dir, name), os.path.join(download_dir, name)):
        if os.path.isfile(candidate):
            return candidate
    target = os.path.join(download_dir, name)
    os.makedirs(download_dir, exist_ok=True)
    print(f"downloading {UPSTREAM}/{name}", flush=True)
    with urllib.request.urlopen(f"{UPSTREAM}/{name}", timeout=60) as response, open(target + ".part", "wb") as out:
        shutil.copyfileobj(response, out)
    os.replace(target + ".part", target)
    return target


def _write(path, lines):
    with open(path + ".part", "w", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)
    os.replace(path + ".part", path)


def prepare(args):
    import sentencepiece as spm

    text_dir, spm_dir = os.path.join(args.out, "text"), os.path.join(args.out, "spm")
    os.makedirs(text_dir, exist_ok=True)
    os.makedirs(spm_dir, exist_ok=True)
    for split, name in SPLITS.items():
        limit = args.train_lines if split == "train" else args.eval_lines
        for lang in (args.src, args.tgt):
            target = os.path.join(text_dir, f"{split}.{lang}")
            if not os.path.exists(target):
                lines = _read_lines(_fetch(args.raw_dir, f"{name}.{lang}.gz", os.path.join(args.out, "download")))
                _write(target, lines[:limit] if limit else lines)

    model_prefix = os.path.join(args.out, "spm")
    if not os.path.exists(model_prefix + ".model"):
        spm.SentencePieceTrainer.train(
            input=",".join(os.path.join(text_dir, f"train.{lang}") for lang in (args.src, args.tgt)),
            model_prefix=model_prefix, vocab_size=args.vocab_size, character_coverage=1.0,
            model_type="unigram", num_threads=args.workers, minloglevel=2,
            bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, hard_vocab_limit=False)
    processor = spm.SentencePieceProcessor(model_file=model_prefix + ".model")
    for split in SPLITS:
        for lang in (args.src, args.tgt):
            target = os.path.join(spm_dir, f"{split}.{lang}")
            if not os.path.exists(target):
                pieces = processor.encode(_read_lines(os.path.join(text_dir, f"{split}.{lang}")), out_type=str)
                _write(target, [" ".join(p) for p in pieces])

    dest = os.path.join(args.out, "data-bin")
    if not os.path.exists(os.path.join(dest, "preprocess.log")):
        prefix = lambda split: os.path.join(spm_dir, split)  # noqa: E731
        command = [
            shutil.which("fairseq-preprocess") or "fairseq-preprocess",
            "--source-lang", args.src, "--target-lang", args.tgt, "--joined-dictionary",
            "--trainpref", prefix("train"), "--validpref", prefix("valid"),
            "--testpref", f"{prefix('test')},{prefix('test1')}",
            "--destdir", dest + ".part", "--workers", str(args.workers),
        ]
        shutil.rmtree(dest + ".part", ignore_errors=True)
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise OSError(f"fairseq-preprocess failed: {result.stderr.strip().splitlines()[-1:]}")
        os.replace(dest + ".part", dest)
    print(dest)
    return dest


def main(args):
    try:
        prepare(args)
    except OSError as err:
        sys.exit(f"fairseq-slt prepare: error: {err}")
