"""Benchmarks of tracking cost (pytest-benchmark). Run: python -m pytest benchmarks --benchmark-only

- cuda: step time of the Table 5 BERT UniPT run with and without the cuda-mode trackers (allocator
  peaks per phase + NVML sampler), steps interleaved; fails when the overhead exceeds its goal
  (overhead.GOAL_PERCENT, 1%). Needs a GPU, skipped otherwise. Run with -s to see the figure; it is
  also in the benchmark JSON's extra_info.
- cpu: the trackers' own bookkeeping per training step (phase marks with an injected reader), the
  time to trace one paper-scale estimate, and, for one ResNeXt-101 and one BERT-base run, the tracked
  time of an estimate's steps against the untracked fake-tensor time of the same steps (goal: <= 3x).
"""

from __future__ import annotations

import pytest
import torch

from unipt_bench.memory.cuda import CudaTracker
from unipt_bench.suite_file import load_suite

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def t5_bert(label: str, mode: str):
    (spec,) = [s for s in load_suite("flickr30k").with_mode(mode) if s.config == "t5-bert" and s.label == label]
    return spec


@needs_gpu
def test_cuda_tracking_overhead(benchmark) -> None:
    """Step time of Table 5's BERT UniPT run, untracked and tracked steps interleaved; the overhead meets its goal."""
    from unipt_bench.overhead import GOAL_PERCENT, measure_overhead
    from unipt_bench.selfcheck import overhead_spec

    result = benchmark.pedantic(lambda: measure_overhead(overhead_spec(), rounds=30), rounds=1, iterations=1)
    benchmark.extra_info.update(untracked_ms=result.untracked_median * 1e3, tracked_ms=result.tracked_median * 1e3,
                                overhead_percent=result.percent)
    print(f"\ncuda tracking overhead: {result.untracked_median * 1e3:.2f} ms -> {result.tracked_median * 1e3:.2f} ms "
          f"per step ({result.percent:+.2f}%)")
    assert result.within_goal, f"tracking adds {result.percent:+.2f}% to the step time, above the {GOAL_PERCENT:g}% goal"


class FakeStats:
    def reset_peaks(self) -> None:
        pass

    def read(self) -> dict[str, int]:
        return {"max_memory_allocated": 1, "max_memory_reserved": 2, "active_bytes_peak": 1, "num_alloc_retries": 0,
                "num_ooms": 0}


def test_cuda_tracker_bookkeeping_per_step(benchmark) -> None:
    """The tracker's own Python work per step (three phases), without the GPU calls it wraps."""
    tracker = CudaTracker(FakeStats())

    def step() -> None:
        for phase in ("forward", "backward", "optimizer"):
            tracker.mark(phase)
        tracker.end_step()

    with tracker:
        benchmark(step)


def test_estimate_trace_time(benchmark) -> None:
    """Wall time to estimate the Table 5 BERT UniPT run on fake tensors (two traced AdamW steps)."""
    from unipt_bench.profile import profile

    spec = t5_bert("unipt", "estimate")
    benchmark.pedantic(lambda: profile(spec), rounds=2, iterations=1)


@pytest.mark.parametrize("config, label", [("t5-resnext", "full"), ("t5-bert", "full")])
def test_estimate_tracking_ratio(benchmark, config: str, label: str) -> None:
    """Tracked over untracked fake-tensor time of one Table 5 run's profiled steps, interleaved in one process."""
    from unipt_bench.overhead import measure_estimate_overhead

    (spec,) = [s for s in load_suite("flickr30k").with_mode("estimate") if s.config == config and s.label == label]
    result = benchmark.pedantic(lambda: measure_estimate_overhead(spec, rounds=2), rounds=1, iterations=1)
    benchmark.extra_info.update(untracked_s=result.untracked, tracked_s=result.tracked, ratio=result.ratio)
    print(f"\n{config}/{label} estimate: untracked {result.untracked_median:.2f} s, tracked "
          f"{result.tracked_median:.2f} s per trace ({result.ratio:.2f}x)")
