"""The largest per-GPU batch that fits a memory budget, and the memory-vs-batch line measured on the way.

Estimates fit on a memory curve (curves.py): three traces give the exact peak at every batch, the curve
gives the answer, and two traces check it, at the answer and one above (five traces in all). Where the
curve cannot be built, or a check disagrees with it, the search below takes over with the traces made.

cpu and GPU runs search: peak memory of a training step is close to linear in the batch: fixed bytes
(parameters, gradients, optimizer state) plus bytes per sample (activations). Two probes give the line,
the line predicts the largest batch, and probes around the prediction confirm it; a binary search takes
over whenever the line is off (as on a GPU, where the allocator rounds and fragments).
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


def parse_bytes(text: str) -> int:
    """"24GiB", "1.5 GB", "800MiB", "1073741824" -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = (match.group(2) or "b").lower() if match else ""
    if not match or unit not in UNITS:
        raise UserError(f"cannot read {text!r} as a size; write e.g. 24GiB, 1.5GB or 800MiB")
    return int(float(match.group(1)) * UNITS[unit])


@dataclass
class FitResult:
    budget_bytes: int
    max_batch: int | None  # None: not even a batch of 1 fits
    probes: list[tuple[int, int | None]] = field(default_factory=list)  # (batch, peak bytes or None for OOM)
    fixed_bytes: int | None = None  # the line through the first two probes
    bytes_per_sample: float | None = None
    method: str = "search"  # "curve": answered by the memory curve and checked by two traces; "search": probed
    why_search: str = ""  # an estimate that searched: why the curve could not answer
    curve: dict[str, Any] | None = None  # the memory curve (MemoryCurve.to_dict) of a fit on a curve

    def to_dict(self) -> dict[str, Any]:
        out = {
            "budget_bytes": self.budget_bytes,
            "max_batch": self.max_batch,
            "probes": [{"batch": b, "peak_bytes": p} for b, p in self.probes],
            "line": {"fixed_bytes": self.fixed_bytes, "bytes_per_sample": self.bytes_per_sample},
            "method": self.method,
        }
        if self.why_search:
            out["why_search"] = self.why_search
        if self.curve is not None:
            out["curve"] = self.curve
        return out


def line_batches(start: int, limit: int) -> tuple[int, int]:
    """The two batches whose peaks give the fit's line: half the spec's batch and twice that."""
    small = max(1, min(start, limit) // 2)
    return small, min(limit, 2 * small)


def fit_batch(measure: Callable[[int], int | None], budget: int, start: int, limit: int = 1 << 16,
              result: FitResult | None = None) -> FitResult:
    """Largest batch b <= limit with measure(b) <= budget; measure gives peak bytes, or None for out of memory.
    `result`: a fit to continue (its probes are kept)."""
    result = result or FitResult(budget, None)
    bounds = {"good": 0, "bad": limit + 1}  # largest batch known to fit, smallest known not to

    def probe(batch: int) -> int | None:
        peak = measure(batch)
        if (batch, peak) not in result.probes:
            result.probes.append((batch, peak))
        if peak is not None and peak <= budget:
            bounds["good"] = max(bounds["good"], batch)
        else:
            bounds["bad"] = min(bounds["bad"], batch)
        return peak

    small, large = line_batches(start, limit)
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
    """Fit one spec, starting from its own per-GPU batch; `run` profiles a spec and returns its result dict.
    Estimates fit on a memory curve (`fit_on_curve`, traced in this process), other modes search."""
    if spec.mode == "estimate":
        return fit_on_curve(spec, budget, limit)
    return fit_batch(lambda batch: peak_of(run(with_batch(spec, batch))), budget, spec.batch, limit)


def fit_on_curve(spec: RunSpec, budget: int, limit: int, tracer: Callable[[RunSpec], Any] | None = None) -> FitResult:
    """The largest batch from the spec's memory curve in the batch: three traces build it, and the answer is
    checked by a trace at it and one at the next batch, each compared with the curve byte for byte (a batch
    traced already is not traced again; when both were, the curve is verified one batch past its traces).
    Where the curve cannot be built or a check disagrees, the search (`fit_batch`) goes on from the traces
    made, and the result says why. The line is the curve's own, through the batches the search would probe
    first (at least 2 and 3)."""
    from .curves import memory_curve, trace, verify

    curve = memory_curve(spec, ["batch"], tracer or trace, verified=False)
    result = FitResult(budget, None, method="curve")
    if curve.exact:
        best = curve.max_fitting("batch", budget, limit)  # traces a batch of 1 only if 2 does not fit
        checks = [b for b in dict.fromkeys((best or 1, (best or 0) + 1)) if b <= limit]
        fresh = [b for b in checks if (("batch", b),) not in curve.traced]
        for batch in checks:
            if batch >= 2:
                verify(curve, {"batch": batch})  # then `at` gives the traced figures, from the curve or the trace
            result.probes.append((batch, curve.peak(batch=batch)))
        if not fresh:
            verify(curve, {"batch": 1 + max(b for ((_, b),) in curve.traced)})
        if curve.exact and all((peak <= budget) == (batch <= (best or 0)) for batch, peak in result.probes):
            small, large = line_batches(spec.batch, limit)
            small, large = max(small, 2), max(large, max(small, 2) + 1)
            a, b = curve.peak(batch=small), curve.peak(batch=large)
            result.max_batch, result.bytes_per_sample = best, (b - a) / (large - small)
            result.fixed_bytes = round(a - result.bytes_per_sample * small)
            result.curve = curve.to_dict()
            return result
    result.method = "search"
    result.why_search = curve.fallback_reason or "a check trace disagrees with the curve's answer"
    result.curve = curve.to_dict()
    return fit_batch(lambda batch: curve.peak(batch=batch), budget, spec.batch, limit, result)


class Prober:
    """Runs a cpu or GPU fit's probes in one runner lane, each in a fresh process, so no allocator state
    carries over, even after an out-of-memory probe (estimates fit on a curve, traced in the calling
    process: `fit_spec`). No probe computes a calibration estimate: a probe needs its peak only."""

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
