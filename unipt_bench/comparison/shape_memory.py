"""One method's training peak as a function of shape: the batch and the towers' shape keys.

A shape is {"batch": B, "<tower>.<key>": value, ...} (e.g. "text.seq_len"), the axes of
`unipt_bench.curves`. In estimate mode a method's memory is its exact curve (a few traces, then any
shape in milliseconds); otherwise every shape asked is traced, through the same runner lanes and
`execute` as `run` (so each figure equals `run`'s at that shape). Both answer the
same three questions: the peak at a shape, the largest batch under a budget, and how many traces
that took.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import RunSpec
from ..errors import NotApplicable, UserError
from ..results import RunResult

Shape = dict[str, int]


class ShapeError(Exception):
    """The model cannot run at a shape (e.g. images of another size than its position embeddings take)."""


class Tracer:
    """Profiles specs in runner lanes (each thread uses the lane it was given), each distinct spec once."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = {"calibrate": False, **(options or {})}
        self.cache: dict[str, RunResult] = {}
        self.lock = threading.Lock()
        self.local = threading.local()
        self.traces = 0

    @contextmanager
    def using(self, lane: Any) -> Iterator[None]:
        self.local.lane, self.local.traces = lane, 0
        try:
            yield
        finally:
            self.local.lane = None

    def result(self, spec: RunSpec) -> RunResult:
        key = spec.digest()
        with self.lock:
            if key in self.cache:
                return self.cache[key]
        result = self.local.lane.run(spec, self.options, lambda info: None)
        with self.lock:
            self.traces += 1
            self.cache[key] = result
        self.local.traces += 1  # this thread's (lane's) own count
        return result

    def keep(self, spec: RunSpec, result: RunResult) -> None:
        """A run of `spec` made elsewhere (as a lane would make it): answered from here, not traced again."""
        with self.lock:
            self.cache.setdefault(spec.digest(), result)

    @property
    def lane_traces(self) -> int:
        """Traces made by the calling thread since it took its lane."""
        return getattr(self.local, "traces", 0)


def peak_of(result: RunResult) -> int | None:
    """The primary counter's peak of a finished run; None when it ran out of memory; ShapeError otherwise."""
    if result.status == "oom":
        return None
    if result.status != "ok":
        raise ShapeError(result.message or result.status)
    return result.primary_memory()["peak_bytes"]


class ShapeMemory(Protocol):
    source: str  # how shapes other than the asked one are answered: "curve" or "traces"
    curve_traces: int  # traces made ahead, to build its curves (its run at the asked shape among them; 0 without)
    curve_seconds: float  # the seconds they took (in a child process, beside the other methods')
    traced: Any  # the TracedMemory that traces, in the lane, what no curve answers

    def peak(self, shape: Shape) -> int | None: ...

    def evaluates(self, axes: list[str]) -> bool: ...

    def max_batch(self, budget: int, shape: Shape, limit: int) -> int | None: ...


class TracedMemory:
    """Every shape traced (cached per shape)."""

    source = "traces"

    def __init__(self, spec: RunSpec, tracer: Tracer, curve_traces: int = 0, curve_seconds: float = 0.0) -> None:
        self.spec, self.tracer = spec, tracer
        self.curve_traces, self.curve_seconds = curve_traces, curve_seconds  # curves tried ahead, if any

    @property
    def traced(self) -> TracedMemory:
        return self

    def evaluates(self, axes: list[str]) -> bool:
        return False

    def peak(self, shape: Shape) -> int | None:
        from ..curves import with_shape

        return peak_of(self.tracer.result(with_shape(self.spec, shape)))

    def max_batch(self, budget: int, shape: Shape, limit: int) -> int | None:
        """The largest batch traced to fit, with the next one traced not to (secant_search)."""
        return secant_search(lambda batch: self.peak({**shape, "batch": batch}), budget, shape["batch"], limit)


def secant_search(measure: Callable[[int], int | None], budget: int, start: int, limit: int) -> int | None:
    """Largest b <= limit with measure(b) <= budget (None: not even 1), with b + 1 measured above it (or b the
    limit); measure gives peak bytes, or None for out of memory.

    Peak memory is nearly linear in the batch, so the line through the probes nearest the answer predicts
    it in a few probes; whenever a prediction fails to halve the bracket, the next probe bisects it."""
    peaks: dict[int, int | None] = {}
    bracket = [0, limit + 1]  # largest batch known to fit, smallest known not to

    def probe(batch: int) -> None:
        peaks[batch] = peak = measure(batch)
        if peak is not None and peak <= budget:
            bracket[0] = max(bracket[0], batch)
        else:
            bracket[1] = min(bracket[1], batch)

    probe(max(1, min(start, limit)))
    width, bisect = bracket[1] - bracket[0], False
    while bracket[1] - bracket[0] > 1:
        good, bad = bracket
        known = sorted(b for b, p in peaks.items() if p is not None)
        pair = [b for b in (good, bad) if peaks.get(b) is not None] if good and peaks.get(bad) else known[-2:]
        guess, predicted = None, False
        if len(pair) == 2 and peaks[pair[1]] != peaks[pair[0]]:
            (b1, b2), (p1, p2) = pair, (peaks[pair[0]], peaks[pair[1]])
            guess, predicted = b1 + (budget - p1) * (b2 - b1) // (p2 - p1), True
        elif len(known) == 1:
            guess = known[0] + 1 if good else known[0] - 1  # a second point for the line
        if predicted and guess >= bad > limit:
            guess = limit  # the line fits past the limit: the limit itself is the probe that settles it
        if bisect or guess is None or not good < guess < bad:
            guess, predicted = ((good + bad) // 2 if bad <= limit else min(limit, 2 * good)), False
        probe(guess)
        if predicted and bracket[0] == guess and guess + 1 < bracket[1]:
            probe(guess + 1)  # a prediction that fits: the next batch usually closes the bracket
        bisect = bracket[1] <= limit and bracket[1] - bracket[0] > width // 2
        width = bracket[1] - bracket[0]
    return bracket[0] or None


class LineMemory:
    """A method's exact memory curves along the lines through the asked shape: one over the batch (the asked
    lengths) and one per length axis (the asked batch), evaluated instead of traced. A shape off these lines,
    or on a line whose curve is not exact, is traced (`traced`)."""

    def __init__(self, asked: Shape, curves: list[Any], traced: TracedMemory) -> None:
        self.asked, self.curves, self.traced = asked, curves, traced
        self.curve_traces, self.curve_seconds = traced.curve_traces, traced.curve_seconds
        inexact = [c for c in curves if not c.exact]
        self.source = f"traces ({inexact[0].fallback_reason})" if inexact else "curve"

    def curve_for(self, shape: Shape) -> Any | None:
        """The exact curve whose line holds `shape` (None: off every line, or on an inexact one)."""
        differs = {axis for axis, value in shape.items() if self.asked.get(axis) != value}
        return next((c for c in self.curves if differs <= set(c.axes)), None)

    def evaluates(self, axes: list[str]) -> bool:
        """Whether shapes varied along `axes` are answered by an exact curve (on its lattice), not traced."""
        return any(c.exact and set(axes) <= set(c.axes) for c in self.curves)

    def peak(self, shape: Shape) -> int | None:
        """From the curve where it holds; a shape off every exact curve or off its lattice (a batch of 1) is traced
        in the lane, as TracedMemory traces it."""
        curve = self.curve_for(shape)
        point = {axis: shape[axis] for axis in curve.axes} if curve is not None else {}
        if curve is None or not curve.on_curve(curve.point(point)):
            return self.traced.peak(shape)
        return curve.peak(**point)

    def max_batch(self, budget: int, shape: Shape, limit: int) -> int | None:
        curve = self.curve_for({**shape, "batch": self.asked["batch"]})
        if curve is None or not curve.exact or curve.axes != ["batch"]:
            return self.traced.max_batch(budget, shape, limit)
        best = curve.max_fitting("batch", budget, limit=limit)
        return None if best is None else min(best, limit)


@dataclass
class LineCurves:
    """What is built ahead for one method (`line_curves`): its curves along the lines, or why none, and its run at
    the asked shape, which the curves share as a trace, so that the lane analysing the method traces nothing."""

    curves: list[dict[str, Any]]  # MemoryCurve.to_dict() per line ([]: none could be built)
    traces: int  # distinct shapes traced, the asked run included
    seconds: float = 0.0  # what building them took
    why: str = ""  # why a line has no curve (the asked run failed, or the model cannot vary along it)
    asked: dict[str, Any] | None = None  # the RunResult (a dict) at the asked shape, exactly as a lane runs it


@dataclass
class AskedRun:
    """A method's run at the asked shape, made as a lane makes it (`ask`), and its trace for the curves."""

    result: dict[str, Any]  # the RunResult, as a dict
    traced: Any  # curves.Traced when the run is ok: the curves' trace there, which their others splice onto
    seconds: float


@dataclass
class LinePart:
    """One line's curve (`line_curve`), built apart from the method's other lines."""

    curve: dict[str, Any] | None  # MemoryCurve.to_dict(), None when the model cannot run along the line
    why: str  # why not
    traces: int  # shapes it traced (the asked run's shape not among them)
    seconds: float


def line_curves(spec_data: dict[str, Any], lines: list[tuple[list[str], int | None]],
                asked_options: dict[str, Any] | None = None) -> LineCurves:
    """`spec`'s curves along each line (axes varied together from the spec's shape, and the largest value they may
    take, None for no limit), in this process. With `asked_options`, the spec's own shape is run first as `run`
    runs it (those RunOptions, `ask`) and that run is the curves' trace there; then each line (`line_curve`). A
    line the model cannot run along gets no curve (`why` says why) and its shapes are traced when asked."""
    asked = None if asked_options is None else ask(spec_data, asked_options)
    if asked is not None and asked.result["status"] != "ok":
        return combined(asked, [])
    reference = asked.traced if asked is not None else None
    return combined(asked, [line_curve(spec_data, axes, limit, reference) for axes, limit in lines])


def combined(asked: AskedRun | None, parts: list[LinePart]) -> LineCurves:
    """A method's LineCurves from its asked run and its lines' parts (made in one process or several)."""
    if asked is not None and asked.result["status"] != "ok":
        why = asked.result["message"] or asked.result["status"]
        return LineCurves([], 1, round(asked.seconds, 3), why, asked.result)
    seconds = (asked.seconds if asked is not None else 0.0) + sum(part.seconds for part in parts)
    return LineCurves([part.curve for part in parts if part.curve is not None],
                      (asked is not None) + sum(part.traces for part in parts), round(seconds, 3),
                      "; ".join(part.why for part in parts if part.why), asked.result if asked is not None else None)


def line_curve(spec_data: dict[str, Any], axes: list[str], limit: int | None, reference: Any = None) -> LinePart:
    """`spec`'s curve along one line, verified one step past its grid, or one step below it where that passes
    `limit` (a model's last position embedding); the batch curve at the spec's own batch, the asked run's shape.
    `reference`: the asked run's trace (curves.Traced), the curve's trace at its shape and what its other traces
    splice onto (curves.TraceCache)."""
    from ..curves import TraceCache, memory_curve, verify

    started = time.perf_counter()
    spec = RunSpec.from_dict(spec_data)
    cache = TraceCache()
    if reference is not None:
        cache.keep(spec, reference)
    curve, why = None, ""
    try:
        built = memory_curve(spec, axes, cache, verified=False)
        if built.exact:
            verify(built, verification_point(built, limit, spec.batch))
        curve = built.to_dict()
    except (ValueError, RuntimeError, UserError, NotApplicable) as exc:  # the traced runs say why
        why = f"{'+'.join(axes)}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return LinePart(curve, why, len(cache.done) - (reference is not None), round(time.perf_counter() - started, 3))


def ask(spec_data: dict[str, Any], options: dict[str, Any]) -> AskedRun:
    """The spec's run as a lane makes it (`runner.execute` with `options`), its allocation events recorded; when
    it is ok, also the curves' trace at its shape."""
    from ..curves import TRACING, Traced
    from ..memory import events as allocation_events
    from ..runner import execute

    started = time.perf_counter()
    with TRACING, allocation_events.recording() as events:
        result = execute(spec_data, options)
    seconds = time.perf_counter() - started
    traced = Traced.of(result["memory"], events, seconds) if result["status"] == "ok" else None
    return AskedRun(result, traced, seconds)


def verification_point(curve: Any, limit: int | None, batch: int) -> Shape:
    """A shape off the curve's grid to trace and compare: the asked batch for the batch curve (one past the grid
    when the asked batch is on it); else one step past the grid, or one step below it when that would pass
    `limit`."""
    from ..curves import POINTS

    past = {a: curve.start[a] + curve.step[a] * POINTS for a in curve.axes}
    if curve.axes == ["batch"]:  # the asked batch, unless it is a grid point (2, 3, 4): no check there
        return {"batch": batch} if batch >= past["batch"] else past
    if limit is None or all(v <= limit for v in past.values()):
        return past
    return {a: curve.start[a] - curve.step[a] for a in curve.axes}


def shape_memory(spec: RunSpec, asked: Shape, tracer: Tracer, curves: LineCurves | None) -> ShapeMemory:
    """The method's memory over the asked shape's lines: its exact curves in estimate mode (`line_curves`, built
    by the caller), else (cuda, or a model that cannot take the curves' grid of shapes, e.g. a ViT whose
    position embeddings fix its image size) traced shape by shape."""
    from ..curves import MemoryCurve

    traced = TracedMemory(spec, tracer, *((curves.traces, curves.seconds) if curves is not None else ()))
    if spec.mode != "estimate" or curves is None or not curves.curves:
        return traced
    return LineMemory(asked, [MemoryCurve.from_dict(c) for c in curves.curves], traced)
