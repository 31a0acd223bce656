"""Whole steps decide whether a module runs with the layer plan's choices or dense.

A layer timed alone (``sparse_inference.Plan``) does not see what a whole step costs: caches, the thread pools
of two kernels, the copies around them. ``StepTrial`` therefore runs a module's calls (fairseq's encoder, and
each decoding step of the decoder) alternately with the plan's choices and all dense, and keeps the plan only
where the steps with it are faster; elsewhere that module runs dense. Torch only, no fairseq.
"""
import itertools
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .sparse_inference import Plan, rows_bucket

TRIAL_PAIRS = 8  # whole steps timed in each mode per (module, rows bucket, threads) before the choice is fixed,
# at the least; more where they are short: each mode's steps take TRIAL_SECONDS in all, or TRIAL_PAIRS_MAX pairs
# ran (the demo model's decoding steps at batch 1 take ~1.4 ms: 8 pairs of them sent its whole run dense in 2 of 4
# fresh engines, where its plan kept was 1.09x dense; ~20 pairs kept it in 4 of 4)
TRIAL_SECONDS = 0.03
TRIAL_PAIRS_MAX = 64
STEP_MARGIN = 0.97  # the plan's choices stand only where whole steps with them take under 97 % of dense's
# (each side's slowest step left out of its sum: one step the machine stalled cannot decide)
EARLY_PAIRS, EARLY_MARGIN = 3, 0.6  # a plan whose steps take under 60 % of dense's after 3 pairs is kept at once:
# the trial's dense steps cost most where the plan wins most (a whole fairseq-generate run of the base-size model,
# 256 sentences at batch 64: about 100 decoding steps in all, most of them in the trial)


class StepTrial:
    """Whole steps decide: per (module, rows bucket, threads), ``pairs`` calls run with the plan's choices and
    as many all dense, alternating (the order swapped every pair, so a step cost that grows along a sentence
    favours neither); the plan is kept where its calls took under ``margin`` of the dense ones' time, each
    side's slowest call left out, and the module runs dense there otherwise. Calls in a bucket need not be
    alike (the encoder's batches differ in length), so times are compared in sums, not pair by pair. A call in
    which the plan timed layers is not counted at all (it ran on caches the timing had filled: a bias against
    the plan); short calls are timed until each mode's add up to ``seconds`` (or ``max_pairs`` pairs ran). A plan
    far ahead (under ``EARLY_MARGIN`` of dense's time after ``early_pairs`` pairs) is kept at once. Both modes
    are compared on as many calls each."""

    def __init__(self, plan: Plan, pairs: int = TRIAL_PAIRS, margin: float = STEP_MARGIN,
                 clock: Callable[[], float] = time.perf_counter, seconds: float = TRIAL_SECONDS,
                 max_pairs: int = TRIAL_PAIRS_MAX, early_pairs: Optional[int] = EARLY_PAIRS):
        """``clock``: seconds, read before and after each timed call (tests pass one whose time they set);
        ``early_pairs`` None: no early choice."""
        self.plan, self.pairs, self.margin, self.clock = plan, pairs, margin, clock
        self.seconds, self.max_pairs, self.early_pairs = seconds, max(max_pairs, pairs), early_pairs
        self.trials: Dict[Tuple[str, int, int], List[List[float]]] = {}  # key -> [plan times, dense times]
        self.choices: Dict[Tuple[str, int, int], bool] = {}  # key -> keep the plan
        self.calls = {"plan": 0, "dense": 0, "trial": 0}

    def wrap(self, module: nn.Module, name: str) -> None:
        """Replace ``module.forward`` (on the instance) by a timed one; rows: its first tensor's first dimension."""
        forward = module.forward

        def step(*args, **kwargs):
            if torch.is_grad_enabled():
                return forward(*args, **kwargs)
            first = next((a for a in itertools.chain(args, kwargs.values()) if torch.is_tensor(a)), None)
            if first is None or first.dim() == 0:
                return forward(*args, **kwargs)
            return self.run(name, first.shape[0], lambda: forward(*args, **kwargs))

        module.forward = step

    def run(self, name: str, rows: int, call):
        key = (name, rows_bucket(rows), torch.get_num_threads())
        keep = self.choices.get(key)
        if keep is not None:  # decided: nothing timed
            self.calls["plan" if keep else "dense"] += 1
            return self._run_as(call, dense=not keep)
        times = self.trials.setdefault(key, [[], []])
        done = len(times[0]) + len(times[1])
        dense = (done % 2 == 0) == ((done // 2) % 2 == 0)  # dense, plan | plan, dense | dense, plan ...
        calibrated = self.plan.calibration_seconds
        result, seconds = self._call(call, dense)
        self.calls["trial"] += 1
        if self.plan.calibration_seconds != calibrated:  # the plan timed layers in this call: not counted
            return result
        times[1 if dense else 0].append(seconds)
        keep = self._decide(times)
        if keep is not None:
            self.choices[key] = keep
        return result

    def _decide(self, times: List[List[float]]) -> Optional[bool]:
        """Keep the plan (True), run dense (False), or not yet (None)."""
        plan_s, dense_s, count = _compared(times)
        if self.early_pairs is not None and count >= self.early_pairs and plan_s < EARLY_MARGIN * dense_s:
            return True
        if count >= self.max_pairs or (count >= self.pairs and
                                       min(sum(t[:count]) for t in times) >= self.seconds):
            return plan_s < self.margin * dense_s
        return None

    def _run_as(self, call, dense: bool):
        self.plan.all_dense = dense
        try:
            return call()
        finally:
            self.plan.all_dense = False

    def _call(self, call, dense: bool):
        started = self.clock()
        result = self._run_as(call, dense)
        return result, self.clock() - started

    def summary(self) -> List[str]:
        lines = []
        for (name, bucket, threads), keep in sorted(self.choices.items()):
            plan_s, dense_s, count = _compared(self.trials[(name, bucket, threads)])
            lines.append(f"whole {name} calls, rows <= {bucket}, {threads} thread(s): "
                         f"{'the layer choices kept' if keep else 'dense'} (with them at {dense_s / plan_s:.2f}x "
                         f"dense speed over {count} calls each, the slowest of each left out)")
        return lines


def _compared(times: List[List[float]]) -> Tuple[float, float, int]:
    """The plan's and dense's trimmed sums over as many calls each (the first ``count``), and ``count``."""
    count = min(len(times[0]), len(times[1]))
    return _trimmed(times[0][:count]), _trimmed(times[1][:count]), count


def _trimmed(seconds: List[float]) -> float:
    """The calls' total time without the slowest call (of two or more)."""
    return sum(seconds) - (max(seconds) if len(seconds) > 1 else 0)
