"""Run a comparison: every method of the request's suite traced at the asked shape and analysed, in lanes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunSpec
from ..results import RunResult
from .accuracy import trained_scores
from .analysis import MethodRow, analyse, comparison_axes
from .curve_builds import CurveBuilds
from .front import front_members
from .request import Request
from .shape_memory import Shape, ShapeMemory, Tracer, shape_memory
from .suite import suite_specs, suite_text


@dataclass
class Comparison:
    request: Request
    suite: str  # the suite's TOML text
    rows: list[MethodRow] = field(default_factory=list)  # in the suite's method order
    seconds: float = 0.0
    traces: int = 0

    def table(self) -> list[dict[str, Any]]:
        return [row.values for row in self.rows]


def run_comparison(request: Request, jobs: int | None = None, store: str | Path | None = None, limit: int = 4096,
                   isolate: bool = True,
                   on_start: Callable[[RunSpec], None] = lambda spec: None,
                   on_done: Callable[[RunSpec, MethodRow], None] = lambda spec, row: None) -> Comparison:
    """Trace and analyse every method; full fine-tuning is the reference every crossing is measured against.
    isolate=False traces in this process (estimates only leave nothing behind; tests use it to save the
    child process's start). `jobs` (methods at once): by default every core in estimate mode (at most one per
    method), one in cuda mode (the lanes share one GPU) and in this process."""
    from ..runner import Lane, serve_lanes

    started = time.perf_counter()
    text = suite_text(request)
    specs = suite_specs(text, request.mode)
    jobs = jobs or default_jobs(request.mode, len(specs), isolate)
    tracer = Tracer()
    asked: Shape = {"batch": request.batch, **request.axes()}
    lines = [(["batch"], None), *((list(axis.names), axis.limit) for axis in comparison_axes(request))]
    estimates = {s.label: RunSpec.from_dict({**s.to_dict(), "mode": "estimate"}) for s in specs}
    curves = CurveBuilds(estimates, lines, tracer.options, jobs, isolate) if request.mode == "estimate" else None
    memories: dict[str, ShapeMemory] = {}
    building = threading.Lock()

    def memory_of(label: str) -> ShapeMemory:
        with building:  # full's memory is asked for by every lane: built once
            if label not in memories:
                built = curves.get(label) if curves else None
                if built is not None and built.asked is not None:  # the lane's run at the asked shape, made there
                    tracer.keep(estimates[label], RunResult(**built.asked))
                memories[label] = shape_memory(estimates[label], asked, tracer, built)
            return memories[label]

    full_label = next((s.label for s in specs if s.method == "full"), None)
    rows: dict[str, MethodRow] = {}

    def work(lane: Lane, spec: RunSpec) -> MethodRow:
        with tracer.using(lane):
            full = memory_of(full_label) if full_label else None
            return analyse(spec, request, tracer, memory_of(spec.label), full, limit)

    def finish(spec: RunSpec, row: MethodRow) -> None:
        rows[spec.label] = row
        on_done(spec, row)

    lanes = [Lane(isolate) for _ in range(max(1, jobs))]
    try:
        serve_lanes(specs, lanes, work, finish, on_start, interrupted=lambda spec: None,
                    crashed=lambda spec, exc: error_row(spec, exc))
    finally:
        if curves is not None:
            curves.close()
    refuse_unrunnable_shape(request, rows.get(full_label))
    comparison = Comparison(request, text, [rows[s.label] for s in specs if s.label in rows])
    on_front = front_members(comparison.table())
    scores = trained_scores(store, specs) if store is not None else {}
    full_row = rows[full_label].values if full_label in rows else None
    for row in comparison.rows:
        label = row.values["method"]
        row.values["on_front"] = label in on_front
        if full_row is not None and label != full_label and same_as_full(row.values, full_row):
            note = "trains this model as full fine-tuning does (same parameters and memory)"
            row.values["note"] = "; ".join(filter(None, [note, row.values.get("note")]))
        row.values.update(scores.get(label, {"accuracy": None, "accuracy_metric": None, "accuracy_run": None}))
    comparison.seconds = round(time.perf_counter() - started, 1)
    comparison.traces = tracer.traces + sum(memory.curve_traces for memory in memories.values())
    return comparison


def default_jobs(mode: str, methods: int, isolate: bool) -> int:
    """Methods analysed at once when not given: estimates fill the cores (as `run`'s do); cuda runs and
    in-process traces (one tracker at a time) go one by one."""
    from ..launch import cores

    return max(1, min(cores(), methods)) if mode == "estimate" and isolate else 1


def refuse_unrunnable_shape(request: Request, full: MethodRow | None) -> None:
    """A shape full fine-tuning cannot run (e.g. images of another size than a ViT's position embeddings take) is
    bad input, not a comparison: one line (the model's own reason), nothing written."""
    if full is None or full.values.get("status") != "error":
        return
    from ..errors import UserError
    from .request import SHAPE_FLAGS

    shape = ", ".join([f"--batch {request.batch}", *(f"{SHAPE_FLAGS[k]} {v}" for k, v in request.shape.items())])
    raise UserError(f"{request.model} cannot train at {shape}: {full.values.get('reason')}")


def same_as_full(values: dict[str, Any], full: dict[str, Any]) -> bool:
    """A method that, on this model, is full fine-tuning under another name (e.g. Side4Video on a text tower,
    which its official code trains fully)."""
    keys = ("trainable_params", "peak_bytes")
    return values.get("status") == full.get("status") == "ok" and all(values.get(k) == full.get(k) for k in keys)


def error_row(spec: RunSpec, exc: Exception) -> MethodRow:
    """A method whose analysis failed: one line saying why, no figures."""
    return MethodRow({"method": spec.label, "status": "error", "applies": True, "mode": spec.mode,
                      "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
