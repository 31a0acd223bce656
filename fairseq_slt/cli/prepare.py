"""``fairseq-slt prepare``: parallel text -> joint SentencePiece -> fairseq binaries.

By default it prepares Multi30k task 1 (``<split>.<lang>.gz`` in --raw-dir, fetched from upstream when
missing). With --train/--valid/--test it takes any corpus: file prefixes whose files are PREFIX.LANG or
PREFIX.LANG.gz. Writes OUT/text/ (the plain text of each split), OUT/spm.model and OUT/spm.vocab,
OUT/spm/ (the encoded text), OUT/data-bin/ (fairseq binaries, joined dictionary) and, when it fetches,
OUT/download/. Every stage skips itself when its output exists, so an interrupted preparation resumes.
"""
import gzip
import os
import shutil
import subprocess
import sys
import urllib.request

UPSTREAM = "https://github.com/multi30k/dataset/raw/master/data/task1/raw"
MULTI30K = {"train": "train", "valid": "val", "test": "test_2016_flickr", "test1": "test_2017_flickr"}


def add_arguments(parser):
    parser.add_argument("--out", required=True, help="output folder (text/, spm/, spm.model, data-bin/)")
    parser.add_argument("--raw-dir", default=os.environ.get("MULTI30K_DIR", "../shared/data/multi30k"),
                        help="Multi30k: folder with <split>.<lang>.gz; missing files are downloaded from upstream "
                             "(default: $MULTI30K_DIR or ../shared/data/multi30k)")
    parser.add_argument("--train", help="your own corpus: comma-separated file prefixes of the training data "
                                        "(PREFIX.LANG or PREFIX.LANG.gz; several are concatenated)")
    parser.add_argument("--valid", help="your own corpus: file prefix of the validation set")
    parser.add_argument("--test", help="your own corpus: comma-separated file prefixes of the test sets "
                                       "(fairseq subsets test, test1, ...)")
    parser.add_argument("--src", default="en", help="source language suffix")
    parser.add_argument("--tgt", default="de", help="target language suffix")
    parser.add_argument("--vocab-size", type=int, default=8000, help="joint SentencePiece vocabulary size")
    parser.add_argument("--spm-sample", type=int, default=0,
                        help="train SentencePiece on at most this many sentences (0: all), for large corpora")
    parser.add_argument("--train-lines", type=int, default=0, help="use only the first N training pairs (0: all)")
    parser.add_argument("--eval-lines", type=int, default=0, help="use only the first N valid/test pairs (0: all)")
    parser.add_argument("--workers", type=int, default=2, help="threads for SentencePiece and fairseq-preprocess")


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


def _own_file(prefix, lang):
    for path in (f"{prefix}.{lang}", f"{prefix}.{lang}.gz"):
        if os.path.isfile(path):
            return path
    raise OSError(f"no {prefix}.{lang} or {prefix}.{lang}.gz")


def splits(args):
    """split -> lang -> list of source files (the text of each split, concatenated)."""
    own = [args.train, args.valid, args.test]
    if any(own):
        if not all(own):
            raise OSError("give --train, --valid and --test together (or none of them, for Multi30k)")
        names = {"train": args.train.split(","), "valid": [args.valid]}
        names.update({f"test{i or ''}": [prefix] for i, prefix in enumerate(args.test.split(","))})
        return {split: {lang: [_own_file(p, lang) for p in prefixes] for lang in (args.src, args.tgt)}
                for split, prefixes in names.items()}
    download = os.path.join(args.out, "download")
    return {split: {lang: [_fetch(args.raw_dir, f"{name}.{lang}.gz", download)] for lang in (args.src, args.tgt)}
            for split, name in MULTI30K.items()}


def _write(path, lines):
    with open(path + ".part", "w", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)
    os.replace(path + ".part", path)


def prepare(args):
    import sentencepiece as spm

    text_dir, spm_dir = os.path.join(args.out, "text"), os.path.join(args.out, "spm")
    os.makedirs(text_dir, exist_ok=True)
    os.makedirs(spm_dir, exist_ok=True)
    sources = splits(args)
    for split, files in sources.items():
        limit = args.train_lines if split == "train" else args.eval_lines
        lengths = {}
        for lang, paths in files.items():
            target = os.path.join(text_dir, f"{split}.{lang}")
            if not os.path.exists(target):
                lines = [line for path in paths for line in _read_lines(path)]
                _write(target, lines[:limit] if limit else lines)
            with open(target, encoding="utf-8") as handle:
                lengths[lang] = sum(1 for _ in handle)
        if len(set(lengths.values())) > 1:
            raise OSError(f"{split}: the two sides have different numbers of lines {lengths}")

    model_prefix = os.path.join(args.out, "spm")
    if not os.path.exists(model_prefix + ".model"):
        options = {}
        if args.spm_sample:
            options = {"input_sentence_size": args.spm_sample, "shuffle_input_sentence": True}
        spm.SentencePieceTrainer.train(
            input=",".join(os.path.join(text_dir, f"train.{lang}") for lang in (args.src, args.tgt)),
            model_prefix=model_prefix, vocab_size=args.vocab_size, character_coverage=1.0,
            model_type="unigram", num_threads=args.workers, minloglevel=2,
            bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, hard_vocab_limit=False, **options)
    processor = spm.SentencePieceProcessor(model_file=model_prefix + ".model")
    for split in sources:
        for lang in (args.src, args.tgt):
            target = os.path.join(spm_dir, f"{split}.{lang}")
            if not os.path.exists(target):
                pieces = processor.encode(_read_lines(os.path.join(text_dir, f"{split}.{lang}")), out_type=str)
                _write(target, [" ".join(p) for p in pieces])

    dest = os.path.join(args.out, "data-bin")
    if not os.path.exists(os.path.join(dest, "preprocess.log")):
        prefix = lambda split: os.path.join(spm_dir, split)  # noqa: E731
        tests = [split for split in sources if split.startswith("test")]
        tool = shutil.which("fairseq-preprocess")  # else this Python's (a virtualenv not on PATH)
        command = [
            *([tool] if tool else [sys.executable, "-m", "fairseq_cli.preprocess"]),
            "--source-lang", args.src, "--target-lang", args.tgt, "--joined-dictionary",
            "--trainpref", prefix("train"), "--validpref", prefix("valid"),
            "--testpref", ",".join(prefix(t) for t in tests), "--destdir", dest + ".part", "--workers", str(args.workers),
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
