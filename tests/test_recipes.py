"""The Multi30k table recipe end to end in a tiny setting, and fairseq-slt results on its runs."""
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

from conftest import MULTI30K, ROOT, TINY_MODEL, TRAINING, env, load, short_generate, train_killed_when

RECIPE = os.path.join(ROOT, "examples", "multi30k")


SHORT_GENERATE = short_generate("fairseq-generate")  # on the recipes' PATH, hypotheses cut at 20 tokens


def recipe_env(work, **extra):
    variables = dict(env(), SLT_NO_SETUP="1", WORK=work, MULTI30K_DIR=MULTI30K, THREADS="1", MAX_UPDATE="8",
                     REWIND_K="2", LEVELS="0.5 0.8", MP_END="6", MP_FREQ="2", VOCAB_SIZE="1000", BEAM="2",
                     PREPARE_ARGS="--train-lines 2000 --eval-lines 100", ARCH_ARGS=" ".join(TINY_MODEL),
                     TRAIN_ARGS=" ".join(TRAINING), GENERATE_COMMAND=SHORT_GENERATE)
    variables.update(extra)
    return variables


def recipe(script, work, **extra):
    return subprocess.run(["bash", os.path.join(RECIPE, script)], env=recipe_env(work, **extra), capture_output=True,
                          text=True, timeout=900)


def test_the_table_recipe_runs_every_method_and_ends_in_a_table(tmp_path):
    work = str(tmp_path / "work")
    bad = recipe("run_table.sh", work, STREAMS="3")
    assert bad.returncode == 1 and bad.stderr.splitlines() == ["error: STREAMS must be 1 or 2, got 3"]
    assert not os.path.exists(work)
    # two chains of runs in parallel, as on 2 cores; one chain failing (a stage made with other settings) lets
    # the other finish and fails the script; a rerun goes on where each stopped
    planted = os.path.join(work, "mp", "mp_0.5", "recipe-settings.txt")
    os.makedirs(os.path.dirname(planted))
    open(planted, "w").write("MAX_UPDATE=9\n")
    failed = recipe("run_table.sh", work, STREAMS="2")
    assert failed.returncode == 1 and failed.stdout.splitlines()[-1] == "error: stream(s) b failed (lines above; rerun to resume)"
    assert "[b] error: " + os.path.dirname(planted) + " was made with other settings" in failed.stdout
    assert os.path.isfile(os.path.join(work, "controls", "clt_0.5_random_signs", ".done"))  # chain a went on
    os.remove(planted)
    result = recipe("run_table.sh", work, STREAMS="2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[a] fairseq-slt iterate: 2 stages, 2 finished" in result.stdout
    assert "[b] mp/mp_0.5: training" in result.stdout
    table = open(os.path.join(work, "results", "table.md")).read()
    header = table.splitlines()[0]
    for label in ("mp", "lt", "slt", "clt", "clt (random signs)", "slt-mp", "mp-slt"):
        assert f"| {label} |" in header, header
    first_table = table.split("\n\n")[0].splitlines()
    rows = {line.split(" | ")[0].strip("| "): line for line in first_table[2:] if line.startswith("|")}
    assert set(rows) == {"0 (dense)", "50 %", "80 %"}
    assert "BLEU signature: `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in table
    assert open(os.path.join(work, "results", "bleu_vs_sparsity.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    data = json.load(open(os.path.join(work, "results", "results.json")))
    by_run = {os.path.relpath(r["run"], work): r for r in data["rows"]}
    assert sorted(by_run) == sorted(["dense", "mp/mp_0.5", "mp/mp_0.8", "slt/slt_0.5", "slt/slt_0.8", "lt/lt_0.5",
                                     "lt/lt_0.8", "clt/clt_0.5", "clt/clt_0.8", "controls/clt_0.5_random_signs",
                                     "slt-mp/mp_0.8", "mp-slt/slt_0.8"])
    assert by_run["slt-mp/mp_0.8"]["label"] == "slt-mp" and by_run["mp-slt/slt_0.8"]["label"] == "mp-slt"
    for run, row in by_run.items():
        mask = load(row["checkpoint"])["extra_state"]["TranslationSLTTask"]["mask"]
        assert abs(row["sparsity"] - row["target_sparsity"]) < 1e-3, run  # measured from the checkpoint
        assert (mask is None) == (run == "dense")
        assert row["train_command"][0].endswith("fairseq-train") and "--save-dir" in row["train_command"]
        assert row["score"]["sentences"] == 100 and row["score"]["signature"].startswith("nrefs:1")
        assert "--path" in row["score"]["command"] and "--beam 2" in row["score"]["command"]
        assert row["score"]["command"].startswith(SHORT_GENERATE)  # the recipe's GENERATE_COMMAND
        assert row["bitmap_fp32_bytes"] < row["dense_fp32_bytes"] or run == "dense"
        last = load(os.path.join(row["run"], "checkpoint_last.pt"))["extra_state"]["previous_training_time"]
        assert 0 < row["train_seconds"] == round(last, 1), run
    assert data["unfinished"] == []
    # what each cell cost in all: SLT at 80 % needs dense and SLT 50 %; SLT-MP also SLT 80 %; MP only itself
    cost = {run: (by_run[run]["cost_runs"], by_run[run]["cost_updates"]) for run in by_run}
    assert cost["dense"] == (1, 8) and cost["mp/mp_0.8"] == (1, 8) and cost["slt/slt_0.8"] == (3, 24)
    assert cost["slt-mp/mp_0.8"] == (3, 24) and cost["mp-slt/slt_0.8"] == (2, 16)  # SLT-MP from SLT 50 %
    seconds = sum(by_run[r]["train_seconds"] for r in ("dense", "slt/slt_0.5", "slt/slt_0.8"))
    assert abs(by_run["slt/slt_0.8"]["cost_hours"] - seconds / 3600) < 1e-3
    assert "| 80 % | 8 (1 run, " in table and " 24 (3 runs, " in table
    # the claims, judged from these rows (one seed: no noise measured)
    assert data["noise"] is None and [c["claim"] for c in data["claims"]] == ["a", "b", "c", "d"]
    bleu = {(r["label"], r["target_sparsity"]): r["score"]["bleu"] for r in data["rows"]}
    claim_c = data["claims"][2]
    expected = "holds" if bleu[("clt", 0.5)] >= bleu[("clt (random signs)", 0.5)] else "fails"
    assert claim_c["verdict"] == expected and claim_c["comparisons"][0]["clt"] == bleu[("clt", 0.5)]
    assert f"- (c) CLT with true signs is above CLT with random signs: **{expected}**" in table
    assert [c["sparsity"] for c in data["claims"][0]["comparisons"]] == [0.5, 0.8]
    assert data["claims"][1]["verdict"] == "not run"  # no level from 90 % in this tiny table
    total = sum(r["train_seconds"] for r in data["rows"]) / 3600
    assert f"Training time (fairseq's wall time of each run, validation included): 12 runs, {total:.2f} h" in table
    # where the runs were trained, from each run.json: this machine, with the recipe's one thread
    setup = {r["environment"]["cpu_capability"] for r in data["rows"]}, {r["environment"]["threads"] for r in data["rows"]}
    assert setup == ({torch.backends.cpu.get_cpu_capability()}, {1}), setup
    assert all(r["environment"]["torch"] == torch.__version__ for r in data["rows"])
    cpu = data["rows"][0]["environment"]["cpu"]
    assert f"Trained on: {cpu} ({torch.backends.cpu.get_cpu_capability()}), 1 thread, torch {torch.__version__}." in table

    # the deploy step: a compact file and a verified CTranslate2 model of a pruned run
    if importlib.util.find_spec("ctranslate2"):
        # (fairseq-generate as it is: export-ct2 compares its hypotheses with CTranslate2's at the same limits)
        deployed = recipe("11_deploy.sh", work, RUN="slt/slt_0.8", QUANTIZATION="float32",
                          GENERATE_COMMAND="fairseq-generate")
        assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
        out = os.path.join(work, "deploy", "slt", "slt_0.8")
        report = json.load(open(os.path.join(out, "ct2-float32.json")))
        assert report["verify"]["identical"] == report["verify"]["compared"]
        assert report["verify"]["sentences"] >= 90  # the slice's longest sentences are skipped by fairseq-generate
        assert json.load(open(os.path.join(out, "compact.json")))["weight_sparsity"] == pytest.approx(0.8, abs=1e-3)
        assert os.path.isfile(os.path.join(out, "ct2-float32", "model.bin"))

    # scores are cached beside each checkpoint: a rerun scores only what has no valid cache, and says what
    # is unfinished
    os.remove(os.path.join(work, "slt", "slt_0.8", "scores.json"))
    extra = os.path.join(work, "extra", "slt_0.5")
    train_killed_when(os.path.join(work, "data", "data-bin"), extra, os.path.join(extra, "checkpoint_rewind_3.pt"),
                      "--prune-method", "none", "--save-rewind-points", "3", "--save-interval-updates", "2",
                      max_update=200)
    manifest = os.path.join(work, "mp", "mp_0.8", "run.json")  # as if trained elsewhere
    recorded = json.load(open(manifest))
    recorded["environment"]["threads"] = 2
    json.dump(recorded, open(manifest, "w"))
    again = recipe("09_results.sh", work)
    assert again.returncode == 0, again.stderr[-3000:]
    scored = [line for line in again.stderr.splitlines() if line.startswith("scoring ")]
    assert len(scored) == 1 and "slt/slt_0.8/checkpoint_best.pt" in scored[0]
    assert "\nUnfinished: extra/slt_0.5 (its last checkpoint at update " in again.stdout and tmp_path.name not in again.stdout
    assert "|\nUnfinished" not in again.stdout  # a note after the cost table would read as its last row
    rescored = {os.path.relpath(r["run"], work): r for r in json.load(open(os.path.join(work, "results",
                                                                                       "results.json")))["rows"]}
    assert rescored["slt/slt_0.8"]["score"]["bleu"] == by_run["slt/slt_0.8"]["score"]["bleu"]
    assert "Trained on 2 setups, which give the same command other results: " in again.stdout
    two = f"{cpu} ({torch.backends.cpu.get_cpu_capability()}), 2 threads, torch {torch.__version__}: 1 run"
    assert two + "." in again.stdout or two + ";" in again.stdout

    # runs are reused only with the settings they were made with: every stage of WORK depends on its data and
    # its dense run, so WORK has one set of settings
    for script, change in (("02_train_dense.sh", {"MAX_UPDATE": "9"}), ("03_train_slt.sh", {"VOCAB_SIZE": "900"})):
        before = sorted(os.listdir(work))
        changed = recipe(script, work, **change)
        (key, value), = change.items()
        assert changed.returncode != 0 and changed.stderr.strip().splitlines() == [
            f"error: {work} was made with other settings ({key}={recipe_env(work)[key]} there; {key}={value} here): "
            "use another WORK"], changed.stderr
        assert sorted(os.listdir(work)) == before


def parse_fairseq_train(argv):
    """fairseq's own parser with the plugin's task options: an unknown option or bad value exits."""
    import fairseq_slt.criterions  # noqa: F401  (registered with fairseq, as --user-dir does)
    import fairseq_slt.tasks  # noqa: F401
    from fairseq import options

    return options.parse_args_and_arch(options.get_training_parser(), input_args=argv)


@pytest.mark.parametrize("pair", ["en-de", "en-fr"])
def test_the_wmt14_recipe_dry_run_prints_commands_that_parse(pair, tmp_path):
    import sacrebleu.sacrebleu

    from fairseq_slt.cli.main import build_parser
    from fairseq_slt.run.options import validate_options

    work = str(tmp_path / "wmt")
    result = subprocess.run(["bash", os.path.join(ROOT, "examples", "wmt14", "run_all.sh")], capture_output=True,
                            text=True, env=dict(env(), DRY_RUN="1", PAIR=pair, WORK=work), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not os.path.exists(work)  # a dry run writes nothing
    methods, iterated = set(), set()
    for line in result.stdout.splitlines():
        command = shlex.split(line)
        if ">" in command:  # run_to: COMMAND > FILE
            command = command[:command.index(">")]
        tool, argv = command[0], command[1:]
        if tool == "fairseq-train":
            args = parse_fairseq_train(argv)
            validate_options(args, check_files=False)  # the plugin's checks (sparsity, schedule, ...)
            methods.add(args.prune_method)
            assert args.arch == "transformer_wmt_en_de" and args.fp16 and args.max_update == 100000
        elif tool == "fairseq-slt":
            args = build_parser().parse_args(argv)
            if args.command == "iterate":
                iterated.add(args.method)
                parse_fairseq_train([*args.train_args, "--user-dir", ROOT + "/fairseq_slt", "--task", "translation_slt",
                                     "--criterion", "label_smoothed_cross_entropy_slt"])
            elif args.command == "prepare":
                assert args.vocab_size == 32000 and args.train.count(",") == (2 if pair == "en-de" else 4)
            else:
                assert args.command == "results" and args.references.endswith(f"test.{pair[3:]}")
        elif tool == "sacrebleu":
            argv, sys.argv = sys.argv, command
            try:
                args = sacrebleu.sacrebleu.parse_args()
            finally:
                sys.argv = argv
            assert args.test_set in ("wmt13", "wmt14") and args.langpair == pair
        else:
            assert tool in ("mkdir", "wget", "tar"), line
    assert methods == {"none", "mp", "slt", "clt"} and iterated == {"slt", "clt", "lt"}


def test_every_shell_script_parses_and_the_converged_driver_asks_for_t():
    scripts = subprocess.run(["git", "ls-files", "*.sh"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert "examples/multi30k/run_converged.sh" in scripts
    for script in scripts:
        parsed = subprocess.run(["bash", "-n", script], cwd=ROOT, capture_output=True, text=True)
        assert parsed.returncode == 0, (script, parsed.stderr)
    no_t = subprocess.run(["bash", "examples/multi30k/run_converged.sh"], cwd=ROOT, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "T"})
    assert no_t.returncode != 0 and no_t.stderr.strip().endswith("T: set T, from the dense curve (fairseq-slt curve "
                                                                 "prints it)")


def test_base_model_recipe_refuses_a_work_without_data_and_writes_nothing(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    done = subprocess.run(["bash", "examples/multi30k/13_base_model.sh"], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, WORK=str(work), SLT_NO_SETUP="1"))
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        f"error: no prepared data in {work}/data (run 01_prepare.sh with this WORK first)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"] and not any(work.iterdir())


def test_serving_recipe_refuses_unfinished_models_and_writes_nothing(tmp_path):
    work, out = tmp_path / "w", tmp_path / "bench" / "serving.txt"
    demo, base = work / "slt" / "slt_0.9", tmp_path / "w_base" / "mp" / "mp_0.9"
    for run in demo, base:
        run.mkdir(parents=True)
        (run / "checkpoint_best.pt").write_bytes(b"")
    (demo / ".done").touch()  # the demo-size run finished, the base-size one still training
    variables = dict(os.environ, WORK=str(work), OUT=str(out), SLT_NO_SETUP="1")
    refused = subprocess.run(["bash", "examples/multi30k/14_serving_benchmark.sh"], cwd=ROOT, capture_output=True,
                             text=True, env=variables)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        f"error: no finished run in {work}_base/mp/mp_0.9 (13_base_model.sh for the base-size model; 06_iterate.sh "
        "slt up to 0.9 for the demo-size one)"]
    assert refused.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == ["w", "w_base"]
    out.parent.mkdir()
    out.write_text("measured\n")  # a committed result is never measured again over
    skipped = subprocess.run(["bash", "examples/multi30k/14_serving_benchmark.sh"], cwd=ROOT, capture_output=True,
                             text=True, env=variables)
    assert skipped.returncode == 0 and skipped.stdout == f"serving benchmark: {out} exists (delete it to measure again)\n"
    assert out.read_text() == "measured\n" and sorted(p.name for p in out.parent.iterdir()) == ["serving.txt"]


def test_the_paper_comparison_averages_seeds_and_gives_each_cell_its_change_from_dense(tmp_path):
    spec = importlib.util.spec_from_file_location("paper_comparison", os.path.join(RECIPE, "paper_comparison.py"))
    comparison = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(comparison)
    rows = [{"label": label, "target_sparsity": sparsity, "score": {"bleu": bleu}} for label, sparsity, bleu in (
        ("dense", 0.0, 30.0), ("dense", 0.0, 31.0), ("mp", 0.5, 28.0), ("mp", 0.5, 29.25), ("slt-mp", 0.9, 27.0))]
    lines = comparison.table(rows).splitlines()
    assert lines[0] == "| sparsity | mp | lt | slt | clt | slt-mp | mp-slt |"
    assert lines[2] == ("| 50 % | 28.6 (-1.9) / 26.4 (-0.4) | - / 25.4 (-1.4) | - / 26.6 (-0.2) | - / 26.7 (-0.1) "
                        "| - / - | - / - |")
    assert lines[4].startswith("| 90 % | - / 22.9 (-3.9) |") and "| 27.0 (-3.5) / 23.5 (-3.3) |" in lines[4]
    assert lines[-1].endswith("dense: ours 30.5, the paper 26.8.")
    no_dense = tmp_path / "no_dense.json"
    no_dense.write_text(json.dumps({"rows": rows[2:]}))
    for path, error in ((tmp_path / "missing.json", f"error: cannot read {tmp_path / 'missing.json'}: No such file or "
                         "directory"), (no_dense, f"error: {no_dense} has no scored dense row to compare against")):
        done = subprocess.run([sys.executable, os.path.join(RECIPE, "paper_comparison.py"), str(path)],
                              capture_output=True, text=True)
        assert (done.returncode, done.stdout, done.stderr) == (1, "", error + "\n")


def test_the_drivers_commit_message_says_what_the_results_gained_not_which_stage_called_publish(tmp_path):
    def row(run, bleu):
        return {"run": f"/m/w{run}", "score": {"bleu": bleu}}

    old = {"rows": [row("/dense", 35.2), row("/slt/slt_0.5", 35.0)],
           "unfinished": [{"run": "/m/w/clt/clt_0.9", "why": "its last checkpoint at update 153 of 3500"}],
           "second_seeds": {"cells": []}}
    new = {"rows": [row("/dense", 35.2), row("/slt/slt_0.5", 35.1), row("/clt/clt_0.9", 31.25), row("_seed2/dense", 35.8)],
           "unfinished": [{"run": "/m/w/clt/clt_0.95", "why": "no checkpoint yet"}],
           "second_seeds": {"cells": [{"label": "slt", "sparsity": 0.98}]}}
    (tmp_path / "new.json").write_text(json.dumps(new))

    def message(old_text):  # as publish calls it: the committed results.json on stdin
        done = subprocess.run([sys.executable, os.path.join(RECIPE, "results_change.py"), "-", str(tmp_path / "new.json")],
                              input=old_text, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert message(json.dumps(old)) == (
        "w/slt/slt_0.5 scored again (35.10 BLEU); w/clt/clt_0.9 in (31.25 BLEU); w_seed2/dense in (35.80 BLEU); "
        "w/clt/clt_0.95 unfinished (no checkpoint yet); second seeds wanted: slt 98 %\n")
    assert message("") == ("w/dense in (35.20 BLEU); w/slt/slt_0.5 in (35.10 BLEU); w/clt/clt_0.9 in (31.25 BLEU); "
                           "3 more changes\n")  # nothing committed yet
    assert message(json.dumps(new)) == "no run changed\n"


def test_publish_scores_before_it_packs_and_commits_only_a_scored_table_named_by_what_it_gained(tmp_path):
    """run_converged.sh's publish, alone: `results` first (so each archive holds its scores), then the packing, then
    a commit of the table whose message results_change.py writes; a failed `results` packs but commits nothing."""
    with open(os.path.join(RECIPE, "run_converged.sh")) as handle:
        publish = re.search(r"^publish\(\) \{.*?^\}\n", handle.read(), re.S | re.M).group(0)
    repo, work, stubs = tmp_path / "repo", tmp_path / "w", tmp_path / "bin"
    table = repo / "docs" / "results" / "converged"
    for folder in (table, work, stubs):
        folder.mkdir(parents=True)
    row = {"run": f"{work}/dense", "score": {"bleu": 35.2}}
    (table / "results.json").write_text(json.dumps({"rows": [row], "unfinished": []}))
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"rows": [row, {"run": f"{work}/clt/clt_0.9", "score": {"bleu": 31.25}}], "unfinished": []}))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "first"], check=True)
    (stubs / "fairseq-slt").write_text('#!/bin/bash\necho results >> "$LOG"\n[ -z "${FAIL:-}" ] || exit 1\n'
                                       'while [ $# -gt 0 ]; do [ "$1" != --json ] || cp "$NEW" "$2"; shift; done\n')
    (stubs / "fairseq-slt").chmod(0o755)
    log = tmp_path / "log"
    variables = dict(os.environ, PATH=f"{stubs}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}", LOG=str(log),
                     NEW=str(new), WORK=str(work),
                     SEED2_WORK=str(tmp_path / "none"), PUBLISH=str(table), COMMIT_REPO=str(repo), T="3500",
                     R=RECIPE, GENERATE_COMMAND="x", BEAM="5", TGT="de", GIT_AUTHOR_NAME="t",
                     GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")

    def run(**extra):
        log.write_text("")
        done = subprocess.run(["bash", "-c", f'set -u\n{publish}pack_finished() {{ echo "pack $WORK" >> "$LOG"; }}\n'
                               'publish "dense, seed 2"'], env=dict(variables, **extra), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        subjects = subprocess.run(git + ["log", "--format=%s"], capture_output=True, text=True).stdout.splitlines()
        return log.read_text().splitlines(), subjects

    steps, subjects = run(FAIL="1")
    assert steps == ["results", f"pack {work}"] and subjects == ["first"]  # packed, nothing committed
    steps, subjects = run()
    assert steps == ["results", f"pack {work}"]
    assert subjects == ["docs/results/converged (T=3500): clt/clt_0.9 in (31.25 BLEU)", "first"]
