"""fairseq-slt export-ct2: a pruned model in CTranslate2, verified against fairseq-generate; refusals first."""
import gzip
import json
import math
import os

import pytest

from conftest import MULTI30K, run_tool, tool_path, train
from fairseq_slt.cli import ct2_runtime, export_ct2
from fairseq_slt.cli.scoring import score_texts

ctranslate2 = pytest.importorskip("ctranslate2")  # installed by scripts/setup_env.sh (extra 'ct2')


@pytest.fixture(scope="module")
def trained(data_bin, tmp_path_factory):
    """MP to 80 % over 120 updates (long enough that most test hypotheses end before the length limit),
    and its compact file."""
    save = str(tmp_path_factory.mktemp("ct2-mp"))
    train(data_bin, save, "--prune-method", "mp", "--prune-sparsity", "0.8", "--prune-end", "80",
          "--prune-frequency", "10", "--lr", "0.005", "--warmup-updates", "20", max_update=120)
    checkpoint, compact = os.path.join(save, "checkpoint_last.pt"), os.path.join(save, "compact.pt")
    run_tool("fairseq-slt", "compress", checkpoint, compact, "--quiet")
    return {"checkpoint": checkpoint, "compact": compact, "data": data_bin}


def export(*args, check=True, **kwargs):
    """fairseq-slt export-ct2, its verification's fairseq-generate through the tests' fork server"""
    return run_tool("fairseq-slt", "export-ct2", *args, "--generate-command", tool_path("fairseq-generate"),
                    check=check, **kwargs)


def _one_line(result, status, *fragments):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status and len(lines) == 1, result.stderr[-2000:]
    assert all(f in lines[0] for f in fragments), lines[0]


def _leftovers(folder):
    return [name for name in os.listdir(folder) if name.startswith(".export-ct2")]


def test_float32_export_of_a_compact_file_translates_as_fairseq_does(trained, tmp_path):
    out = str(tmp_path / "ct2")
    result = export(trained["compact"], out, "--quantization", "float32",
                      "--json", tmp_path / "report.json")
    report = json.load(open(tmp_path / "report.json"))
    check = report["verify"]
    assert os.path.isfile(os.path.join(out, "model.bin")) and report["bytes"] > 0
    assert check["compared"] >= 50 and check["identical"] == check["compared"], check
    assert check["compared"] + check["cut_at_length_limit"] == min(100, check["sentences"]) and check["fairseq_bleu"] == check["ct2_bleu"]
    assert f"{check['identical']}/{check['compared']} of the first hypotheses identical" in result.stdout
    assert not _leftovers(tmp_path)
    # the converted weights give fairseq's own token scores (its P- lines, base 2) on fairseq's hypotheses
    generated = run_tool("fairseq-generate", trained["data"], "--user-dir", "fairseq_slt", "--task", "translation_slt",
                         "--path", trained["checkpoint"], "--gen-subset", "test", "--beam", 5, "--batch-size", 32,
                         "--cpu").stdout
    fields = {}
    for line in generated.splitlines():
        tag, _, rest = line.partition("\t")
        if tag[:2] in ("S-", "H-", "P-"):
            fields.setdefault(int(tag[2:]), {})[tag[0]] = rest.split("\t")[-1].split()
    ids = sorted(fields)[:40]
    scored = ctranslate2.Translator(out, device="cpu").score_batch(
        [fields[n]["S"] for n in ids], [fields[n]["H"] for n in ids])
    for n, result in zip(ids, scored):
        expected = [float(p) * math.log(2) for p in fields[n]["P"]]
        assert len(result.log_probs) == len(expected)
        assert max(abs(a - b) for a, b in zip(result.log_probs, expected)) < 2e-3, n


def test_int8_export_reports_bleu_and_a_failed_check_writes_nothing(trained, tmp_path):
    out = str(tmp_path / "int8")
    summary = export(trained["checkpoint"], out).stdout
    assert "CTranslate2 int8 model" in summary and "BLEU fairseq" in summary and os.path.isdir(out)
    assert f"serve it: ctranslate2.Translator({out!r}, device='cpu', inter_threads=<cores>, intra_threads=1)" in summary
    assert "max_batch_size=16)" in summary  # a model of fewer than 512 dimensions: smaller batches served faster
    # what CTranslate2 runs on here, read from its own log: what this machine chose, and a forced choice
    found = ct2_runtime.runtime(out)
    assert f"here CTranslate2 runs {found['isa']} code, int8 products by {found['int8_gemm']}" in summary
    assert "?" not in found.values() and ct2_runtime.runtime(out, {"CT2_FORCE_CPU_ISA": "GENERIC"})["isa"] == "GENERIC"
    # a drop limit no model can meet: refused after the check, and OUT_DIR is not made
    refused = export(trained["checkpoint"], str(tmp_path / "never"), "--max-bleu-drop",
                       "-100", check=False)
    _one_line(refused, 1, "below fairseq's", "--max-bleu-drop -100")
    assert not os.path.exists(tmp_path / "never") and not _leftovers(tmp_path)


def test_refusals_come_before_anything_is_written(trained, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _one_line(export(trained["checkpoint"], out, check=False), 2,
              f"{out} exists; pass --force")
    assert os.listdir(out) == ["keep.txt"]
    export(trained["checkpoint"], out, "--force", "--no-verify")
    assert sorted(os.listdir(out)) != ["keep.txt"] and os.path.isfile(out / "model.bin")
    # a model the converter cannot take (an activation it lacks): one line, nothing written
    import torch
    from conftest import load

    state = load(trained["checkpoint"])
    state["cfg"]["model"].activation_fn = "tanh"
    odd = str(tmp_path / "tanh.pt")
    torch.save(state, odd)
    _one_line(export(odd, tmp_path / "tanh", check=False), 2,
              "CTranslate2 cannot convert this model", "--activation-fn tanh is not supported")
    assert not os.path.exists(tmp_path / "tanh") and not _leftovers(tmp_path)
    _one_line(export(trained["checkpoint"], tmp_path / "d", "--data", tmp_path,
                       check=False), 2, "no dict.", "pass --data")


def test_without_ctranslate2_one_line_says_how_to_install_it(trained, tmp_path):
    blocker = tmp_path / "blocker" / "ctranslate2"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('not installed')\n")
    result = export(trained["checkpoint"], tmp_path / "out", check=False,
                      extra_env={"PYTHONPATH": str(tmp_path / "blocker")})
    _one_line(result, 2, "ctranslate2 is not installed", "pip install 'fairseq-slt[ct2]'")
    assert not os.path.exists(tmp_path / "out")


def test_avx512_advice_only_where_ctranslate2_leaves_it_unused(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2 avx512f avx512dq avx512bw avx512vl\n")
    flags, advice = ct2_runtime.cpu_flags(str(cpuinfo)), ct2_runtime.isa_advice
    assert "CT2_FORCE_CPU_ISA=AVX512" in advice("AVX2", flags, {})
    assert advice("AVX512", flags, {}) is None  # chosen by itself (an Intel CPU)
    assert advice("AVX2", flags, {"CT2_FORCE_CPU_ISA": "AVX2"}) is None  # the server already chose
    assert advice("AVX2", flags - {"avx512bw"}, {}) is None and advice("AVX2", set(), {}) is None
    # the same decisions as an environment to serve with (benchmarks/serving.py's 'ct2 int8 advised')
    assert ct2_runtime.isa_setting("AVX2", flags, {}) == {"CT2_FORCE_CPU_ISA": "AVX512"}
    assert ct2_runtime.isa_setting("AVX512", flags, {}) == ct2_runtime.isa_setting("AVX2", set(), {}) == {}
    assert ct2_runtime.cpu_flags(str(tmp_path / "absent")) == set()


def test_a_bleu_drop_says_how_much_of_it_the_length_limits_runaways_make():
    """An under-trained model repeats itself up to the length limit on a few sentences, and whichever engine does
    so loses tenths of BLEU there: the verification names them and scores both engines without them."""
    with gzip.open(os.path.join(MULTI30K, "test_2016_flickr.de.gz"), "rt", encoding="utf-8") as handle:
        refs = {n: line.strip() for n, line in zip(range(40), handle)}
    fairseq = {n: " ".join(ref.split()[:-1]) for n, ref in refs.items()}  # good, not perfect
    ct2 = dict(fairseq)
    runaway = " ".join(["Zemmm"] * 120)
    fairseq[3] = ct2[7] = ct2[11] = runaway  # fairseq's runaway on sentence 3, CTranslate2's on 7 and 11
    ct2[3] = "Ein Mann."
    lengths = {n: 12 for n in refs}
    found = export_ct2.runaways(fairseq, ct2, refs, {**lengths, 3: 200}, {**lengths, 7: 200, 11: 200})
    kept = {n: ref for n, ref in refs.items() if n not in (3, 7, 11)}
    assert (found["fairseq"], found["ct2"], found["either"]) == (1, 2, 3)
    assert found["fairseq_bleu_without"] == found["ct2_bleu_without"] == score_texts(fairseq, kept)["bleu"]
    assert score_texts(ct2, refs)["bleu"] < score_texts(fairseq, refs)["bleu"] - 1  # the drop is the runaways'
    assert export_ct2.runaway_note(found) == (
        f"3 sentence(s) ran to the length limit (200 tokens; fairseq 1, CTranslate2 2): without them fairseq "
        f"{found['fairseq_bleu_without']:.2f}, CTranslate2 {found['ct2_bleu_without']:.2f}")
    # a hypothesis one token short of the limit ended on its own; nothing cut: nothing to say
    assert export_ct2.runaways(fairseq, ct2, refs, {**lengths, 3: 199}, lengths)["either"] == 0
    assert export_ct2.runaway_note(export_ct2.runaways(fairseq, fairseq, refs, lengths, lengths)) == ""
