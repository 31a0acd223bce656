"""Timed rounds interleaved across processes, for the serving benchmark.

Each engine runs in a process of its own (two engines' thread pools in one process slow each other down), yet
a round times every engine once, process after process, in an order rotated each round. A drift of the
machine's speed (another tenant of the host, a slow minute) then reaches every engine of that round alike, and
each engine's ratio to the baseline is the median of its round-by-round ratios. Run one process after another
instead, a slow spell fell on whichever engines ran in it: on the 2-core AMD EPYC of docs/benchmarks the same
CTranslate2 setting measured 3.53x fairseq dense in one run and 4.95x in the run before.

Worker side: ``serve`` answers one JSON command a line on stdin (a round: which pass, which round, whether to
return the hypotheses) with one ``RESULT`` line. Parent side: ``Workers`` starts the processes, runs the rounds
and closes them; ``summary`` turns the speeds into medians, spreads and ratios. No torch, no fairseq.
"""
import json
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Sequence, Tuple

PAUSE = 0.2  # seconds between two processes' turns, untimed: the last one's threads go idle first


def rotated(items: Sequence, by: int) -> list:
    items = list(items)
    by %= max(len(items), 1)
    return items[by:] + items[:by]


def serve(engines: Dict[str, Callable], sources: list, batch_size: int) -> None:
    """Worker side. ``engines``: name -> translate(sentence ids, fixed length) -> {id: hypothesis}. Each round
    runs every engine once (its order rotated each round), each after a warm-up batch; returns at end of input."""
    print("READY", flush=True)
    for line in sys.stdin:
        command, result = json.loads(line), {}
        for name in rotated(engines, command["round"]):
            engines[name](sources[:batch_size], command["fixed"])  # warm-up
            started = time.perf_counter()
            out = engines[name](sources, command["fixed"])
            result[name] = {"seconds": time.perf_counter() - started, "sentences": len(sources)}
            if command.get("hyps"):
                result[name]["hyps"] = [out[i] for i in sources]
        print("RESULT " + json.dumps(result), flush=True)


class Workers:
    """The worker processes of one setting: name -> (command line, environment). Started at once (loading is
    not timed), then driven one at a time."""

    def __init__(self, commands: Dict[str, Tuple[List[str], Dict[str, str]]]):
        self.processes, self.logs = {}, {}
        for name, (command, env) in commands.items():
            self.logs[name] = tempfile.TemporaryFile(mode="w+")
            self.processes[name] = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                    stderr=self.logs[name], text=True, env=env)
        for name in self.processes:
            self._read(name, "READY")

    def round(self, fixed: int, round_: int, hyps: bool) -> Dict[str, dict]:
        """Every worker's engines once, the workers' order rotated by ``round_``: engine -> its result."""
        results = {}
        for name in rotated(self.processes, round_):
            process = self.processes[name]
            process.stdin.write(json.dumps({"fixed": fixed, "round": round_, "hyps": hyps}) + "\n")
            process.stdin.flush()
            results.update(json.loads(self._read(name, "RESULT ")))
            time.sleep(PAUSE)
        return results

    def close(self) -> Dict[str, str]:
        """Ends the workers: name -> what each printed after its last round (e.g. the sparse plan's summary)."""
        tails = {}
        for name, process in self.processes.items():
            tails[name] = process.communicate()[0]
            self.logs[name].close()
        return tails

    def _read(self, name: str, tag: str) -> str:
        process = self.processes[name]
        for line in process.stdout:
            if line.startswith(tag):
                return line[len(tag):].strip()
        process.wait()
        self.logs[name].seek(0)
        raise SystemExit(f"{name} failed: {self.logs[name].read()[-2000:]}")


def summary(speeds: Dict[str, List[float]], baseline: str) -> Dict[str, Tuple[float, float, float]]:
    """engine -> (median sentences/s, spread: (max - min) / median, median of its ratio to ``baseline`` round by
    round)."""
    out = {}
    for name, values in speeds.items():
        median = statistics.median(values)
        ratio = statistics.median(a / b for a, b in zip(values, speeds[baseline]))
        out[name] = (median, (max(values) - min(values)) / median, ratio)
    return out
