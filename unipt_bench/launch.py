"""Where runs run on this machine: how many at once, and which GPU each lane of runs gets.

Estimate runs share nothing (fake tensors, no kernels), so they fill every core; cpu runs default to
one at a time, since runs side by side would disturb each other's RSS and timings; cuda runs get one
lane per visible GPU, each lane's processes seeing only its own GPU.
"""

from __future__ import annotations

import os


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (or 0..n-1)."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [d.strip() for d in listed.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_jobs(mode: str) -> int:
    """Runs at once when --jobs is not given."""
    if mode == "estimate":
        return cores()
    if mode == "cuda":
        return max(1, len(visible_gpus()))
    return 1


def lane_env(mode: str, jobs: int) -> dict[int, dict[str, str]]:
    """Each lane's environment: in cuda mode with several lanes, its own GPU; threads split between lanes."""
    threads = {"OMP_NUM_THREADS": str(max(1, cores() // jobs))} if jobs > 1 else {}
    gpus = visible_gpus() if mode == "cuda" and jobs > 1 else []
    return {k: {**threads, **({"CUDA_VISIBLE_DEVICES": gpus[k % len(gpus)]} if gpus else {})} for k in range(jobs)}
