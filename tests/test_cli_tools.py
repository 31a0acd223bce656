"""fairseq-slt analyze, user-dir resolution and packaging."""
import json
import os
import subprocess
import sys
import zipfile

import torch

from conftest import ROOT, load, run_tool
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


def test_relative_user_dir_resolves_beside_fairseq():
    """fairseq resolves '--user-dir fairseq_slt' beside its package: a regular install puts us there,
    an editable one gets a link from 'fairseq-slt link-user-dir' (run by scripts/setup_env.sh)."""
    import fairseq

    beside = os.path.join(os.path.dirname(os.path.dirname(fairseq.__file__)), "fairseq_slt")
    assert os.path.realpath(beside) == os.path.realpath(os.path.join(ROOT, "fairseq_slt"))
    printed = run_tool("fairseq-slt", "user-dir").stdout.strip()
    assert os.path.isabs(printed) and os.path.realpath(printed) == os.path.realpath(beside)


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
