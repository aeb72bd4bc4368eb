"""Benchmarks of tracking cost (pytest-benchmark). Run: python -m pytest benchmarks --benchmark-only

- cuda: step time of the Table 5 BERT UniPT run with and without the cuda-mode trackers (allocator
  peaks per phase + NVML sampler); the overhead goal is <= 1%. Needs a GPU, skipped otherwise.
- cpu: the trackers' own bookkeeping per training step (phase marks with an injected reader), and the
  time to trace one paper-scale estimate.
"""

from __future__ import annotations

import pytest
import torch

from unipt_bench.config import load_suite
from unipt_bench.memory.base import Trackers
from unipt_bench.memory.cuda import CudaTracker

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def t5_bert(label: str, mode: str):
    (spec,) = [s for s in load_suite("flickr30k").with_mode(mode) if s.config == "t5-bert" and s.label == label]
    return spec


@needs_gpu
@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
def test_cuda_step_time(benchmark, tracked: bool) -> None:
    from contextlib import ExitStack

    from unipt_bench.build import example_batch
    from unipt_bench.memory.nvml import NvmlTracker
    from unipt_bench.profile import NullTracker, make_optimizer, materialise, train_step

    spec = t5_bert("unipt", "cuda")
    with ExitStack() as stack:
        built = materialise(spec, stack)
        built.model.train()
        batch = example_batch(built, spec)
        optimizer, params = make_optimizer(built)
        tracker = Trackers([CudaTracker(), NvmlTracker()]) if tracked else NullTracker()
        stack.enter_context(tracker) if tracked else None

        def step() -> None:
            train_step(built.model, batch, optimizer, params, built.task.recipe.grad_clip, tracker)
            torch.cuda.synchronize()

        step()  # warm-up: allocator caches and cuDNN/cuBLAS handles
        benchmark.pedantic(step, rounds=20, iterations=1)


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
