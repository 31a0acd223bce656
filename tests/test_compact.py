"""Compact checkpoints: bit-exact round trip, size, direct loading in fairseq-generate, bad input."""
import json
import math
import os
import shutil

import pytest
import torch

from conftest import bits, load, one_error_line, run_tool, train
from fairseq_slt.checkpoints import Checkpoint
from fairseq_slt.pruning import Mask, UserError, atomic_save
from fairseq_slt.pruning.compact import aliases, compress, expand



def _hypotheses(data_bin, path, *extra):
    result = run_tool("fairseq-generate", data_bin, "--user-dir", "fairseq_slt", "--task", "translation_slt",
                      "--path", path, "--gen-subset", "test", "--beam", 5, "--batch-size", 32, "--max-len-b", 30, "--cpu",
                      *extra)
    lines = sorted((line for line in result.stdout.splitlines() if line.startswith("H-")),
                   key=lambda line: int(line.split("\t")[0][2:]))
    assert len(lines) >= 90, result.stdout[-2000:]  # the slice's longest sentences are skipped
    return [line.split("\t")[2] for line in lines], result


@pytest.fixture(scope="module")
def signed_zero_checkpoint(slt_run, tmp_path_factory):
    """The SLT checkpoint with one kept weight set to -0.0 (a zero whose bits are not zero)."""
    state = load(slt_run["best"])
    weight = state["model"]["decoder.layers.0.fc1.weight"]
    position = int(torch.nonzero(weight.view(-1))[0])
    weight.view(-1)[position] = -0.0
    path = str(tmp_path_factory.mktemp("signed") / "checkpoint.pt")
    atomic_save(state, path)
    return path


def test_round_trip_is_bit_exact_and_generate_reads_the_compact_file(data_bin, slt_run, signed_zero_checkpoint,
                                                                      tmp_path):
    compact, restored = str(tmp_path / "compact.pt"), str(tmp_path / "restored.pt")
    run_tool("fairseq-slt", "compress", signed_zero_checkpoint, compact)
    run_tool("fairseq-slt", "decompress", compact, restored)
    original, back = load(signed_zero_checkpoint), load(restored)
    assert list(back["model"]) == list(original["model"])
    for name, tensor in original["model"].items():
        assert back["model"][name].dtype == tensor.dtype and torch.equal(bits(back["model"][name]), bits(tensor)), name
    minus_zero = back["model"]["decoder.layers.0.fc1.weight"]
    assert (minus_zero.view(torch.int32) == -2 ** 31).sum() == 1  # -0.0 kept its sign bit
    assert set(aliases(back["model"]).values()) == set(aliases(original["model"]).values())  # tied once again
    assert back["cfg"] == original["cfg"] and "last_optimizer_state" not in back
    # the mask comes back from the masked matrices' bitmaps (the -0.0 is a kept weight, by its bits)
    mask, back_mask = (Mask.from_state_dict(s["extra_state"]["TranslationSLTTask"]["mask"]) for s in (original, back))
    assert back_mask.checksum() == mask.checksum() and 0.79 < back_mask.sparsity() < 0.81
    # fairseq-generate on the compact file itself, the restored file and the original: the same translations
    expected, _ = _hypotheses(data_bin, signed_zero_checkpoint)
    direct, result = _hypotheses(data_bin, compact)
    assert direct == expected and _hypotheses(data_bin, restored)[0] == expected
    assert "Traceback" not in result.stderr


def test_a_compact_file_is_a_mask_source_for_the_next_level(data_bin, dense_run, slt_run, tmp_path):
    compact, save = str(tmp_path / "compact.pt"), str(tmp_path / "next")
    run_tool("fairseq-slt", "compress", slt_run["best"], compact, "--values", "fp16")
    level = Mask.from_state_dict(load(slt_run["best"])["extra_state"]["TranslationSLTTask"]["mask"])
    train(data_bin, save, "--prune-method", "slt", "--prune-sparsity", "0.9", "--prune-mask-from", compact,
          "--prune-rewind-from", dense_run["rewind4"], max_update=2)
    after = Mask.load(os.path.join(save, "mask.pt"))
    assert after.within(level) and abs(after.sparsity() - 0.9) < 0.005  # pruned further within the compact's mask
    analyzed = run_tool("fairseq-slt", "analyze", compact, slt_run["best"]).stdout  # the plugin's tools read it too
    assert "overlap [0] [1]: 1.0000 of [0]'s kept weights are kept in [1]" in analyzed and "jaccard 1.0000" in analyzed


def test_compact_size_is_within_the_entropy_bound_and_reported_truly(slt_run, tmp_path):
    """Per pruned matrix: the coded bitmap within 10 % (+ 64 bytes) of n*H(p) bits, the values below 4 bytes each;
    the file's size is what the report says; fp16 values about halve the values."""
    compact, report_path = str(tmp_path / "compact.pt"), str(tmp_path / "report.json")
    run_tool("fairseq-slt", "compress", slt_run["best"], compact, "--json", report_path)
    report = json.load(open(report_path))
    model = load(slt_run["best"])["model"]
    assert report["compact_bytes"] == os.path.getsize(compact)
    assert abs(report["weight_sparsity"] - 0.8) < 1e-3
    packed = [row for row in report["tensors"] if row["kind"] == "packed"]
    assert len(packed) == sum(1 for name, first in aliases(model).items() if first == name and model[name].dim() >= 2)
    for row in packed:
        n, kept = row["numel"], row["nonzero"]
        assert kept == int((model[row["name"]] != 0).sum())
        p = kept / n
        entropy_bytes = n * -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / 8
        assert row["bitmap_bytes"] <= 1.1 * entropy_bytes + 64, row
        assert row["values_bytes"] < 4 * kept, row
    dense = report["dense_fp32_bytes"]
    assert dense == 4 * sum(model[name].numel() for name, first in aliases(model).items() if first == name)
    weights_bound = sum(r["numel"] * 0.72 / 8 + 4 * r["nonzero"] for r in packed) + \
        sum(r["bytes"] for r in report["tensors"] if r["kind"] == "dense")  # H(0.2) = 0.72 bits + fp32 values
    meta = len(json.dumps(load(compact)["checkpoint"], default=str))
    assert report["compact_bytes"] <= weights_bound + meta + 8192
    half = str(tmp_path / "half.pt")
    # an existing report is not replaced without --force, and nothing else is written either
    before = open(report_path).read()
    refused = run_tool("fairseq-slt", "compress", slt_run["best"], half, "--json", report_path, check=False)
    one_error_line(refused, f"{report_path} exists; pass --force to overwrite it")
    assert open(report_path).read() == before and not os.path.exists(half)
    run_tool("fairseq-slt", "compress", slt_run["best"], half, "--values", "fp16", "--quiet", "--json", report_path,
             "--force")
    half_report = json.load(open(report_path))
    values = [sum(row.get("values_bytes", 0) for row in r["tensors"]) for r in (report, half_report)]
    assert values[1] < 0.6 * values[0] and half_report["compact_bytes"] == os.path.getsize(half)



def test_bad_input_is_one_line_and_writes_nothing(data_bin, dense_run, slt_run, tmp_path):
    compact = str(tmp_path / "compact.pt")
    run_tool("fairseq-slt", "compress", slt_run["best"], compact, "--quiet")
    out = str(tmp_path / "out.pt")
    # a dense checkpoint: refused (it has no pruned weights), nothing written
    one_error_line(run_tool("fairseq-slt", "compress", dense_run["best"], out, check=False), "is dense")
    # an existing output is not overwritten without --force
    before = open(compact, "rb").read()
    one_error_line(run_tool("fairseq-slt", "compress", slt_run["best"], compact, check=False), "exists", "--force")
    assert open(compact, "rb").read() == before
    one_error_line(run_tool("fairseq-slt", "compress", compact, out, check=False), "compact checkpoint already")
    # truncated: decompress and fairseq-generate say so in one line
    truncated = str(tmp_path / "truncated.pt")
    open(truncated, "wb").write(before[: len(before) // 2])
    one_error_line(run_tool("fairseq-slt", "decompress", truncated, out, check=False), "cannot read", truncated)
    generate = ["fairseq-generate", data_bin, "--user-dir", "fairseq_slt", "--task", "translation_slt",
                "--gen-subset", "test", "--cpu", "--path"]
    result = run_tool(*generate, truncated, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if "error" in line] == \
        [line for line in result.stderr.splitlines() if "cannot read checkpoint" in line and truncated in line]
    # a flipped byte inside the weights: the checksum catches it
    state = load(compact)
    state["blob"][len(state["blob"]) // 2] ^= 0x10
    corrupt = str(tmp_path / "corrupt.pt")
    torch.save(state, corrupt)
    one_error_line(run_tool("fairseq-slt", "decompress", corrupt, out, check=False), "corrupt", "checksum")
    result = run_tool(*generate, corrupt, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr and "checksum does not match" in result.stderr
    one_error_line(run_tool("fairseq-slt", "decompress", slt_run["best"], out, check=False), "not a compact checkpoint")
    assert not os.path.exists(out) and sorted(os.listdir(tmp_path)) == ["compact.pt", "corrupt.pt", "truncated.pt"]


def test_rounded_values_and_non_float_tensors_round_trip():
    torch.manual_seed(0)
    weight = torch.randn(64, 48)
    weight[torch.rand(64, 48) < 0.9] = 0
    model = {"weight": weight, "bias": torch.randn(64), "version": torch.tensor([3]), "tied": weight}
    for values, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        state, rows = compress(model, {}, values)
        back = expand(state)
        assert [row["kind"] for row in rows] == ["packed", "dense", "dense"]
        assert torch.equal(back["weight"], weight.to(dtype).float()) and back["weight"].dtype == torch.float32
        assert torch.equal(back["bias"], model["bias"].to(dtype).float()) and torch.equal(back["version"], model["version"])
        assert back["tied"] is back["weight"]
    with pytest.raises(UserError, match="--values must be one of"):
        compress(model, {}, "int8")


def _edited_index(path, out, change):
    """The compact file with its JSON index edited and its checksum recomputed (a crafted file)."""
    from fairseq_slt.pruning.compact import _LZMA, _checksum
    import lzma

    state = load(path)
    raw = state["blob"].numpy().tobytes()
    index = json.loads(lzma.decompress(raw[:state["index"]], **_LZMA))
    change(index)
    coded = lzma.compress(json.dumps(index).encode(), **_LZMA)
    blob = coded + raw[state["index"]:]
    state.update(index=len(coded), blob=torch.frombuffer(bytearray(blob), dtype=torch.uint8))
    state["sha256"] = _checksum(state, blob)
    torch.save(state, out)
    return out


def test_an_edited_index_is_checked_against_the_data_before_anything_is_allocated(data_bin, slt_run, tmp_path):
    compact = str(tmp_path / "compact.pt")
    run_tool("fairseq-slt", "compress", slt_run["best"], compact, "--quiet")

    def first_packed(index):
        return next(e for e in index if e["kind"] == "packed")

    cases = {
        "dtype naming a function": (lambda i: first_packed(i).update(dtype="load"), "has dtype 'load'"),
        "a 2^20 x 2^20 shape": (lambda i: first_packed(i).update(shape=[2 ** 20, 2 ** 20]), "claims 1099511627776"),
        "a range outside the data": (lambda i: first_packed(i).update(values=[0, 2 ** 40]), "points outside the data"),
        "a wrong kept count": (lambda i: first_packed(i).update(nonzero=first_packed(i)["nonzero"] + 1), "marks"),
    }
    generate = ["fairseq-generate", data_bin, "--user-dir", "fairseq_slt", "--task", "translation_slt",
                "--gen-subset", "test", "--cpu", "--path"]
    for label, (change, fragment) in cases.items():
        crafted = _edited_index(compact, str(tmp_path / "crafted.pt"), change)
        out = str(tmp_path / "out.pt")
        one_error_line(run_tool("fairseq-slt", "decompress", crafted, out, check=False), fragment)
        assert not os.path.exists(out), label
        result = run_tool(*generate, crafted, check=False)
        assert result.returncode != 0 and "Traceback" not in result.stderr and fragment in result.stderr, label


def test_the_generate_check_passes_over_tasks_without_two_dictionaries(data_bin):
    # fairseq's base task has None for both dictionaries, a language-model task None for the source: no digest,
    # no check (a digest of None ended fairseq-generate in a traceback)
    from types import SimpleNamespace

    from fairseq.data import Dictionary
    from fairseq.tasks import FairseqTask
    from fairseq_slt.checkpoints import dictionary_files_digest
    from fairseq_slt.fairseq_patches import _data_digest

    assert _data_digest(object.__new__(FairseqTask)) is None
    dictionaries = [Dictionary.load(os.path.join(data_bin, f"dict.{lang}.txt")) for lang in ("en", "de")]
    assert _data_digest(SimpleNamespace(source_dictionary=None, target_dictionary=dictionaries[1])) is None
    task = SimpleNamespace(source_dictionary=dictionaries[0], target_dictionary=dictionaries[1])
    assert _data_digest(task) == dictionary_files_digest(data_bin, "en", "de")


def test_generate_refuses_a_checkpoint_trained_with_other_dictionaries(data_bin, slt_run, tmp_path):
    # the same data with two dictionary entries swapped (the same sizes: fairseq alone would translate on, through
    # the wrong words), as data prepared by another SentencePiece release (or, before prepare pinned it, thread count) has
    other = tmp_path / "data-bin"
    shutil.copytree(data_bin, other)
    for dictionary in other.glob("dict.*.txt"):
        lines = dictionary.read_text().splitlines(keepends=True)
        lines[10], lines[11] = lines[11], lines[10]
        dictionary.write_text("".join(lines))
    compact = str(tmp_path / "compact.pt")
    run_tool("fairseq-slt", "compress", slt_run["best"], compact)
    for path in slt_run["best"], compact:
        refused = run_tool("fairseq-generate", other, "--user-dir", "fairseq_slt", "--path", path, "--gen-subset",
                           "test", "--batch-size", 32, "--max-len-b", 5, "--cpu", check=False)
        one_error_line(refused, f"checkpoint {path} was trained with other dictionaries than this data's",
                       "give the data-bin it was trained on")
        assert not any(line.startswith("H-") for line in refused.stdout.splitlines())
    assert _hypotheses(data_bin, compact)[0]  # on its own data it translates


def test_compress_leaves_the_store_ema_average_out_or_stores_it_as_the_model(data_bin, slt_run, tmp_path):
    """An MP run with --store-ema: its checkpoint holds fairseq's average of the weights besides the model. A compact
    file left it in, raw (5x the size of the compact model); now it is left out, and said so, or, with --ema, stored
    as the model: restored bit for bit, its bitmaps the run's mask."""
    save = str(tmp_path / "mp_ema")
    train(data_bin, save, "--prune-method", "mp", "--prune-sparsity", "0.8", "--prune-start", "2", "--prune-end", "6",
          "--prune-frequency", "2", "--store-ema", "--ema-decay", "0.9", max_update=8)
    last = os.path.join(save, "checkpoint_last.pt")
    state = load(last)
    plain, average = str(tmp_path / "plain.pt"), str(tmp_path / "average.pt")
    result = run_tool("fairseq-slt", "compress", last, plain, "--quiet", "--json", str(tmp_path / "plain.json"))
    assert "left out: fairseq's --store-ema average (ema" in result.stdout
    assert not {"ema", "ema_fp32_params"} & set(torch.load(plain, weights_only=False)["checkpoint"]["extra_state"])
    without = dict(state, extra_state={k: v for k, v in state["extra_state"].items() if k != "ema"})
    torch.save(without, str(tmp_path / "no_ema.pt"))
    run_tool("fairseq-slt", "compress", str(tmp_path / "no_ema.pt"), str(tmp_path / "no_ema.compact.pt"), "--quiet")
    assert os.path.getsize(plain) <= os.path.getsize(str(tmp_path / "no_ema.compact.pt")) + 64
    assert "weights: fairseq's --store-ema average" in run_tool("fairseq-slt", "compress", last, average, "--ema").stdout
    restored = str(tmp_path / "restored.pt")
    run_tool("fairseq-slt", "decompress", average, restored)
    model, ema = load(restored)["model"], state["extra_state"]["ema"]
    assert all(torch.equal(bits(model[k]), bits(ema[k])) for k in ema) and not torch.equal(
        model["encoder.layers.0.fc1.weight"], state["model"]["encoder.layers.0.fc1.weight"])
    assert Checkpoint(restored).mask().checksum() == Checkpoint(last).mask().checksum()
    refused = run_tool("fairseq-slt", "compress", slt_run["best"], str(tmp_path / "none.pt"), "--ema", check=False)
    one_error_line(refused, "--ema: ", "holds no --store-ema average")
    assert not os.path.exists(str(tmp_path / "none.pt"))
