"""One method's row of a comparison: its figures at the asked shape (a run, exactly as `run` profiles it),
the largest batch under the budget, bytes per extra unit of each axis, and where its peak reaches full
fine-tuning's as the sequence (image, clip) grows."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..config import RunSpec
from ..memory.base import REPORTED_CATEGORIES
from ..results import predicted_gpu_memory
from .request import Request
from .shape_memory import Shape, ShapeError, ShapeMemory, TracedMemory, Tracer, peak_of

# a shape key -> the unit its bytes are counted per, the step it is varied by, and how far it is searched
UNITS = {"seq_len": "token", "image_size": "pixel_row", "frames": "frame"}
STEPS = {"seq_len": 1, "image_size": 32, "frames": 1}  # image sides in steps of a CNN's stride 32
SEARCH_FACTOR = 4  # without a model limit, an axis is searched up to this many times its asked value


@dataclass
class Axis:
    """A length flag of the comparison (seq_len, image_size, frames) and the tower axes it sets together."""

    key: str
    names: list[str]  # "<tower>.<key>" of every tower it sets
    value: int
    limit: int  # the largest value searched for the crossing with full fine-tuning
    own: bool  # an axis of the user's model (searched for the crossing), not only of a partner tower

    @property
    def step(self) -> int:
        return STEPS[self.key]

    def at(self, shape: Shape, value: int) -> Shape:
        return {**shape, **dict.fromkeys(self.names, value)}


def comparison_axes(request: Request) -> list[Axis]:
    axes: dict[str, Axis] = {}
    own_names = {f"{t.name}.{k}" for t in request.towers for k in t.shape_defaults}
    for name, value in request.axes().items():
        key = name.partition(".")[2]
        limit = min([t.position_limit for t in request.towers if key == "seq_len" and t.position_limit]
                    or [SEARCH_FACTOR * value])
        axis = axes.setdefault(key, Axis(key, [], value, max(limit, value), False))
        axis.names.append(name)
        axis.own = axis.own or name in own_names
    return list(axes.values())


def column_of(axis: Axis) -> str:
    return f"bytes_per_{UNITS[axis.key]}"


@dataclass
class MethodRow:
    """A method's figures (`values`, one table row) and the points its curves are drawn through."""

    values: dict[str, Any]
    batch_points: list[tuple[int, int]] = field(default_factory=list)
    length_points: dict[str, list[tuple[int, int]]] = field(default_factory=dict)


def at_shape(result_status: str, result: Any, spec: RunSpec, budget: int) -> dict[str, Any]:
    """The figures of the run at the asked shape: what `run` stores for it."""
    values: dict[str, Any] = {"method": spec.label, "status": result_status,
                              "applies": result_status not in ("not_applicable",), "reason": result.message}
    params = result.params or {}
    for key in ("trainable_params", "trainable_method_params", "trainable_head_params", "total_params"):
        values[key] = params.get(key)
    primary = result.primary_memory() or {}
    values["peak_bytes"] = primary.get("peak_bytes")
    for category in REPORTED_CATEGORIES:
        values[f"{category}_bytes"] = primary.get("by_category", {}).get(category)
    values.update(predicted_gpu_memory(primary))  # unverified on a GPU: docs/allocator.md
    values["fits"] = None if values["peak_bytes"] is None else values["peak_bytes"] <= budget
    if result_status == "oom":
        values["fits"] = False
    values["mode"] = spec.mode
    values["memory_options"] = ", ".join(f"{k}={v}" for k, v in sorted(spec.memory.items()))  # "" for none
    return values


def crossing(method: ShapeMemory, full: ShapeMemory, axis: Axis, shape: Shape) -> tuple[int | None, str]:
    """The smallest value of `axis` (from the asked one, in its steps, up to its limit) at which the method's
    peak is at least full fine-tuning's, by bisection; None when it stays below up to the limit."""
    def reached(value: int) -> bool:
        mine, theirs = method.peak(axis.at(shape, value)), full.peak(axis.at(shape, value))
        return mine is None or (theirs is not None and mine >= theirs)

    if reached(axis.value):
        return axis.value, "at the asked value already"
    top = axis.value + (axis.limit - axis.value) // axis.step * axis.step
    if top == axis.value or not reached(top):
        return None, f"stays below full fine-tuning's up to {axis.key} {top}"
    low, high = axis.value, top  # below at low, reached at high
    while high - low > axis.step:
        middle = low + (high - low) // (2 * axis.step) * axis.step
        low, high = (low, middle) if reached(middle) else (middle, high)
    return high, ""


def analyse(spec: RunSpec, request: Request, tracer: Tracer, memory: ShapeMemory, full: ShapeMemory | None,
            limit: int) -> MethodRow:
    """Every figure of one method; traces what it must through `tracer` (the caller's lane)."""
    started, traces_before = time.perf_counter(), tracer.lane_traces
    shape: Shape = {"batch": request.batch, **request.axes()}
    result = tracer.result(spec)
    row = MethodRow(at_shape(result.status, result, spec, request.budget_bytes))
    values = row.values
    axes = comparison_axes(request)
    values.update({"max_batch": None, "bytes_per_sample": None})
    for axis in axes:
        values[column_of(axis)] = None
        if axis.own:
            values[f"reaches_full_at_{axis.key}"] = None
    values["curve_mode"] = f"estimate ({memory.source})"
    notes = []
    if result.status == "ok":
        batched = TracedMemory(spec, tracer) if spec.mode != "estimate" else memory  # measured modes probe there
        best, peak = None, memory.peak(shape)
        try:
            best = values["max_batch"] = batched.max_batch(request.budget_bytes, shape, limit)
            if best == limit:
                notes.append(f"max batch capped at --limit {limit}")
            bigger = memory.peak({**shape, "batch": shape["batch"] + 1})
            if peak is not None and bigger is not None:
                values["bytes_per_sample"] = bigger - peak
        except ShapeError as exc:  # e.g. batch norm over a single value at batch 1
            notes.append(f"batch cannot vary: {exc}")
        row.batch_points = batch_points(memory, shape, best)
        for axis in axes:
            try:
                if axis.value + axis.step <= axis.limit:  # one step longer; at the model's limit, one shorter
                    longer, shorter = memory.peak(axis.at(shape, axis.value + axis.step)), peak
                else:
                    longer, shorter = peak, memory.peak(axis.at(shape, axis.value - axis.step))
                if longer is not None and shorter is not None:
                    values[column_of(axis)] = (longer - shorter) / axis.step
                if axis.own and full is not None and full is not memory:
                    value, note = crossing(memory, full, axis, shape)
                    values[f"reaches_full_at_{axis.key}"] = value
                    if note and value is not None:
                        notes.append(f"{axis.key}: {note}")
                row.length_points[axis.key] = length_points(memory, axis, shape)
            except ShapeError as exc:
                notes.append(f"{axis.key} cannot vary: {exc}")
    values["note"] = "; ".join(notes) or None
    values["traces"] = tracer.lane_traces - traces_before + memory.curve_traces
    values["seconds"] = round(time.perf_counter() - started + memory.curve_seconds, 1)  # the traces made ahead too
    return row


def batch_points(memory: ShapeMemory, shape: Shape, best: int | None) -> list[tuple[int, int]]:
    """Peaks to draw against the batch: a grid where an exact curve answers (from 2: a batch of 1 is off every
    curve and would cost a trace), else every batch already traced."""
    if not memory.evaluates(["batch"]):
        return traced_points(memory.traced, shape, ["batch"])
    top = max(shape["batch"], best or 0) * 5 // 4 + 1
    grid = sorted({shape["batch"], *range(0, top + 1, max(1, top // 24))} - {0, 1})
    return [(b, memory.peak({**shape, "batch": b})) for b in grid]


def length_points(memory: ShapeMemory, axis: Axis, shape: Shape) -> list[tuple[int, int]]:
    """Peaks to draw against one length axis: a grid from the asked value to the limit where an exact curve
    answers, else the traced values."""
    if not memory.evaluates(axis.names):
        return traced_points(memory.traced, shape, axis.names)
    grid = range(axis.value, axis.limit + 1, max(axis.step, (axis.limit - axis.value) // 24 or 1))
    return [(v, memory.peak(axis.at(shape, v))) for v in grid]


def traced_points(memory: TracedMemory, shape: Shape, varied: list[str]) -> list[tuple[int, int]]:
    """(value, peak) of every traced run of this method that differs from `shape` only on the `varied` axes."""
    points = set()
    with memory.tracer.lock:
        results = list(memory.tracer.cache.values())
    for result in results:
        spec = result.run_spec
        if spec.label != memory.spec.label or spec.mode != memory.spec.mode or result.status != "ok":
            continue
        found: Shape = {"batch": spec.batch}
        for tower in spec.towers:
            found.update({f"{tower.name}.{key}": value for key, value in tower.shape.items()})
        if all(found.get(axis) == value for axis, value in shape.items() if axis not in varied):
            points.add((found[varied[0]], peak_of(result)))
    return sorted(points)
