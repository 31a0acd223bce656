"""The input contract, table-driven: every entry point x every kind of bad input x three properties.

Each row gives a command a bad input where it expects a file or folder, and checks that the command
1. says so in one line (``fairseq-slt ...: error: ...``, no traceback, nothing else on stderr),
2. exits with status 2 (a usage error: the user's to fix),
3. writes nothing: the folder the test works in is the same, file by file, before and after.
The ``fairseq-slt`` subcommands run in-process (an exception escaping them is a traceback); fairseq-train
and fairseq-generate run as processes.
"""
import gzip
import io
import os
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch

from conftest import MULTI30K, USER_DIR, load, run_tool, train
from fairseq_slt.cli.main import main as fairseq_slt

KINDS = ["missing", "folder", "fifo", "empty", "truncated", "garbage", "wrong shape", "NaN weights",
         "other architecture", "other vocabulary", "odd path"]


def _make(kind, folder, dense):
    """A bad input of ``kind`` in ``folder``; ``dense``: a good checkpoint the bad ones are made from."""
    path = os.path.join(folder, "input.pt")
    if kind == "missing":
        return path
    if kind == "folder":
        os.mkdir(path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "empty":
        open(path, "wb").close()
    elif kind == "truncated":
        data = open(dense, "rb").read()
        open(path, "wb").write(data[:len(data) // 2])
    elif kind == "garbage":
        open(path, "wb").write(os.urandom(5000))
    elif kind == "wrong shape":
        torch.save({"model": [1, 2, 3], "cfg": "not a config"}, path)
    elif kind == "odd path":  # a space and a newline in the name; the content is garbage
        path = os.path.join(folder, "my input\nfile.pt")
        open(path, "wb").write(os.urandom(5000))
    else:
        state = load(dense)
        model = state["model"]
        if kind == "NaN weights":
            model["decoder.layers.0.fc1.weight"][0, 0] = float("nan")
        elif kind == "other architecture":
            for key in [k for k in model if k.startswith("encoder.layers.0.")]:
                model[key.replace("layers.0.", "layers.1.")] = model[key].clone()
        elif kind == "empty history":
            state["optimizer_history"] = []
        elif kind == "other vocabulary":
            for key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                        "decoder.output_projection.weight"):
                model[key] = torch.zeros(model[key].shape[0] + 8, model[key].shape[1])
        torch.save(state, path)
    return path


def _snapshot(root):
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)  # a folder's mtime is not compared: fairseq-train probes a save dir with a
            seen[path] = (info.st_mode, info.st_size, None if os.path.isdir(path) else info.st_mtime_ns)  # file
    return seen


def _in_process(argv):
    """fairseq-slt ARGV in this process: (exit status, stderr, escaped exception)."""
    err, out = io.StringIO(), io.StringIO()
    escaped = None
    with redirect_stderr(err), redirect_stdout(out):
        try:
            status = fairseq_slt(argv)
        except SystemExit as stop:
            status = stop.code
        except BaseException as exc:  # noqa: B036 (a real process would print a traceback)
            status, escaped = 1, exc
    return status, err.getvalue(), escaped


def _check(label, status, stderr, escaped, before, after, prefix):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert escaped is None, (label, repr(escaped))
    assert "Traceback" not in stderr, (label, stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith(prefix), (label, lines)
    assert status == 2, (label, status, lines)
    assert before == after, (label, sorted(set(after) ^ set(before)) or "a file changed")


# subcommand -> argv with {input} for the bad input and {out} for an output inside the work folder; the kinds
# that are not bad for it (analyze reads any architecture, a NaN is a value it reports) are left out
CHECKPOINT_COMMANDS = {
    "analyze": (["analyze", "{input}", "--json", "{out}/analysis.json"], {"NaN weights", "other architecture",
                                                                           "other vocabulary"}),
    "compress": (["compress", "{input}", "{out}/compact.pt", "--json", "{out}/report.json"],
                 {"NaN weights", "other architecture", "other vocabulary"}),
    "decompress": (["decompress", "{input}", "{out}/plain.pt"], set()),
    "average": (["average", "--inputs", "{good}", "{input}", "--output", "{out}/average.pt"], {"NaN weights"}),
    "export-ct2": (["export-ct2", "{input}", "{out}/ct2", "--no-verify"], {"NaN weights"}),
    "unpack": (["unpack", "{input}", "{out}/run"], set()),  # an archive: no kind of these is one
}


@pytest.fixture(scope="module")
def good(dense_run, data_bin):
    return dense_run["best"]


@pytest.mark.parametrize("command", CHECKPOINT_COMMANDS)
def test_every_subcommand_taking_a_checkpoint_refuses_every_bad_one(command, good, tmp_path):
    argv, not_bad = CHECKPOINT_COMMANDS[command]
    for kind in KINDS:
        if kind in not_bad or (command == "export-ct2" and kind in ("other architecture", "other vocabulary")):
            continue
        work = tmp_path / kind.replace(" ", "_")
        work.mkdir()
        path = _make(kind, str(work), good)
        before = _snapshot(tmp_path)
        result = _in_process([a.format(input=path, out=work, good=good) for a in argv])
        _check((command, kind), *result, before, _snapshot(tmp_path), f"fairseq-slt {command}: error: ")


def test_export_ct2_refuses_checkpoints_of_another_architecture_or_vocabulary_for_its_data(good, tmp_path):
    """export-ct2 converts any architecture CTranslate2 knows; the data's dictionaries decide the vocabulary."""
    for kind in ("other vocabulary",):
        work = tmp_path / kind.replace(" ", "_")
        work.mkdir()
        path = _make(kind, str(work), good)
        before = _snapshot(tmp_path)
        result = _in_process(["export-ct2", path, str(work / "ct2"), "--no-verify"])
        _check(kind, *result, before, _snapshot(tmp_path), "fairseq-slt export-ct2: error: ")


FOLDER_KINDS = ["missing", "a file", "empty folder", "odd path"]


def _make_folder(kind, work):
    path = os.path.join(work, "runs")
    if kind == "a file":
        open(path, "w").write("not a folder")
    elif kind == "empty folder":
        os.mkdir(path)
    elif kind == "odd path":
        path = os.path.join(work, "my runs\nfolder")
    return path


@pytest.mark.parametrize("command, argv", [
    ("results", ["results", "{input}", "--json", "{out}/results.json"]),
    ("curve", ["curve", "{input}", "--references-dir", "{out}", "--tgt", "de", "--json", "{out}/curve.json"]),
    ("iterate", ["iterate", "--work-dir", "{out}/work", "--levels", "0.5", "--rewind-k", "2", "--", "{input}"]),
    ("pack", ["pack", "{input}", "{out}/run.tar.gz"]),
])
def test_every_subcommand_taking_a_folder_refuses_every_bad_one(command, argv, tmp_path):
    for kind in FOLDER_KINDS:
        work = tmp_path / kind.replace(" ", "_")
        work.mkdir()
        path = _make_folder(kind, str(work))
        before = _snapshot(tmp_path)
        result = _in_process([a.format(input=path, out=work) for a in argv])
        _check((command, kind), *result, before, _snapshot(tmp_path), f"fairseq-slt {command}: error: ")


def _corpus(folder, start=0, **changes):
    """A small parallel corpus (PREFIX.en/.de for train, dev, test) from Multi30k's lines from ``start`` on;
    ``changes``: file -> text."""
    text = {lang: gzip.open(os.path.join(MULTI30K, f"train.{lang}.gz"), "rt").read().splitlines()[start:start + 60]
            for lang in ("en", "de")}
    os.makedirs(folder, exist_ok=True)
    for lang, sentences in text.items():
        for name, part in (("train", sentences[:40]), ("dev", sentences[40:50]), ("test", sentences[50:])):
            with open(os.path.join(folder, f"{name}.{lang}"), "w") as handle:
                handle.write(changes.get(f"{name}.{lang}", "\n".join(part) + "\n"))
    return {"--train": f"{folder}/train", "--valid": f"{folder}/dev", "--test": f"{folder}/test"}


PREPARE_CASES = {  # label -> (what to change in the corpus, extra options, a fragment of the error)
    "empty training side": ({"train.de": ""}, [], "train: .*train.de holds no lines"),
    "different line counts": ({"train.de": "eins\nzwei\n"}, [], "the two sides have different numbers of lines"),
    "vocabulary size 0": ({}, ["--vocab-size", "0"], "--vocab-size must be at least 1, got 0"),
    "vocabulary below the characters": ({}, ["--vocab-size", "10"], "--vocab-size 10 is too small"),
    "missing side": ({}, ["--tgt", "fr"], "--train: no .*train.fr or .*train.fr.gz"),
    "partial option set": ({}, ["--drop", "--test"], "give --train, --valid and --test together.*--test missing"),
    "not UTF-8": ({}, [], "dev.en is not UTF-8 text"),  # Latin-1 bytes, written below
    "same languages": ({}, ["--tgt", "en"], "--src and --tgt must be two different language suffixes"),
    "negative line limit": ({}, ["--train-lines", "-1"], "--train-lines must be at least 0"),
}


@pytest.mark.parametrize("label", PREPARE_CASES)
def test_prepare_refuses_bad_input_before_writing_anything(label, tmp_path):
    import re

    changes, extra, fragment = PREPARE_CASES[label]
    corpus = _corpus(str(tmp_path / "raw"), **changes)
    if label == "not UTF-8":
        with open(tmp_path / "raw" / "dev.en", "wb") as handle:
            handle.write(b"caf\xe9\n" * 10)
    options = [x for pair in corpus.items() for x in pair]
    if "--drop" in extra:
        dropped = extra[extra.index("--drop") + 1]
        index = options.index(dropped)
        options = options[:index] + options[index + 2:]
        extra = []
    before = _snapshot(tmp_path)
    status, stderr, escaped = _in_process(["prepare", "--out", str(tmp_path / "out"), *options, "--vocab-size", "300",
                                           *extra])
    _check(label, status, stderr, escaped, before, _snapshot(tmp_path), "fairseq-slt prepare: error: ")
    assert re.search(fragment, stderr), (label, stderr)


def test_prepare_refuses_an_out_folder_that_holds_something_else(tmp_path):
    first, second = _corpus(str(tmp_path / "a")), _corpus(str(tmp_path / "b"), start=60)
    out = str(tmp_path / "out")
    as_options = lambda corpus: [x for pair in corpus.items() for x in pair]  # noqa: E731
    run_tool("fairseq-slt", "prepare", "--out", out, *as_options(first), "--vocab-size", 300)
    again = run_tool("fairseq-slt", "prepare", "--out", out, *as_options(first), "--vocab-size", 300)  # resumes
    assert again.stdout.strip().endswith("data-bin")
    cases = {
        "another corpus": (as_options(second) + ["--vocab-size", "300"], "holds another preparation (text/train.en"),
        "another vocabulary size": (as_options(first) + ["--vocab-size", "280"], "holds another preparation (vocab_size"),
    }
    os.remove(os.path.join(out, "prepare.json"))  # prepared before prepare.json: the text itself is compared
    status, stderr, escaped = _in_process(["prepare", "--out", out, *as_options(first), "--vocab-size", "300"])
    assert status == 0 and escaped is None and os.path.isfile(os.path.join(out, "prepare.json")), stderr
    for label, (options, fragment) in cases.items():
        before = _snapshot(str(tmp_path))
        result = _in_process(["prepare", "--out", out, *options])
        _check(label, *result, before, _snapshot(str(tmp_path)), "fairseq-slt prepare: error: ")
        assert fragment in result[1], (label, result[1])
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    before = _snapshot(str(tmp_path))
    result = _in_process(["prepare", "--out", str(other), *as_options(first)])
    _check("unrelated folder", *result, before, _snapshot(str(tmp_path)), "fairseq-slt prepare: error: ")
    assert "holds no preparation" in result[1]


@pytest.mark.parametrize("slot", ["--prune-mask-from", "--prune-rewind-from", "--restore-file"])
def test_fairseq_train_refuses_every_bad_checkpoint_in_one_line(slot, data_bin, dense_run, tmp_path):
    kinds = {"--prune-mask-from": KINDS, "--prune-rewind-from": ["empty history", "NaN weights", "truncated", "odd path"],
             "--restore-file": ["missing", "folder", "fifo", "empty", "truncated", "garbage", "wrong shape",
                                "odd path"]}[slot]
    for kind in kinds:
        work = tmp_path / kind.replace(" ", "_")
        work.mkdir()
        path = _make(kind, str(work), dense_run["best"])
        save = work / "save"
        save.mkdir()
        sources = {"--prune-mask-from": dense_run["best"], "--prune-rewind-from": dense_run["rewind4"], slot: path}
        options = (["--prune-method", "slt", "--prune-sparsity", "0.5", "--prune-mask-from", sources["--prune-mask-from"],
                    "--prune-rewind-from", sources["--prune-rewind-from"]] if slot != "--restore-file"
                   else ["--prune-method", "none", "--restore-file", path])
        before = _snapshot(str(tmp_path))
        result = train(data_bin, str(save), *options, check=False)
        _check((slot, kind), result.returncode, result.stderr, None, before, _snapshot(str(tmp_path)),
               "fairseq-slt: error: ")


def test_fairseq_generate_refuses_every_bad_checkpoint_in_one_line(data_bin, dense_run, tmp_path):
    for kind in ["missing", "folder", "fifo", "empty", "truncated", "garbage", "wrong shape", "odd path"]:
        work = tmp_path / kind.replace(" ", "_")
        work.mkdir()
        path = _make(kind, str(work), dense_run["best"])
        before = _snapshot(str(tmp_path))
        result = run_tool("fairseq-generate", data_bin, "--path", path, "--user-dir", USER_DIR, "--task",
                          "translation_slt", "--gen-subset", "valid", "--max-sentences", "8", "--cpu", check=False)
        _check(kind, result.returncode, result.stderr, None, before, _snapshot(str(tmp_path)), "fairseq-slt: error: ")


def test_iterate_names_the_options_its_user_gave(data_bin, tmp_path):
    cases = {
        "mp end before start": (["--combine", "slt-mp", "--intermediate", "0.5", "--mp-start", "4", "--mp-end", "4"],
                                r"--mp-end \(4\) must be greater than --mp-start \(4\) >= 0"),
        "mp frequency 0": (["--combine", "slt-mp", "--intermediate", "0.5", "--mp-end", "4", "--mp-frequency", "0"],
                           "--mp-frequency must be a positive number of updates, got 0"),
        "work dir is a file": (["--work-dir", str(tmp_path / "a-file")], "--work-dir .*a-file exists and is not a folder"),
    }
    (tmp_path / "a-file").write_text("mine")
    import re

    for label, (options, fragment) in cases.items():
        before = _snapshot(str(tmp_path))
        argv = ["iterate", "--work-dir", str(tmp_path / "work"), "--levels", "0.5,0.8", "--rewind-k", "2", *options,
                "--", data_bin, "--max-update", "8"]
        result = _in_process(argv)
        _check(label, *result, before, _snapshot(str(tmp_path)), "fairseq-slt iterate: error: ")
        assert re.search(fragment, result[1]), (label, result[1])


def test_several_processes_on_cpu_are_refused_once_before_any_starts(data_bin, tmp_path):
    """launch: a DDP backend that cannot run on CPU is one line from the launcher, not one per rank;
    fairseq-train asked for 2 processes on CPU without --distributed-no-spawn (fairseq would start none)."""
    for backend in (["--ddp-backend", "c10d"], []):  # fairseq's default, pytorch_ddp, cannot either
        before = _snapshot(str(tmp_path))
        result = _in_process(["launch", "--nproc", "2", "--", data_bin, "--cpu", *backend])
        _check(backend, *result, before, _snapshot(str(tmp_path)), "fairseq-slt launch: error: ")
        assert f"--ddp-backend {backend[1] if backend else 'pytorch_ddp'} does not run on CPU" in result[1]
    save = tmp_path / "spawn"
    save.mkdir()
    before = _snapshot(str(tmp_path))
    result = train(data_bin, str(save), "--prune-method", "none", "--distributed-world-size", "2",
                   "--ddp-backend", "legacy_ddp", check=False)
    _check("spawn on CPU", result.returncode, result.stderr, None, before, _snapshot(str(tmp_path)),
           "fairseq-slt: error: --distributed-world-size 2 without a GPU")


def test_no_output_is_replaced_without_force(dense_run, slt_run, tmp_path):
    """Each subcommand's outputs: an existing one is refused (one line, status 2, untouched) without --force."""
    existing = tmp_path / "existing"
    existing.write_text("mine")
    cases = {
        "analyze --json": ["analyze", slt_run["best"], "--json", str(existing)],
        "analyze --plot": ["analyze", slt_run["best"], "--plot", str(existing)],
        "compress OUTPUT": ["compress", slt_run["best"], str(existing)],
        "compress --json": ["compress", slt_run["best"], str(tmp_path / "new.pt"), "--json", str(existing)],
        "decompress OUTPUT": ["decompress", slt_run["best"], str(existing)],
        "average --output": ["average", "--inputs", slt_run["best"], "--output", str(existing)],
        "export-ct2 OUT_DIR": ["export-ct2", slt_run["best"], str(existing), "--no-verify"],
        "results --json": ["results", slt_run["dir"], "--no-score", "--json", str(existing)],
        "pack OUT": ["pack", slt_run["dir"], str(existing)],
        "curve --json": ["curve", dense_run["dir"], "--references-dir", str(tmp_path), "--tgt", "de", "--json",
                         str(existing)],
    }
    for label, argv in cases.items():
        before = _snapshot(str(tmp_path))
        result = _in_process(argv)
        _check(label, *result, before, _snapshot(str(tmp_path)), f"fairseq-slt {argv[0]}: error: ")
        assert "exists" in result[1] and "--force" in result[1], (label, result[1])
        assert existing.read_text() == "mine"


def test_a_mask_source_with_an_empty_optimizer_history_is_accepted(data_bin, dense_run, tmp_path):
    """A mask needs only weights: a source without an update number (another tool's) trains, no traceback."""
    path = _make("empty history", str(tmp_path), dense_run["best"])
    result = train(data_bin, str(tmp_path / "save"), "--prune-method", "slt", "--prune-sparsity", "0.5",
                   "--prune-mask-from", path, "--prune-rewind-from", dense_run["rewind4"], max_update=2, check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert load(tmp_path / "save" / "checkpoint_last.pt")["optimizer_history"][-1]["num_updates"] == 2
