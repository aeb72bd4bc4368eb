"""Tracking overhead: a run's step time with and without its trackers, the two kinds of step interleaved.

cpu and cuda: each round times one untracked step, then one step under a fresh set of trackers
(entered and exited outside the timed region, so the NVML sampler thread runs during the tracked step
only). estimate: each round traces a profile's steps on fake tensors without, then with, the tensor
memory tracker, each time on a freshly materialised model. Interleaving keeps clock drift and load
changes out of the comparison; medians keep outliers out.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from .config import RunSpec
from .profile import MAX_MICRO_BATCHES, NullTracker, RunOptions, make_trackers, prepare

GOAL_PERCENT = 1.0  # the cuda trackers may add at most 1% to a paper-scale run's step time


@dataclass
class Overhead:
    untracked: list[float]  # seconds per step
    tracked: list[float]

    @property
    def untracked_median(self) -> float:
        return statistics.median(self.untracked)

    @property
    def tracked_median(self) -> float:
        return statistics.median(self.tracked)

    @property
    def percent(self) -> float:
        """Median tracked step time over median untracked step time, minus one, in percent."""
        return 100 * (self.ratio - 1)

    @property
    def ratio(self) -> float:
        """Median tracked time over median untracked time."""
        return self.tracked_median / self.untracked_median

    @property
    def within_goal(self) -> bool:
        """Tracking adds at most GOAL_PERCENT to the step time (what selfcheck --gpu and the benchmark judge)."""
        return self.percent <= GOAL_PERCENT


def measure_overhead(spec: RunSpec, rounds: int = 20, trackers: Callable[[], Any] | None = None) -> Overhead:
    """Time `rounds` untracked and `rounds` tracked training steps of `spec` (cpu or cuda mode).

    `trackers()` makes one round's trackers; by default the mode's own (cuda: allocator + NVML).
    One untracked warm-up step comes first (allocator caches, cuBLAS handles, lazy optimizer state).
    """
    if spec.mode not in ("cpu", "cuda"):
        raise ValueError("tracking overhead needs real kernels: mode cpu or cuda")
    result = Overhead([], [])
    with ExitStack() as stack:
        run = prepare(spec, stack)
        make = trackers or (lambda: make_trackers(spec, run, RunOptions()))
        run.timed_step(NullTracker())
        for _ in range(rounds):
            result.untracked.append(run.timed_step(NullTracker()))
            with make() as active:
                result.tracked.append(run.timed_step(active))
    return result


def measure_estimate_overhead(spec: RunSpec, rounds: int = 2) -> Overhead:
    """Seconds to trace an estimate's profiled steps on fake tensors, untracked and tracked, `rounds` of each.

    A tracked trace is what a profile times as `tracked_seconds` (the tracker entered, the training
    steps and the evaluation forward, the tracker left); an untracked one runs the same steps on the
    same fake tensors with no tracker. One untracked warm-up trace comes first (fake-tensor caches).
    """
    if spec.mode != "estimate":
        raise ValueError("this measures the fake-tensor tracker: mode estimate")
    micro = min(spec.accumulate, MAX_MICRO_BATCHES)

    def trace(tracked: bool) -> float:
        with ExitStack() as stack:
            run = prepare(spec, stack)
            tracker = make_trackers(spec, run, RunOptions()) if tracked else NullTracker()
            start = time.perf_counter()
            with tracker:
                run.trace(tracker, spec.steps, micro)
            return time.perf_counter() - start

    trace(tracked=False)
    result = Overhead([], [])
    for _ in range(rounds):
        result.untracked.append(trace(tracked=False))
        result.tracked.append(trace(tracked=True))
    return result
