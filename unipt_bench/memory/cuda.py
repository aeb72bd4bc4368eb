"""CUDA caching-allocator peaks per phase: each phase resets the peak counters and reads them at its end.

The allocator's counters are kept on the host: they change when the Python program allocates or
frees, in program order, not when kernels run. So reading and resetting them needs no
`torch.cuda.synchronize()`, and tracking adds no GPU stall to a step.

Reads go through a small `CudaStats` object so tests can inject a reader; without a GPU the tracker
is never built (the runner refuses `cuda` mode with a clear message).
"""

from __future__ import annotations

import statistics
from typing import Any

from .base import TRAINING_PHASES
from .registry import TrackerContext, register_tracker


class CudaStats:
    """The torch.cuda calls the tracker needs, for one device (default: torch's current device)."""

    def __init__(self, device: int | None = None) -> None:
        import torch

        self.torch = torch
        self.device = torch.cuda.current_device() if device is None else device

    def reset_peaks(self) -> None:
        self.torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict[str, int]:
        # the nested form, as the allocator gives it: memory_stats() would flatten ~100 keys per read
        stats = self.torch.cuda.memory_stats_as_nested_dict(self.device)

        def peak(name: str) -> int:
            return int(stats.get(name, {}).get("all", {}).get("peak", 0))

        return {
            "max_memory_allocated": peak("allocated_bytes"),
            "max_memory_reserved": peak("reserved_bytes"),
            "active_bytes_peak": peak("active_bytes"),
            "num_alloc_retries": int(stats.get("num_alloc_retries", 0)),
            "num_ooms": int(stats.get("num_ooms", 0)),
        }


def other_processes_bytes() -> tuple[int, str]:
    """GPU memory held by other processes, and how it was measured (NVML per process when it can)."""
    import torch

    from .nvml import PynvmlReader, Unavailable

    try:
        reader = PynvmlReader()
        try:
            return reader.device_used() - reader.process_used(), "by other processes (NVML)"
        except Unavailable:
            return reader.device_used(), "on the device, this process's CUDA context included (NVML device total)"
    except Unavailable:
        free, total = torch.cuda.mem_get_info()
        return total - free, "on the device, this process's CUDA context included (cudaMemGetInfo)"


def library_workspace_bytes() -> int | None:
    """Bytes the cuBLAS/cuBLASLt workspaces hold in the caching allocator (they count in
    max_memory_allocated but belong to no tensor, so no estimate sees them); None if torch cannot say.

    Measured by releasing them: the next matmul allocates them again.
    """
    import torch

    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is None or not torch.cuda.is_available():
        return None
    before = torch.cuda.memory_allocated()
    clear()
    return max(0, before - torch.cuda.memory_allocated())


def p99(values: list[int]) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


class CudaTracker:
    """Allocator peaks per phase and per step (max_memory_allocated, reserved, active), plus retries and OOMs.

    `peak_bytes` is the highest phase peak, evaluation included: what the run needed to fit.
    """

    counter = "cuda_allocator"

    def __init__(self, stats: CudaStats | None = None) -> None:
        self.stats = stats or CudaStats()
        self.phase: str | None = None
        self.by_phase: dict[str, dict[str, int]] = {}
        self.step_peak = 0
        self.steps: list[int] = []
        self.trace: list[dict[str, Any]] = []  # one entry per (step, phase)
        self.last: dict[str, int] = {}

    def __enter__(self) -> CudaTracker:
        self.stats.reset_peaks()
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_phase()

    def _close_phase(self) -> None:
        if self.phase is None:
            return
        now = self.stats.read()
        self.last = now
        seen = self.by_phase.setdefault(self.phase, {})
        for key in ("max_memory_allocated", "max_memory_reserved", "active_bytes_peak"):
            seen[key] = max(seen.get(key, 0), now[key])
        self.trace.append({"step": len(self.steps), "phase": self.phase, "max_memory_allocated": now["max_memory_allocated"],
                           "max_memory_reserved": now["max_memory_reserved"]})
        if self.phase in TRAINING_PHASES:
            self.step_peak = max(self.step_peak, now["max_memory_allocated"])
        self.phase = None

    def mark(self, phase: str) -> None:
        self._close_phase()
        self.stats.reset_peaks()
        self.phase = phase

    def end_step(self) -> None:
        self._close_phase()
        self.steps.append(self.step_peak)
        self.step_peak = 0

    def result(self) -> dict[str, Any]:
        peak = max((p["max_memory_allocated"] for p in self.by_phase.values()), default=0)
        return {
            "counter": self.counter,
            "peak_bytes": peak,
            "max_memory_reserved": max((p["max_memory_reserved"] for p in self.by_phase.values()), default=0),
            "by_phase": {phase: dict(values) for phase, values in self.by_phase.items()},
            "step_peak_bytes": list(self.steps),
            "trace": list(self.trace),
            "step_stats": {
                "max": max(self.steps, default=0),
                "mean": statistics.fmean(self.steps) if self.steps else 0,
                "p99": p99(self.steps) if self.steps else 0,
            },
            "num_alloc_retries": self.last.get("num_alloc_retries", 0),
            "num_ooms": self.last.get("num_ooms", 0),
        }


@register_tracker("cuda_allocator", {"cuda"}, primary=True,
                  description="the caching allocator's peaks per phase and step (max_memory_allocated, ...)")
def cuda_allocator(context: TrackerContext) -> CudaTracker:
    return CudaTracker()
