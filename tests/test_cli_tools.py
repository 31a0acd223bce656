"""fairseq-slt analyze, user-dir resolution and packaging."""
import json
import os
import subprocess
import sys
import zipfile

import torch

from conftest import MULTI30K, ROOT, load, run_tool
from fairseq_slt.pruning import Mask


def test_analyze_reports_sparsity_overlap_and_sign_agreement(dense_run, slt_run, tmp_path):
    slt_mask = os.path.join(slt_run["dir"], "mask.pt")
    rewind = os.path.join(slt_run["dir"], "checkpoint_rewind_4.pt")
    half = Mask({n: torch.ones_like(k) for n, k in Mask.load(slt_mask).items()})
    first = next(iter(half))
    half[first].view(-1)[: half[first].numel() // 2] = False
    half_path = str(tmp_path / "half.pt")
    half.save(half_path)
    report, plot = str(tmp_path / "report.json"), str(tmp_path / "sparsity.png")
    result = run_tool("fairseq-slt", "analyze", slt_run["best"], slt_mask, dense_run["best"], half_path,
                      "--signs", slt_run["best"], rewind, "--json", report, "--plot", plot)
    data = json.load(open(report))
    inputs = data["inputs"]
    assert abs(inputs[slt_mask]["sparsity"] - 0.8) < 1e-3 and inputs[slt_run["best"]] == inputs[slt_mask]
    assert inputs[dense_run["best"]]["sparsity"] < 0.01  # no stored mask: its nonzero weights
    assert inputs[half_path]["layers"][first] == 0.5
    same = next(o for o in data["overlap"] if o["first"] == slt_run["best"] and o["second"] == slt_mask)
    assert same["jaccard"] == 1.0 and same["share_of_first_kept"] == 1.0
    with_half = next(o for o in data["overlap"] if o["first"] == slt_mask and o["second"] == half_path)
    expected = sum(int((Mask.load(slt_mask)[n] & half[n]).sum()) for n in half)
    assert with_half["kept_in_both"] == expected
    # the trained model's kept weights vs its rewind point: computed by hand here
    trained, theta, mask = load(slt_run["best"])["model"], load(rewind)["model"], Mask.load(slt_mask)
    agree = total = 0
    for name, keep in mask.items():
        both = keep & (trained[name] != 0) & (theta[name] != 0)
        agree += int((torch.sign(trained[name]) == torch.sign(theta[name]))[both].sum())
        total += int(both.sum())
    assert abs(data["signs"][0]["agreement"] - agree / total) < 1e-12
    assert "total" in result.stdout and "sign agreement" in result.stdout
    assert open(plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    bad = run_tool("fairseq-slt", "analyze", slt_mask, str(tmp_path / "missing.pt"), check=False)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [
        f"fairseq-slt analyze: error: input not found: {tmp_path / 'missing.pt'}"]
    folder = run_tool("fairseq-slt", "analyze", slt_mask, str(tmp_path), check=False)  # a folder, not "not found"
    assert folder.returncode != 0 and folder.stderr.strip().splitlines() == [
        f"fairseq-slt analyze: error: input {tmp_path} is not a file"]


def test_relative_user_dir_resolves_beside_fairseq():
    """fairseq resolves '--user-dir fairseq_slt' beside its package: a regular install puts us there,
    an editable one gets a link from 'fairseq-slt link-user-dir' (run by scripts/setup_env.sh)."""
    import fairseq

    beside = os.path.join(os.path.dirname(os.path.dirname(fairseq.__file__)), "fairseq_slt")
    assert os.path.realpath(beside) == os.path.realpath(os.path.join(ROOT, "fairseq_slt"))
    printed = run_tool("fairseq-slt", "user-dir").stdout.strip()
    assert os.path.isabs(printed) and os.path.realpath(printed) == os.path.realpath(beside)


def test_user_dir_by_the_checkouts_path_or_the_link_beside_fairseq_after_an_import(tmp_path):
    """A program that imports the plugin (e.g. for the hub, `import fairseq_slt.tasks`) and then hands fairseq
    `user_dir=` one of the package's two paths: fairseq compares it with the package's __path__ as text, and the
    other path ended in "not globally unique". Imported through the checkout (cwd) and through the link."""
    import fairseq

    link = os.path.join(os.path.dirname(os.path.dirname(fairseq.__file__)), "fairseq_slt")
    real = os.path.realpath(os.path.join(ROOT, "fairseq_slt"))
    code = ("import argparse, sys, fairseq_slt, fairseq.utils as u\n"
            "print(fairseq_slt.__file__)\n"
            "[u.import_user_module(argparse.Namespace(user_dir=path)) for path in sys.argv[1:]]\n")
    imported = set()
    for cwd in (ROOT, str(tmp_path)):
        done = subprocess.run([sys.executable, "-c", code, real, link], cwd=cwd, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONWARNINGS="ignore"), timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        imported.add(os.path.dirname(done.stdout.strip()))
    assert imported == {real, link} or real == link, imported  # each way in was taken


def test_wheel_installs_the_package_beside_fairseq(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    ROOT], check=True, capture_output=True)
    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    for module in ("fairseq_slt/__init__.py", "fairseq_slt/tasks/translation_slt.py",
                   "fairseq_slt/criterions/label_smoothed_cross_entropy_slt.py", "fairseq_slt/pruning/select.py"):
        assert module in names  # top-level in site-packages, beside fairseq/
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "fairseq-slt = fairseq_slt.cli.main:main" in zipfile.ZipFile(tmp_path / wheel).read(entry_points).decode()


def test_analyze_signs_refuses_checkpoints_of_other_architectures(slt_run, tmp_path):
    rewind = os.path.join(slt_run["dir"], "checkpoint_rewind_4.pt")
    deeper = load(rewind)
    for key in [k for k in deeper["model"] if k.startswith("encoder.layers.0.")]:
        deeper["model"][key.replace("layers.0.", "layers.1.")] = deeper["model"][key].clone()
    deeper_path = str(tmp_path / "deeper.pt")
    torch.save(deeper, deeper_path)
    for trained, other, message in (
            (slt_run["best"], deeper_path, f"REWIND checkpoint {deeper_path} does not match the model: unexpected "
                                           "encoder.layers.1."),
            (deeper_path, rewind, f"REWIND checkpoint {rewind} does not match the model: it has no encoder.layers.1.")):
        result = run_tool("fairseq-slt", "analyze", slt_run["best"], "--signs", trained, other, check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1, result.stderr[-2000:]
        assert lines[0].startswith(f"fairseq-slt analyze: error: {message}"), lines[0]


def test_options_lists_every_option_the_plugin_adds_with_its_help():
    import dataclasses

    from fairseq.tasks.translation import TranslationConfig

    from fairseq_slt.tasks.translation_slt import TranslationSLTConfig

    ours = [f for f in dataclasses.fields(TranslationSLTConfig)
            if f.name not in {g.name for g in dataclasses.fields(TranslationConfig)} and "help" in f.metadata]
    assert {f.name for f in ours} >= {"prune_method", "prune_sparsity", "prune_mask_from", "save_rewind_points"}
    table = run_tool("fairseq-slt", "options", "--markdown").stdout
    for field in ours:
        option = "--" + field.name.replace("_", "-")
        assert f"| `{option}` |" in table and field.metadata["help"] in table, option
    text = run_tool("fairseq-slt", "options").stdout
    assert "fairseq-train --help does not show them" in text and "--prune-clt-random-signs" in text


def test_prepare_takes_your_own_corpus_files_and_documents_its_outputs(tmp_path):
    import gzip

    raw = tmp_path / "raw"
    raw.mkdir()
    lines = {lang: gzip.open(os.path.join(MULTI30K, f"train.{lang}.gz"), "rt").read().splitlines()[:700]
             for lang in ("en", "de")}
    for lang, text in lines.items():
        (raw / f"part1.{lang}").write_text("\n".join(text[:400]) + "\n")
        with gzip.open(raw / f"part2.{lang}.gz", "wt") as handle:  # gzip and plain files mix
            handle.write("\n".join(text[400:600]) + "\n")
        (raw / f"dev.{lang}").write_text("\n".join(text[600:650]) + "\n")
        (raw / f"test_a.{lang}").write_text("\n".join(text[650:680]) + "\n")
        (raw / f"test_b.{lang}").write_text("\n".join(text[680:700]) + "\n")
    out = tmp_path / "out"
    run_tool("fairseq-slt", "prepare", "--out", out, "--train", f"{raw}/part1,{raw}/part2", "--valid", f"{raw}/dev",
             "--test", f"{raw}/test_a,{raw}/test_b", "--vocab-size", 300)
    assert (out / "text" / "train.de").read_text().splitlines() == lines["de"][:600]
    assert (out / "spm.model").is_file() and (out / "spm" / "test1.en").is_file()
    binaries = os.listdir(out / "data-bin")
    assert {"test.en-de.en.bin", "test1.en-de.de.bin", "valid.en-de.en.idx", "dict.en.txt"} <= set(binaries)
    (raw / "bad.en").write_text("one\ntwo\n")
    (raw / "bad.de").write_text("eins\n")
    bad = run_tool("fairseq-slt", "prepare", "--out", tmp_path / "bad", "--train", f"{raw}/bad", "--valid",
                   f"{raw}/dev", "--test", f"{raw}/test_a", check=False)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [
        "fairseq-slt prepare: error: train: the two sides have different numbers of lines {'en': 2, 'de': 1}"]
    helptext = run_tool("fairseq-slt", "prepare", "--help").stdout
    assert "text/" in helptext and "spm/" in helptext and "(default: 8000)" in helptext and "--test TEST" in helptext


def test_prepare_builds_one_vocabulary_whatever_its_workers_and_records_its_digest(data_bin, dense_run, tmp_path):
    """SentencePiece's vocabulary changes with its training threads (on these 2000 lines too): the session's data
    (--workers 2, the default) and a preparation on one worker must hold the same dictionaries, and prepare.json
    must record the digest that a run trained on them records."""
    out = tmp_path / "one_worker"
    run_tool("fairseq-slt", "prepare", "--raw-dir", MULTI30K, "--out", out, "--train-lines", 2000,
             "--eval-lines", 100, "--vocab-size", 1000, "--workers", 1)
    for lang in ("en", "de"):
        assert (out / "data-bin" / f"dict.{lang}.txt").read_bytes() == open(os.path.join(data_bin, f"dict.{lang}.txt"), "rb").read()
    trained_with = json.load(open(os.path.join(dense_run["dir"], "run.json")))["identity"]["dictionaries"]
    for manifest in (out / "prepare.json", os.path.join(os.path.dirname(data_bin), "prepare.json")):
        assert json.load(open(manifest))["dictionaries"] == trained_with


def test_written_files_follow_the_users_umask(tmp_path):
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        previous = os.umask(umask)
        try:
            path = tmp_path / f"mask_{umask:o}.pt"
            Mask({"w": torch.ones(3, dtype=torch.bool)}).save(str(path), str(path) + ".json")
        finally:
            os.umask(previous)
        assert os.stat(path).st_mode & 0o777 == mode and os.stat(str(path) + ".json").st_mode & 0o777 == mode


def test_analyze_labels_tell_inputs_with_the_same_folder_name_apart(slt_run, tmp_path):
    from fairseq_slt.cli.analyze import short_labels

    first, second = tmp_path / "a" / "slt_0.8", tmp_path / "b" / "slt_0.8"
    for folder in (first, second):
        os.makedirs(folder)
        Mask.load(os.path.join(slt_run["dir"], "mask.pt")).save(str(folder / "mask.pt"))
    paths = [str(first / "mask.pt"), str(second / "mask.pt")]
    assert short_labels(paths) == ["a/slt_0.8/mask", "b/slt_0.8/mask"]
    plot = str(tmp_path / "plot.png")
    run_tool("fairseq-slt", "analyze", *paths, "--plot", plot)
    assert open(plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_help_states_each_default_once_and_no_empty_ones():
    from fairseq_slt.cli.main import SUBCOMMANDS, build_parser
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    for name in SUBCOMMANDS:
        text = commands.choices[name].format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, name
        for option in text.split("\n  -")[1:]:
            assert option.count("default") <= 1, (name, option)
    results = " ".join(commands.choices["results"].format_help().split())
    assert "(default: test)" in results and "(default: 5)" in results


def test_results_on_a_run_whose_run_json_is_broken_says_so_in_one_line(slt_run, tmp_path):
    import shutil

    run = tmp_path / "runs" / "slt"
    shutil.copytree(slt_run["dir"], run)
    manifest = run / "run.json"
    for content, fragment in (("{not json", "is not a readable JSON file (JSONDecodeError)"),
                              ('{"command": []}', "has no run identity")):
        manifest.write_text(content)
        result = run_tool("fairseq-slt", "results", tmp_path / "runs", "--no-score", "--json", tmp_path / "r.json",
                          check=False)
        assert result.returncode == 2 and result.stderr.strip().splitlines() == [
            f"fairseq-slt results: error: {manifest} {fragment}: restore it, or move the run out of the folders given"]
        assert not (tmp_path / "r.json").exists()


def test_results_counts_runs_with_the_same_weights_once_and_lists_the_copies(slt_run, tmp_path):
    """Two folders holding the same trained weights are one model, not two seeds; a one-ulp change is another run."""
    import shutil

    runs = tmp_path / "runs"
    for name in ("a", "b", "c"):
        shutil.copytree(slt_run["dir"], runs / name)
    changed = load(runs / "c" / "checkpoint_best.pt")
    weight = next(t for k, t in changed["model"].items() if k.endswith("fc1.weight"))
    kept = weight.nonzero()[0].tolist()
    weight[tuple(kept)] = torch.nextafter(weight[tuple(kept)], torch.tensor(float("inf")))  # the same mask
    torch.save(changed, runs / "c" / "checkpoint_best.pt")
    run_tool("fairseq-slt", "results", runs, "--no-score", "--json", tmp_path / "r.json")
    result = json.load(open(tmp_path / "r.json"))
    assert [row["run"] for row in result["rows"]] == [str(runs / "a"), str(runs / "c")]
    assert result["copies"] == [{"run": str(runs / "b"), "same_weights_as": str(runs / "a")}]


def test_results_never_scores_a_checkpoint_less_sparse_than_its_run_asked_for(data_bin, tmp_path):
    """A best saved mid-schedule (as the plugin allowed before) is not the run's model: the last checkpoint,
    at the target, is scored and the table says so."""
    import shutil

    from conftest import train
    save = tmp_path / "runs" / "mp"
    train(data_bin, save, "--prune-method", "mp", "--prune-sparsity", "0.9", "--prune-start", "0", "--prune-end", "6",
          "--prune-frequency", "2", "--save-interval-updates", "2", max_update=8)
    shutil.copy(save / "checkpoint_1_2.pt", save / "checkpoint_best.pt")  # at the schedule's first step, not 90 %
    run_tool("fairseq-slt", "results", tmp_path / "runs", "--no-score", "--json", tmp_path / "r.json",
             "--table", tmp_path / "t.md")
    (row,) = json.load(open(tmp_path / "r.json"))["rows"]
    assert row["checkpoint"] == str(save / "checkpoint_last.pt") and abs(row["sparsity"] - 0.9) < 0.005
    # named from the folder that holds the runs: a committed table names no machine's paths
    assert "\nScored another checkpoint: mp: checkpoint_best.pt is at sparsity 0." in open(tmp_path / "t.md").read()
