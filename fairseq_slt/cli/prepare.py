"""``fairseq-slt prepare``: parallel text -> joint SentencePiece -> fairseq binaries.

By default it prepares Multi30k task 1 (``<split>.<lang>.gz`` in --raw-dir, fetched from upstream when
missing). With --train/--valid/--test it takes any corpus: file prefixes whose files are PREFIX.LANG or
PREFIX.LANG.gz. Writes OUT/text/ (the plain text of each split), OUT/spm.model and OUT/spm.vocab,
OUT/spm/ (the encoded text), OUT/data-bin/ (fairseq binaries, joined dictionary) and, when it fetches,
OUT/download/, and OUT/prepare.json (the options, the text's digests and, once written, the dictionaries'
digest that every run trained on them records). Everything is read and checked
before the first write; an --out that holds another preparation (other text or options) or anything else
is refused. Every stage skips itself when its output exists, so an interrupted preparation resumes.
"""
import gzip
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import urllib.request

from ..pruning import Failure, UserError, atomic_write_json, atomic_write_stream
from ..pruning.io import atomic_write_lines

UPSTREAM = "https://github.com/multi30k/dataset/raw/master/data/task1/raw"
MULTI30K = {"train": "train", "valid": "val", "test": "test_2016_flickr", "test1": "test_2017_flickr"}
MANIFEST = "prepare.json"  # what OUT holds: the options and a digest of each text file
# SentencePiece's unigram trainer splits its EM over its threads, and the pieces it keeps depend on how many
# (Multi30k at 4000 pieces: dictionaries 9435ec3c11fee991 on one thread, 6b9265b80baa7a59 on two): one thread
# always, so the same text and options give the same vocabulary on any machine and any --workers.
SPM_TRAINING_THREADS = 1


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
    parser.add_argument("--workers", type=int, default=2,
                        help="threads for fairseq-preprocess and SentencePiece's encoding (its training always runs "
                             "on one thread: the vocabulary it picks depends on the thread count)")


def _lines(path):
    """The file's lines (without their newline), streamed; gzip when the name ends in .gz."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                yield line.rstrip("\n")
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as err:
        raise UserError(f"{path} is not UTF-8 text{' in gzip' if path.endswith('.gz') else ''} "
                        f"({type(err).__name__})") from None


def _side(paths, limit):
    """The lines of one side of a split: its files concatenated, the first ``limit`` (0: all)."""
    count = 0
    for path in paths:
        for line in _lines(path):
            if limit and count >= limit:
                return
            count += 1
            yield line


def _fetch(raw_dir, name, download_dir):
    for candidate in (os.path.join(raw_dir, name), os.path.join(download_dir, name)):
        if os.path.isfile(candidate):
            return candidate
    target = os.path.join(download_dir, name)
    print(f"downloading {UPSTREAM}/{name}", flush=True)
    try:
        with urllib.request.urlopen(f"{UPSTREAM}/{name}", timeout=60) as response:
            atomic_write_stream(response, target)
    except OSError as err:
        raise Failure(f"{name} is not in --raw-dir {raw_dir} and downloading it failed ({err})") from None
    return target


def _own_file(prefix, lang, option):
    for path in (f"{prefix}.{lang}", f"{prefix}.{lang}.gz"):
        if os.path.isfile(path):
            return path
    raise UserError(f"{option}: no {prefix}.{lang} or {prefix}.{lang}.gz")


def check_options(args):
    for option, value, least in (("--vocab-size", args.vocab_size, 1), ("--workers", args.workers, 1),
                                 ("--spm-sample", args.spm_sample, 0), ("--train-lines", args.train_lines, 0),
                                 ("--eval-lines", args.eval_lines, 0)):
        if value < least:
            raise UserError(f"{option} must be at least {least}, got {value}")
    if args.src == args.tgt or not args.src or not args.tgt or "/" in args.src + args.tgt:
        raise UserError(f"--src and --tgt must be two different language suffixes, got {args.src!r} and {args.tgt!r}")


def splits(args):
    """split -> lang -> list of source files (the text of each split, concatenated)."""
    own = {"--train": args.train, "--valid": args.valid, "--test": args.test}
    if any(own.values()):
        missing = [option for option, value in own.items() if not value]
        if missing:
            raise UserError(f"give --train, --valid and --test together (or none of them, for Multi30k): "
                            f"{', '.join(missing)} missing")
        names = {"train": ("--train", args.train.split(",")), "valid": ("--valid", [args.valid])}
        names.update({f"test{i or ''}": ("--test", [prefix]) for i, prefix in enumerate(args.test.split(","))})
        return {split: {lang: [_own_file(p, lang, option) for p in prefixes] for lang in (args.src, args.tgt)}
                for split, (option, prefixes) in names.items()}
    download = os.path.join(args.out, "download")
    return {split: {lang: [_fetch(args.raw_dir, f"{name}.{lang}.gz", download)] for lang in (args.src, args.tgt)}
            for split, name in MULTI30K.items()}


class Digest:
    """A side's line count and a digest of its text, in one pass; ``characters``: a set to add the characters
    of its first ``sample`` lines to (0: of all)."""

    def __init__(self, lines, characters=None, sample=0):
        digest, self.count = hashlib.sha256(), 0
        for line in lines:  # sha256 of the lines joined by newlines
            digest.update((b"\n" if self.count else b"") + line.encode())
            if characters is not None and (not sample or self.count < sample):
                characters.update(line)
            self.count += 1
        self.hex = digest.hexdigest()[:16]


def scan(args, sources) -> dict:
    """Reads every input once, without keeping it, and checks it: split -> lang -> Digest. Nothing is written."""
    scanned, characters = {}, set()
    for split, files in sources.items():
        scanned[split] = {}
        for lang, paths in files.items():
            # SentencePiece keeps every character of the text it is trained on (a sample, with --spm-sample)
            scanned[split][lang] = Digest(_side(paths, _limit(args, split)),
                                          characters if split == "train" else None, args.spm_sample)
            if not scanned[split][lang].count:
                raise UserError(f"{split}: {', '.join(paths)} holds no lines")
        lengths = {lang: d.count for lang, d in scanned[split].items()}
        if len(set(lengths.values())) > 1:
            raise UserError(f"{split}: the two sides have different numbers of lines {lengths}")
    characters.discard(" ")
    if args.vocab_size <= len(characters):
        raise UserError(f"--vocab-size {args.vocab_size} is too small: the training text has {len(characters)} "
                        f"distinct characters, and SentencePiece keeps each of them and <unk> (use at least "
                        f"{len(characters) + 1})")
    return scanned


def _limit(args, split):
    return args.train_lines if split == "train" else args.eval_lines


def plan_of(args, scanned) -> dict:
    """What this preparation writes, as recorded in OUT/prepare.json and compared with a rerun's."""
    return {"format": "fairseq-slt-prepare", "version": 1, "src": args.src, "tgt": args.tgt,
            "vocab_size": args.vocab_size, "spm_sample": args.spm_sample,
            "text": {f"{split}.{lang}": d.hex for split, sides in scanned.items() for lang, d in sides.items()}}


def check_out(out, plan=None):
    """An --out that holds something else is refused (before the text is read: ``plan`` None; after: with
    the plan, a preparation of other text or options)."""
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise UserError(f"--out {out} exists and is not a folder")
    entries = set(os.listdir(out)) - {"download"}
    if not entries:
        return
    manifest = os.path.join(out, MANIFEST)
    if not os.path.isfile(manifest) and "text" not in entries:
        raise UserError(f"--out {out} is not empty and holds no preparation: use a new or empty folder")
    if plan is None:
        return
    if os.path.isfile(manifest):
        try:
            with open(manifest) as handle:
                recorded = json.load(handle)
        except (OSError, ValueError):
            raise UserError(f"{manifest} is unreadable: it records what --out {out} holds") from None
    else:  # prepared before prepare.json existed: its text tells
        recorded = dict(plan, text={name: _digest_file(os.path.join(out, "text", name)) for name in plan["text"]})
    changed = [key for key in ("src", "tgt", "vocab_size", "spm_sample") if recorded.get(key) != plan[key]]
    changed += [f"text/{name}" for name, digest in plan["text"].items() if (recorded.get("text") or {}).get(name) != digest]
    changed += [f"text/{name}" for name in (recorded.get("text") or {}) if name not in plan["text"]]
    if changed:
        raise UserError(f"--out {out} holds another preparation ({', '.join(changed[:4])} differ"
                        f"{' and more' if len(changed) > 4 else ''}): use another --out")


def _digest_file(path):
    return Digest(_lines(path)).hex if os.path.isfile(path) else None


def _encoded(processor, lines, chunk=10000):
    """SentencePiece pieces of each line, joined by spaces; encoded a chunk at a time (its batch call is
    multithreaded), so a large corpus is never held whole."""
    lines = iter(lines)
    while batch := list(itertools.islice(lines, chunk)):
        yield from (" ".join(pieces) for pieces in processor.encode(batch, out_type=str))


def prepare(args):
    import sentencepiece as spm

    check_options(args)
    check_out(args.out)
    sources = splits(args)
    scanned = scan(args, sources)
    plan = plan_of(args, scanned)
    check_out(args.out, plan)
    # every check done: from here on, writes (each stage skips itself when its output exists)
    text_dir, spm_dir = os.path.join(args.out, "text"), os.path.join(args.out, "spm")
    if not os.path.isfile(os.path.join(args.out, MANIFEST)):
        atomic_write_json(plan, os.path.join(args.out, MANIFEST))
    for split, files in sources.items():
        for lang, paths in files.items():
            target = os.path.join(text_dir, f"{split}.{lang}")
            if not os.path.exists(target):
                atomic_write_lines(_side(paths, _limit(args, split)), target)

    model_prefix = os.path.join(args.out, "spm")
    if not os.path.exists(model_prefix + ".model"):
        options = {}
        if args.spm_sample:
            options = {"input_sentence_size": args.spm_sample, "shuffle_input_sentence": True}
        os.makedirs(spm_dir, exist_ok=True)
        partial = os.path.join(spm_dir, ".training")
        try:
            spm.SentencePieceTrainer.train(
                input=",".join(os.path.join(text_dir, f"train.{lang}") for lang in (args.src, args.tgt)),
                model_prefix=partial, vocab_size=args.vocab_size, character_coverage=1.0,
                model_type="unigram", num_threads=SPM_TRAINING_THREADS, minloglevel=2,
                bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, hard_vocab_limit=False, **options)
        except RuntimeError as err:
            raise Failure(f"SentencePiece could not train a model: {str(err).strip().splitlines()[-1]}") from None
        os.replace(partial + ".vocab", model_prefix + ".vocab")
        os.replace(partial + ".model", model_prefix + ".model")
    processor = spm.SentencePieceProcessor(model_file=model_prefix + ".model")
    for split in sources:
        for lang in (args.src, args.tgt):
            target = os.path.join(spm_dir, f"{split}.{lang}")
            if not os.path.exists(target):
                atomic_write_lines(_encoded(processor, _lines(os.path.join(text_dir, f"{split}.{lang}"))), target)

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
            raise Failure(f"fairseq-preprocess failed: {(result.stderr.strip().splitlines() or ['no message'])[-1]}")
        os.replace(dest + ".part", dest)
    record_dictionaries(args, dest)
    print(dest)
    return dest


def record_dictionaries(args, dest):
    """Adds the dictionaries' digest (and the SentencePiece release that made them) to OUT/prepare.json, once."""
    import sentencepiece as spm
    from ..checkpoints import dictionary_files_digest

    manifest = os.path.join(args.out, MANIFEST)
    with open(manifest) as handle:  # written before the first stage, and checked by check_out
        recorded = json.load(handle)
    if "dictionaries" not in recorded:
        recorded.update(dictionaries=dictionary_files_digest(dest, args.src, args.tgt), sentencepiece=spm.__version__)
        atomic_write_json(recorded, manifest)


def main(args):
    prepare(args)
