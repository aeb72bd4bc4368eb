"""Where runs run on this machine: how many at once, and which GPU each lane of runs gets.

Estimate runs share nothing (fake tensors, no kernels), so they fill every core; cpu runs default to
one at a time, since runs side by side would disturb each other's RSS and timings; cuda runs get one
lane per visible GPU (per block of GPUs when a data-parallel run needs several), each lane's processes
seeing only its own.
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


def gpus_per_run(specs: list) -> int:
    """GPUs the largest run needs (a data-parallel run's `gpus`), so that a lane holds enough of them."""
    return max((s.gpus for s in specs if s.mode == "cuda"), default=1)


def default_jobs(mode: str, per_run: int = 1) -> int:
    """Runs at once when --jobs is not given: in cuda mode, as many lanes as hold `per_run` GPUs each."""
    if mode == "estimate":
        return cores()
    if mode == "cuda":
        return max(1, len(visible_gpus()) // per_run)
    return 1


def lane_env(mode: str, jobs: int, per_run: int = 1) -> dict[int, dict[str, str]]:
    """Each lane's environment: in cuda mode with several lanes, its own block of `per_run` GPUs (a lane
    past the last block shares the first ones); threads split between lanes."""
    threads = {"OMP_NUM_THREADS": str(max(1, cores() // jobs))} if jobs > 1 else {}
    gpus = visible_gpus() if mode == "cuda" and jobs > 1 else []
    blocks = [",".join(gpus[i:i + per_run]) for i in range(0, len(gpus) - per_run + 1, per_run)] or [",".join(gpus)]
    return {k: {**threads, **({"CUDA_VISIBLE_DEVICES": blocks[k % len(blocks)]} if gpus else {})}
            for k in range(jobs)}
