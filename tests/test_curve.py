"""fairseq-slt curve: T by its rule, and the curve of real interval checkpoints scored as results scores."""
import json
import os

from conftest import run_tool, tool_path
from fairseq_slt.cli.curve import pick_t


def test_t_is_the_first_checkpoint_whose_next_quarter_gains_less_than_the_threshold():
    # 2000's window runs to 2500 (the first checkpoint at or past 1.25 * 2000): +0.2 < 0.3
    assert pick_t({500: 20, 1000: 25, 1500: 27, 2000: 28, 2500: 28.2, 3000: 28.3, 3500: 28.9}) == 2000
    # 1000's window runs to 1500 (1250 has no checkpoint): a dip at 1500 then a rise does not count later gains
    assert pick_t({500: 20, 1000: 25, 1500: 24.9, 2000: 27}) == 1000
    # a gain of exactly 0.3 is not less than 0.3; the last checkpoint has no window: undecided
    assert pick_t({1000: 25, 1500: 25.3, 2000: 25.6}) is None
    assert pick_t({4000: 30.0, 4500: 30.5, 5000: 30.6}) is None  # 4000's window ends at 5000: +0.6
    assert pick_t({4000: 30.0, 4500: 30.5, 5000: 30.6, 5500: 30.7, 6000: 30.7}) == 4500  # 4500 -> 6000: +0.2
    # confirm=2: a flat window that the next checkpoint's window does not repeat is noise
    noisy = {1500: 31.1, 2000: 33.5, 2500: 33.3, 3000: 34.5, 3500: 34.6, 4000: 34.7, 4500: 34.8, 5000: 34.8}
    assert pick_t(noisy) == 2000 and pick_t(noisy, confirm=2) == 3000
    assert pick_t({1000: 25, 1500: 25.1, 2000: 25.2}, confirm=2) == 1000  # 1000 and 1500 both flat
    assert pick_t({1000: 25, 1500: 25.1}, confirm=2) is None  # 1500's window not reached yet


def test_curve_scores_every_kept_checkpoint_and_reuses_results_cache(dense_run, data_bin, tmp_path):
    references = os.path.join(os.path.dirname(data_bin), "text")
    report = str(tmp_path / "curve.json")
    args = ["curve", dense_run["dir"], "--references-dir", references, "--tgt", "de", "--subsets", "valid",
            "--beam", 2, "--generate-command", tool_path("fairseq-generate"), "--json", report,
            "--plot", tmp_path / "curve.png"]
    first = run_tool("fairseq-slt", *args)
    result = json.load(open(report))
    (run, points), = result["runs"].items()
    assert run == dense_run["dir"] and [p["update"] for p in points] == [8, 16]
    cache = json.load(open(os.path.join(dense_run["dir"], "scores.json")))  # results' scorer and cache
    for point in points:
        entry, = [e for e in cache if e["options"]["checkpoint"] == os.path.basename(point["checkpoint"])]
        assert entry["options"]["subset"] == "valid" and point["valid"] == entry["result"]["bleu"]
        assert entry["result"]["sentences"] == 100
    assert result["mean"] == [{"update": p["update"], "valid": p["valid"], "valid_loss": p["valid_loss"]}
                              for p in points]
    # 8's window runs to 16 (the first checkpoint at or past 10); 16 has none
    expected = 8 if points[1]["valid"] - points[0]["valid"] < 0.3 else None
    assert result["T"] == expected and (f"T = {expected}" if expected else "T: not reached yet") in first.stdout
    assert open(tmp_path / "curve.png", "rb").read(4) == b"\x89PNG"
    again = run_tool("fairseq-slt", *args[:-4], "--json", report, "--force")
    assert "scoring" not in again.stderr  # every score came from the cache
    missing = run_tool("fairseq-slt", "curve", str(tmp_path), "--references-dir", references, "--tgt", "de",
                       check=False)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"fairseq-slt curve: error: {tmp_path} holds no interval checkpoints (checkpoint_E_U.pt): train with "
        "--save-interval-updates N --keep-interval-updates -1"]
