"""fairseq-slt pack / unpack: a finished run folder kept as one small archive and restored with every
checkpoint's weights, mask and reported figures bit-identical (what the converged protocol commits so that a
lost machine loses only the runs in flight)."""
import fcntl
import io
import json
import os
import shutil
import subprocess
import tarfile

import torch

from conftest import bits, env, load, one_error_line, run_tool, short_generate
from fairseq_slt.checkpoints import Checkpoint
from fairseq_slt.pruning import atomic_save



def _files(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names)


def _results(run, tmp_path, name):
    out = str(tmp_path / f"{name}.json")
    # fairseq-generate through the tests' fork server, the tiny model's hypotheses cut at 20 tokens
    printed = run_tool("fairseq-slt", "results", run, "--json", out, "--subset", "test", "--beam", 2,
                       "--generate-command", short_generate(), "--force")
    with open(out) as handle:
        row = json.load(handle)["rows"][0]
    figures = {key: row[key] for key in ("sparsity", "seed", "updates", "train_seconds", "dense_fp32_bytes",
                                         "bitmap_fp32_bytes", "score")}
    return figures, [line for line in printed.stderr.splitlines() if line.startswith("scoring ")]


def test_a_packed_run_comes_back_bit_exact_and_reports_the_same_figures(dense_run, slt_run, tmp_path):
    for name, source in (("dense", dense_run["dir"]), ("slt", slt_run["dir"])):
        run = str(tmp_path / name)  # a copy: results writes its scores beside the checkpoint
        shutil.copytree(source, run)
        rewind = os.path.join(run, "checkpoint_rewind_4.pt" if name == "dense" else "checkpoint_rewind_0.pt")
        tied = load(rewind)["model"]  # rewind points keep tied embeddings one tensor, as fairseq's checkpoints
        assert tied["decoder.output_projection.weight"].data_ptr() == tied["encoder.embed_tokens.weight"].data_ptr()
        if name == "dense":
            shutil.copy(dense_run["best"], os.path.join(run, "checkpoint_copy.pt"))  # the same weights twice
            legacy = load(dense_run["rewind0"])  # as rewind points were written before: every name its own copy
            legacy["model"] = {k: v.clone() for k, v in legacy["model"].items()}
            atomic_save(legacy, os.path.join(run, "checkpoint_rewind_0.pt"))
        figures, _ = _results(run, tmp_path, name)  # its score is cached in the run's scores.json, which is packed
        archive, restored = str(tmp_path / f"{name}.tar.gz"), str(tmp_path / "restored" / name)
        printed = run_tool("fairseq-slt", "pack", run, archive).stdout
        assert "checkpoints compact" in printed and archive in printed
        run_tool("fairseq-slt", "unpack", archive, restored)
        assert _files(restored) == _files(run)
        checkpoints = [f for f in _files(run) if f.endswith(".pt") and f != "mask.pt"]
        assert len(checkpoints) >= 4, checkpoints  # best, last and two rewind points
        for file in _files(run):
            before, after = os.path.join(run, file), os.path.join(restored, file)
            if file not in checkpoints:
                with open(before, "rb") as a, open(after, "rb") as b:
                    assert a.read() == b.read(), file
                continue
            original, back = load(before), load(after)
            assert original["model"].keys() == back["model"].keys()
            for key, tensor in original["model"].items():
                assert torch.equal(bits(tensor), bits(back["model"][key])), (file, key)  # -0.0 vs +0.0 too
            assert "last_optimizer_state" not in back  # what only training needs is left out
            for key in ("cfg", "optimizer_history"):
                assert back[key] == original[key], (file, key)
            kept = {k: v for k, v in original["extra_state"].items() if k not in ("metrics", "TranslationSLTTask")}
            assert {k: back["extra_state"][k] for k in kept} == kept, file
            mask, mask_back = Checkpoint(before).mask(), Checkpoint(after).mask()
            assert (mask is None) == (mask_back is None), file
            if mask is not None:
                assert mask.sparsity() > 0.7 and all(torch.equal(mask[n], mask_back[n]) for n in mask), file
        # the same figures, and the score from the cache: it is keyed by the weights, which came back bit for bit
        assert _results(restored, tmp_path, name) == (figures, [])
        if name == "slt":  # a cache of before (keyed by the file's size and mtime) counts while they match
            cache_path, best = os.path.join(restored, "scores.json"), os.path.join(restored, "checkpoint_best.pt")
            cache = json.load(open(cache_path))
            stat = os.stat(best)
            for entry in cache:
                del entry["options"]["weights"]
                entry["options"].update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
            json.dump(cache, open(cache_path, "w"))
            assert _results(restored, tmp_path, name) == (figures, [])
            assert [e["options"].get("weights") for e in json.load(open(cache_path))][-1]  # now by the weights too
            for entry in cache:
                entry["options"]["mtime_ns"] += 1  # the file changed since: scored again
            json.dump(cache, open(cache_path, "w"))
            assert _results(restored, tmp_path, name)[1] == [f"scoring {best} (beam 2, test)"]
        with tarfile.open(archive) as members:
            size = {m.name: m.size for m in members.getmembers()}
        whole = max(n for member, n in size.items() if "rewind" not in member)  # one checkpoint's weights
        assert size["checkpoint_rewind_0.pt"] < 1.1 * whole, size  # tied embeddings: one copy
        if name == "dense":
            assert size["checkpoint_copy.pt"] < 0.1 * whole, size  # the same weights: once in the archive
    sizes = {name: os.path.getsize(tmp_path / f"{name}.tar.gz") for name in ("dense", "slt")}
    originals = {name: sum(os.path.getsize(os.path.join(run, f)) for f in _files(run))
                 for name, run in (("dense", dense_run["dir"]), ("slt", slt_run["dir"]))}
    # no optimizer state, tied embeddings once, the 80 % run's matrices as bitmap + kept values
    assert sizes["dense"] < 0.5 * originals["dense"] and sizes["slt"] < 0.5 * sizes["dense"], (sizes, originals)



def test_bad_input_is_one_line_and_leaves_files_as_they_were(dense_run, slt_run, tmp_path):
    unfinished = str(tmp_path / "unfinished")
    os.makedirs(unfinished)
    shutil.copy(os.path.join(dense_run["dir"], "run.json"), unfinished)
    state = load(dense_run["last"])
    state["cfg"]["optimization"]["max_update"] = 100
    atomic_save(state, os.path.join(unfinished, "checkpoint_last.pt"))
    archive = str(tmp_path / "run.tar.gz")
    one_error_line(run_tool("fairseq-slt", "pack", unfinished, archive, check=False), "not finished",
                    "its last checkpoint at update 16 of 100")
    one_error_line(run_tool("fairseq-slt", "pack", str(tmp_path), archive, check=False), "not a run folder")
    assert not os.path.exists(archive)

    run_tool("fairseq-slt", "pack", slt_run["dir"], archive)
    with open(archive, "rb") as handle:
        packed = handle.read()
    one_error_line(run_tool("fairseq-slt", "pack", dense_run["dir"], archive, check=False), "exists", "--force")
    with open(archive, "rb") as handle:
        assert handle.read() == packed

    one_error_line(run_tool("fairseq-slt", "unpack", archive, unfinished, check=False), "has files", "--force")
    live = os.open(unfinished, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(live, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live fairseq-train run holds its save dir
    one_error_line(run_tool("fairseq-slt", "unpack", archive, unfinished, "--force", check=False), "in use")
    os.close(live)
    assert _files(unfinished) == ["checkpoint_last.pt", "run.json"]
    run_tool("fairseq-slt", "unpack", archive, unfinished, "--force")
    assert _files(unfinished) == _files(slt_run["dir"])

    truncated = str(tmp_path / "truncated.tar.gz")
    with open(truncated, "wb") as handle:
        handle.write(packed[: len(packed) // 2])
    one_error_line(run_tool("fairseq-slt", "unpack", truncated, str(tmp_path / "t" / "u" / "run"), check=False),
                    "cannot read")
    assert not os.path.exists(tmp_path / "t")  # nor the folders above RUN it would have made

    escaping = str(tmp_path / "escaping.tar.gz")
    with tarfile.open(escaping, "w:gz") as handle:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 3
        handle.addfile(info, io.BytesIO(b"bad"))
    one_error_line(run_tool("fairseq-slt", "unpack", escaping, str(tmp_path / "e"), check=False), "cannot read")
    assert not os.path.exists(tmp_path / "outside.txt") and not os.path.exists(tmp_path / "e")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]  # no staging folder left behind


def test_the_converged_driver_packs_finished_runs_and_a_new_machine_goes_on_from_them(dense_run, slt_run, tmp_path):
    """examples/multi30k/store.sh, as run_converged.sh uses it: finished runs packed once; WORK lost; restored."""
    work, store = str(tmp_path / "work"), str(tmp_path / "store")
    shutil.copytree(dense_run["dir"], os.path.join(work, "dense"))
    shutil.copytree(slt_run["dir"], os.path.join(work, "slt", "slt_0.8"))
    shutil.copytree(slt_run["dir"], os.path.join(work, "slt", "slt_0.9"))  # in flight: no .done, not packed
    for run in ("dense", "slt/slt_0.8"):
        open(os.path.join(work, run, ".done"), "w").close()
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "multi30k",
                          "store.sh")

    def store_sh(command):
        result = subprocess.run(["bash", "-c", f'set -euo pipefail; source "{script}"; {command}'], capture_output=True,
                                text=True, env=dict(env(), WORK=work, STORE=store), timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    def scoring(folder):  # the driver's publish: results, then pack_finished, so that each archive has its scores
        printed = run_tool("fairseq-slt", "results", folder, "--subset", "test", "--beam", 2, "--generate-command",
                           short_generate())
        return [line for line in printed.stderr.splitlines() if line.startswith("scoring ")]

    assert len(scoring(work)) == 2  # dense and slt_0.8 (slt_0.9 is a copy of it)
    assert store_sh("pack_finished").count("packed ") == 2
    assert sorted(_files(store)) == ["dense.tar.gz", os.path.join("slt", "slt_0.8.tar.gz")]
    assert store_sh("pack_finished") == ""  # packed once
    shutil.move(work, str(tmp_path / "lost"))  # the machine is gone
    assert store_sh("restore").count("unpacked ") == 2
    assert store_sh("restore") == ""  # finished runs are left as they are
    leftover = os.path.join(work, "slt", ".tmp-unpack-x")  # an unpack killed before its rename
    shutil.copytree(os.path.join(work, "slt", "slt_0.8"), leftover)
    assert store_sh("pack_finished") == ""  # is no run
    shutil.rmtree(leftover)
    lost = str(tmp_path / "lost")
    assert sorted(os.listdir(work)) == ["dense", "slt"] and os.listdir(os.path.join(work, "slt")) == ["slt_0.8"]
    for run in ("dense", "slt/slt_0.8"):
        assert _files(os.path.join(work, run)) == _files(os.path.join(lost, run))
        for name in ("checkpoint_best.pt", "checkpoint_rewind_4.pt" if run == "dense" else "checkpoint_rewind_0.pt"):
            before, after = load(os.path.join(lost, run, name)), load(os.path.join(work, run, name))
            assert all(torch.equal(bits(v), bits(after["model"][k])) for k, v in before["model"].items())
    assert scoring(work) == []  # a new machine does not score the restored runs again
