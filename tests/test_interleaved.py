"""The serving benchmark's rounds across processes (benchmarks/interleaved.py): every round times each engine of
each worker process once, the processes' and the engines' order rotated each round, and ratios are taken round
by round."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import interleaved  # noqa: E402

WORKER = """
import sys, time
sys.path.insert(0, {benchmarks!r})
import interleaved

def engine(name):
    def translate(chosen, fixed):
        with open({log!r}, "a") as log:
            log.write(f"{{name}} {{len(chosen)}} {{fixed}}\\n")
        return {{i: f"{{name}}:{{i}}" for i in chosen}}
    return translate

interleaved.serve({{name: engine(name) for name in sys.argv[1:]}}, [0, 1, 2], 2)
print("TRIAL done", flush=True)
"""


def test_each_round_times_every_engine_once_in_a_rotated_order(tmp_path):
    log = tmp_path / "log"
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(benchmarks=os.path.join(ROOT, "benchmarks"), log=str(log)))
    workers = interleaved.Workers({"first": ([sys.executable, str(script), "a", "b"], dict(os.environ)),
                                   "second": ([sys.executable, str(script), "c"], dict(os.environ))})
    try:
        rounds = [workers.round(7, round_, hyps=round_ == 0) for round_ in range(3)]
    finally:
        tails = workers.close()
    # a warm-up batch (2 sentences), then the timed pass (3), engine by engine, worker by worker
    calls = [line.split()[0] for line in log.read_text().splitlines() if line.split()[1] == "3"]
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert len(log.read_text().splitlines()) == 2 * 9 and all(line.endswith(" 7") for line in log.read_text().splitlines())
    assert all(sorted(found) == ["a", "b", "c"] and all(r["sentences"] == 3 for r in found.values()) for found in rounds)
    assert rounds[0]["c"]["hyps"] == ["c:0", "c:1", "c:2"] and "hyps" not in rounds[1]["a"]
    assert tails == {"first": "TRIAL done\n", "second": "TRIAL done\n"}


def test_a_worker_that_dies_is_named_with_its_error(tmp_path):
    with pytest.raises(SystemExit, match="(?s)broken failed: .*ValueError: no model here"):
        interleaved.Workers({"broken": ([sys.executable, "-c", "raise ValueError('no model here')"], dict(os.environ))})


def test_ratios_are_taken_round_by_round():
    # the machine slowed down in the second round for dense and in the third for the other engine: the ratio
    # of their medians (20 / 10 = 2.0) would count the slow spells, the median of the rounds' ratios does not
    speeds = {"dense": [10.0, 5.0, 10.0], "ct2": [40.0, 20.0, 20.0]}
    found = interleaved.summary(speeds, "dense")
    assert found["ct2"] == (20.0, 1.0, 4.0) and found["dense"] == (10.0, 0.5, 1.0)
