"""One run's memory figures from the segments it ran in: a training run killed and resumed runs in two
processes, and its figures must cover both, never just the part after the resume.

Each segment's figures (counter -> dict, as trackers report them) carry `segments`: the steps they
cover. Merging keeps, for the peak and its breakdowns, the segment whose peak is higher (a breakdown
describes one moment, so parts of two moments are never mixed); per phase the higher phase peak; and
the per-step series one after the other.
"""

from __future__ import annotations

import statistics
from typing import Any

from .base import phase_peak
from .cuda import p99

SUMMED = ("num_alloc_retries", "num_ooms")  # counts of events: both segments' events happened
MAXED = ("max_memory_reserved",)  # peaks reported beside peak_bytes
CONCATENATED = ("step_peak_bytes", "trace")  # per-step series


def with_segment(figures: dict[str, dict[str, Any]], from_step: int, to_step: int) -> dict[str, dict[str, Any]]:
    """Label every counter's figures with the steps they cover."""
    return {counter: {**values, "segments": [{"from_step": from_step, "to_step": to_step}]}
            for counter, values in figures.items()}


def merge_counter(earlier: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """One counter's figures over two segments (see the module docstring)."""
    base = dict(later if (later.get("peak_bytes") or 0) > (earlier.get("peak_bytes") or 0) else earlier)
    if "by_phase" in earlier or "by_phase" in later:
        phases = dict(earlier.get("by_phase", {}))
        for phase, values in later.get("by_phase", {}).items():
            if phase not in phases or (phase_peak(values) or 0) > (phase_peak(phases[phase]) or 0):
                phases[phase] = values
        base["by_phase"] = phases
    for key in CONCATENATED:
        if key in earlier or key in later:
            base[key] = [*earlier.get(key, []), *later.get(key, [])]
    for key in SUMMED:
        if key in earlier or key in later:
            base[key] = earlier.get(key, 0) + later.get(key, 0)
    for key in MAXED:
        if key in earlier or key in later:
            base[key] = max(earlier.get(key) or 0, later.get(key) or 0)
    if "step_stats" in base:
        steps = base.get("step_peak_bytes", [])
        base["step_stats"] = {"max": max(steps, default=0), "mean": statistics.fmean(steps) if steps else 0,
                              "p99": p99(steps) if steps else 0}
    base["segments"] = [*earlier.get("segments", []), *later.get("segments", [])]
    return base


def merge_segments(earlier: dict[str, dict[str, Any]] | None,
                   later: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every counter's figures over both segments; a counter only one segment has is kept as it is."""
    if not earlier:
        return later
    merged = dict(earlier)
    for counter, values in later.items():
        merged[counter] = merge_counter(earlier[counter], values) if counter in earlier else values
    return merged

