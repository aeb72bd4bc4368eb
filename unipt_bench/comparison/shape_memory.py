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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from ..config import RunSpec
from ..errors import NotApplicable, UserError
from ..results import RunResult

Shape = dict[str, int]


class ShapeError(Exception):
    """The model cannot run at a shape (e.g. images of another size than its position embeddings take)."""


def spec_at(spec: RunSpec, shape: Shape) -> RunSpec:
    """`spec` at `shape`: its batch and the named towers' shape keys replaced."""
    data = spec.to_dict()
    data["batch"] = shape.get("batch", spec.batch)
    for tower in data["towers"]:
        for axis, value in shape.items():
            name, _, key = axis.partition(".")
            if name == tower["name"]:
                tower["shape"] = {**tower["shape"], key: value}
    return RunSpec.from_dict(data)


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
        self.local.lane = lane
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
        return result


def peak_of(result: RunResult) -> int | None:
    """The primary counter's peak of a finished run; None when it ran out of memory; ShapeError otherwise."""
    if result.status == "oom":
        return None
    if result.status != "ok":
        raise ShapeError(result.message or result.status)
    return result.primary_memory()["peak_bytes"]


class ShapeMemory(Protocol):
    source: str  # how shapes other than the asked one are answered: "curve" or "traces"

    def peak(self, shape: Shape) -> int | None: ...

    def max_batch(self, budget: int, shape: Shape, limit: int) -> int | None: ...


class TracedMemory:
    """Every shape traced (cached per shape)."""

    source = "traces"

    def __init__(self, spec: RunSpec, tracer: Tracer) -> None:
        self.spec, self.tracer = spec, tracer

    def peak(self, shape: Shape) -> int | None:
        return peak_of(self.tracer.result(spec_at(self.spec, shape)))

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


class CurveMemory:
    """A method's exact memory curve (unipt_bench.curves), evaluated instead of traced."""

    def __init__(self, curve: Any) -> None:
        self.curve = curve
        self.source = "curve" if curve.exact else f"traces ({curve.fallback_reason})"

    def peak(self, shape: Shape) -> int | None:
        try:
            return self.curve.at(**shape)["peak_bytes"]
        except (ValueError, RuntimeError) as exc:  # a shape off the curve, traced, that the model cannot take
            raise ShapeError(str(exc).splitlines()[0]) from None

    def max_batch(self, budget: int, shape: Shape, limit: int) -> int | None:
        fixed = {axis: value for axis, value in shape.items() if axis != "batch"}
        best = self.curve.max_fitting("batch", budget, limit=limit, **fixed)
        return None if best is None else min(best, limit)


def shape_memory(spec: RunSpec, axes: list[str], tracer: Tracer,
                 curve_maker: Callable[[RunSpec, list[str]], Any] | None = None) -> ShapeMemory:
    """The method's memory over `axes` (besides the batch): its exact curve in estimate mode, else (cuda, or a
    model that cannot take the curve's grid of shapes, e.g. a ViT whose position embeddings fix its image
    size) traced shape by shape."""
    if spec.mode == "estimate":
        from ..curves import memory_curve

        try:
            return CurveMemory((curve_maker or memory_curve)(spec, ["batch", *axes]))
        except (ValueError, RuntimeError, UserError, NotApplicable):  # the traced runs say why
            pass
    return TracedMemory(spec, tracer)
