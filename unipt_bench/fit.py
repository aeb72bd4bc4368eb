"""The largest per-GPU batch that fits a memory budget, and the memory-vs-batch line measured on the way.

Peak memory of a training step is close to linear in the batch: fixed bytes (parameters, gradients,
optimizer state) plus bytes per sample (activations). Two probes give the line, the line predicts the
largest batch, and probes around the prediction confirm it; a binary search takes over whenever the
line is off (as on a GPU, where the allocator rounds and fragments).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import RunSpec
from .errors import UserError

UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
MAX_BYTES = 2**63  # sizes are compared with byte counts held in 64 bits


def parse_bytes(text: str) -> int:
    """"24GiB", "1.5 GB", "800MiB", "1073741824" -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = (match.group(2) or "b").lower() if match else ""
    if not match or unit not in UNITS:
        raise UserError(f"cannot read {text!r} as a size; write e.g. 24GiB, 1.5GB or 800MiB")
    size = float(match.group(1)) * UNITS[unit]
    if size >= MAX_BYTES:  # also inf, from hundreds of digits
        raise UserError(f"{text[:40]!r}{'...' if len(text) > 40 else ''} is too large a size (at most 8 EiB)")
    return int(size)


@dataclass
class FitResult:
    budget_bytes: int
    max_batch: int | None  # None: not even a batch of 1 fits
    probes: list[tuple[int, int | None]] = field(default_factory=list)  # (batch, peak bytes or None for OOM)
    fixed_bytes: int | None = None  # the line through the first two probes
    bytes_per_sample: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget_bytes,
            "max_batch": self.max_batch,
            "probes": [{"batch": b, "peak_bytes": p} for b, p in self.probes],
            "line": {"fixed_bytes": self.fixed_bytes, "bytes_per_sample": self.bytes_per_sample},
        }


def fit_batch(measure: Callable[[int], int | None], budget: int, start: int, limit: int = 1 << 16) -> FitResult:
    """Largest batch b <= limit with measure(b) <= budget; measure gives peak bytes, or None for out of memory."""
    result = FitResult(budget, None)
    bounds = {"good": 0, "bad": limit + 1}  # largest batch known to fit, smallest known not to

    def probe(batch: int) -> int | None:
        peak = measure(batch)
        result.probes.append((batch, peak))
        if peak is not None and peak <= budget:
            bounds["good"] = max(bounds["good"], batch)
        else:
            bounds["bad"] = min(bounds["bad"], batch)
        return peak

    small = max(1, min(start, limit) // 2)
    large = min(limit, 2 * small)
    a, b = probe(small), (probe(large) if large > small else None)
    if a is not None and b is not None and b > a:  # the line through the two probes predicts the answer
        result.bytes_per_sample = (b - a) / (large - small)
        result.fixed_bytes = round(a - result.bytes_per_sample * small)
        guess = min(limit, int((budget - result.fixed_bytes) // result.bytes_per_sample))
        for candidate in (guess, guess + 1):
            if bounds["good"] < candidate < bounds["bad"]:
                probe(candidate)
    while bounds["bad"] > limit and bounds["good"] < limit:  # nothing failed yet: double until it does
        probe(min(limit, 2 * bounds["good"]))
    while bounds["bad"] - bounds["good"] > 1:  # binary search between what fits and what does not
        probe((bounds["good"] + bounds["bad"]) // 2)
    result.max_batch = bounds["good"] or None
    return result


def with_batch(spec: RunSpec, batch: int) -> RunSpec:
    return RunSpec.from_dict({**spec.to_dict(), "batch": batch})


def peak_of(result: dict[str, Any]) -> int | None:
    """The primary counter's peak of a run result dict; None when it ran out of memory."""
    from .results import RunResult

    run = RunResult(**result)
    if run.status == "oom":
        return None
    if run.status != "ok":
        raise UserError(f"{run.key}: {run.status}: {run.message}")
    return run.primary_memory()["peak_bytes"]


def fit_spec(spec: RunSpec, budget: int, run: Callable[[RunSpec], dict[str, Any]], limit: int) -> FitResult:
    """Fit one spec, starting from its own per-GPU batch; `run` profiles a spec and returns its result dict."""
    return fit_batch(lambda batch: peak_of(run(with_batch(spec, batch))), budget, spec.batch, limit)


class Prober:
    """Runs a fit's probes in one runner lane: estimate probes share a worker (fake tensors leave nothing
    behind); cpu and GPU probes each get a fresh process, so no allocator state carries over, even after
    an out-of-memory probe. No probe computes a calibration estimate: a probe needs its peak only."""

    def __init__(self, lane: Any = None) -> None:
        from .runner import Lane

        self.lane = lane or Lane()

    def __call__(self, spec: RunSpec) -> dict[str, Any]:
        return self.lane.run(spec, {"calibrate": False}, lambda info: None).__dict__

    def close(self) -> None:
        self.lane.close()


def fit_outcome(spec: RunSpec, budget: int, limit: int, probe: Callable[[RunSpec], dict[str, Any]]) -> dict[str, Any]:
    """A fit's record as `fit` stores it, or {"error": one line} when the spec cannot be fitted."""
    from .results import now

    try:
        fitted = fit_spec(spec, budget, probe, limit)
    except UserError as exc:
        return {"error": str(exc)}
    return {"spec": spec.to_dict(), "mode": spec.mode, "finished": now(), **fitted.to_dict()}


def fit_in_worker(spec_data: dict[str, Any], budget: int, limit: int) -> dict[str, Any]:
    """One spec's fit in a launcher's worker (a Ray task, a Slurm job), its probes in child processes."""
    probe = Prober()
    try:
        return fit_outcome(RunSpec.from_dict(spec_data), budget, limit, probe)
    except Exception as exc:  # noqa: BLE001  (an outcome, never a crash of the worker)
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        probe.close()
