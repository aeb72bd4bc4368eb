"""Memory as an exact function of shape: a few estimate traces give every event's size as a polynomial.

Under fake tensors, a model without data-dependent control flow allocates and frees the same storages in
the same order at every batch and sequence length; only their sizes change, each a polynomial in the shape
(degree 1 in the batch, 2 with an in-batch similarity matrix; at most 2 in a sequence length, from
attention; 2 in an image side, 4 with attention across its positions, which the check then finds; 1 in
frames). `memory_curve` traces a 3-point grid per axis, checks that the traces' event sequences align,
takes each event's forward differences (integers: no floating-point fit), and verifies the curve against
one more trace, byte for byte. `MemoryCurve.at` then evaluates every event's
size at a shape and replays the events (memory/events.py): the tracker's exact figures in milliseconds.
Where the traces do not align (control flow that depends on the data or the shape) or the verification
differs, the curve says why and `at` traces each asked shape instead. See docs/curves.md.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import RunSpec
from .errors import UserError
from .memory import events as allocation_events
from .memory.events import AllocationEvents, decode, encode

POINTS = 3  # traced values per axis: the forward differences of a polynomial of degree <= 2
STEP = {"image_size": 32, "image_height": 32, "image_width": 32}  # image sides: multiples of the coarsest stride
SMALLEST = 2  # no axis is traced or evaluated from the curve below 2: a size-1 dimension changes strides and ops
COMPARED = ("peak_bytes", "by_category", "by_phase", "step_peak_bytes")
TRACING = threading.Lock()  # one trace at a time in a process: the tracker's module and optimizer hooks are global


@dataclass
class Traced:
    """One estimate trace: the tracker's figures (DDP buckets left out) and its events."""

    figures: dict[str, Any]
    events: AllocationEvents
    bucket_bytes: int  # modelled DDP gradient buckets added to every figure (0 without)
    seconds: float
    spliced: bool = False  # a grid point traced in its shape-dependent phases only, the rest a full trace's

    @classmethod
    def of(cls, memory: dict[str, Any], events: AllocationEvents, seconds: float) -> Traced:
        """From a profile's `memory` (its fake-tensor tracker's figures) and the events recorded meanwhile."""
        from .memory.ddp_buckets import CATEGORY

        figures = memory["memtracker_fake"]
        buckets = figures["by_category"].get(CATEGORY, 0)
        return cls(strip_buckets(figures, buckets), events, buckets, seconds)


def trace(spec: RunSpec) -> Traced:
    """Profile `spec` in estimate mode, in this process, recording its allocation events."""
    out, events, seconds = traced_profile(spec)
    return Traced.of(out["memory"], events, seconds)


def trace_shape_phases(spec: RunSpec) -> tuple[AllocationEvents, float]:
    """The events of `spec`'s phases whose memory depends on the shape, and the seconds they took: one step that
    does not update, then the evaluation (memory/splice.py lays them onto a full trace)."""
    _, events, seconds = traced_profile(spec, shape_phases_only=True)
    return events, seconds


def traced_profile(spec: RunSpec, **options: Any) -> tuple[dict[str, Any], AllocationEvents, float]:
    """`spec` profiled in estimate mode in this process, its allocation events recorded: (profile, events, seconds).
    The allocator's replay is left out: a curve reads the events themselves."""
    from .profile import RunOptions, profile

    spec = RunSpec.from_dict({**spec.to_dict(), "mode": "estimate"})
    started = time.perf_counter()
    with TRACING, allocation_events.recording() as events:
        out = profile(spec, RunOptions(trackers=[], replay_allocator=False, **options))
    return out, events, time.perf_counter() - started


class TraceCache:
    """A tracer that traces each spec once (by digest), so that curves and searches over the same shapes share
    their traces. Its `spliced` traces a curve's shape in the shape-dependent phases only once it knows a full
    trace of the same run at another shape, the run's reference, and splices the rest from it
    (memory/splice.py)."""

    def __init__(self, tracer: Callable[[RunSpec], Traced] = trace,
                 phases: Callable[[RunSpec], tuple[AllocationEvents, float]] = trace_shape_phases) -> None:
        self.tracer, self.phases = tracer, phases
        self.done: dict[str, Traced] = {}
        self.references: dict[str, Traced] = {}  # run_key -> the first full trace of that run
        self.unspliced = ""  # why a shape had to be traced in full, if one did

    def keep(self, spec: RunSpec, traced: Traced) -> None:
        """A trace of `spec` made another way (e.g. as part of a full run): not traced again."""
        spec = RunSpec.from_dict({**spec.to_dict(), "mode": "estimate"})
        self.done[spec.digest()] = traced
        self.offer(spec, traced)

    def offer(self, spec: RunSpec, traced: Traced) -> None:
        """A full trace becomes its run's reference when the run has none yet and its events replay to its
        figures."""
        if run_key(spec) not in self.references and not traced.spliced:
            replayed = allocation_events.replay(traced.events)
            if all(replayed[k] == traced.figures[k] for k in COMPARED):
                self.references[run_key(spec)] = traced

    def __call__(self, spec: RunSpec) -> Traced:
        if spec.digest() not in self.done:
            self.done[spec.digest()] = self.tracer(spec)
            self.offer(spec, self.done[spec.digest()])
        return self.done[spec.digest()]

    def spliced(self, spec: RunSpec) -> Traced:
        """A curve's trace at `spec` (a grid point or its check): its shape-dependent phases spliced onto the
        run's reference where they align, else (or without a reference) a full trace."""
        from .memory.splice import splice

        reference = self.references.get(run_key(spec))
        if spec.digest() in self.done or reference is None:
            return self(spec)
        events, seconds = self.phases(spec)
        sizes = splice(reference.events, events)
        if isinstance(sizes, str):
            self.unspliced = sizes
            return self(spec)
        spliced = reference.events.resized(sizes)
        figures = allocation_events.replay(spliced)
        self.done[spec.digest()] = Traced(figures, spliced, reference.bucket_bytes, seconds, spliced=True)
        return self.done[spec.digest()]

    def peak(self, spec: RunSpec) -> int:
        """The run's peak as a result reports it (DDP's modelled buckets included)."""
        traced = self(spec)
        return traced.figures["peak_bytes"] + traced.bucket_bytes


def run_key(spec: RunSpec) -> str:
    """What identifies a run apart from its shape (the batch and the towers' shape keys): the traces of one run at
    several shapes share it, those of two runs never do."""
    data = {**spec.to_dict(), "mode": "estimate", "batch": None}
    data["towers"] = [{**tower, "shape": None} for tower in data["towers"]]
    return json.dumps(data, sort_keys=True, default=str)


def strip_buckets(figures: dict[str, Any], nbytes: int) -> dict[str, Any]:
    """The tracker's own figures: DDP's modelled buckets (a constant, added to every peak) taken out."""
    from .memory.ddp_buckets import CATEGORY

    def phase(v: dict[str, Any]) -> dict[str, Any]:
        cats = {k: b for k, b in v["by_category"].items() if k != CATEGORY}
        return {"peak_bytes": v["peak_bytes"] - nbytes, "by_category": cats}

    return {**phase(figures), "by_phase": {p: phase(v) for p, v in figures["by_phase"].items()},
            "step_peak_bytes": [peak - nbytes for peak in figures["step_peak_bytes"]]}


def add_buckets(figures: dict[str, Any], nbytes: int) -> dict[str, Any]:
    from .memory.ddp_buckets import add_buckets

    return add_buckets(figures, nbytes, {}) if nbytes else figures


def shape_of(spec: RunSpec, axis: str) -> int:
    """The spec's value of `axis`: "batch" or "<tower>.<key>" (the tower's shape, else its backbone's default)."""
    if axis == "batch":
        return spec.batch
    tower_name, _, key = axis.partition(".")
    towers = {t.name: t for t in spec.towers}
    if tower_name not in towers or not key:
        raise UserError(f"axis {axis!r}: write batch or <tower>.<key> with a tower of {spec.config} "
                        f"({', '.join(towers)})")
    tower = towers[tower_name]
    if key in tower.shape:
        return tower.shape[key]
    defaults = backbone_shape_defaults(tower.backbone, tower.weights)
    if key not in defaults:
        raise UserError(f"axis {axis!r}: the {tower.backbone} tower has no shape key {key!r} "
                        f"(it has: {', '.join(defaults) or 'none'})")
    return defaults[key]


def backbone_shape_defaults(backbone: str, weights: str) -> dict[str, int]:
    import torch

    from .backbones import create_backbone

    with torch.device("meta"):
        return dict(create_backbone(backbone, weights, load=False).shape_defaults)


def with_shape(spec: RunSpec, shape: dict[str, int]) -> RunSpec:
    """`spec` with some axes set: {"batch": 8, "text.seq_len": 40}."""
    data = spec.to_dict()
    for axis, value in shape.items():
        if axis == "batch":
            data["batch"] = value
            continue
        tower_name, _, key = axis.partition(".")
        for tower in data["towers"]:
            if tower["name"] == tower_name:
                tower["shape"] = {**tower["shape"], key: value}
    return RunSpec.from_dict(data)


def key(point: dict[str, int]) -> tuple:
    return tuple(sorted(point.items()))


def binomial(u: int, k: int) -> int:
    """C(u, k) for any integer u (negative too): u (u-1) ... (u-k+1) / k!, an integer."""
    numerator, factorial = 1, 1
    for i in range(k):
        numerator, factorial = numerator * (u - i), factorial * (i + 1)
    return numerator // factorial


def forward_differences(sizes: np.ndarray, axes: int) -> np.ndarray:
    """sizes (3,)*axes + (events,) at the grid points -> the forward differences at the grid's origin, same shape:
    size(u) = sum over k of D[k] * prod_a C(u_a, k_a), exactly, for polynomials of degree <= 2 per axis."""
    d = sizes.astype(object).copy()  # Python integers: no overflow
    for a in range(axes):
        d = np.moveaxis(d, a, 0)
        d0, d1, d2 = d[0], d[1], d[2]
        d = np.stack([d0, d1 - d0, d2 - 2 * d1 + d0])
        d = np.moveaxis(d, 0, a)
    return d


@dataclass
class MemoryCurve:
    """A run's memory at any shape on its axes; see the module docstring."""

    spec: dict[str, Any]
    axes: list[str]
    start: dict[str, int]  # the grid's first value per axis
    step: dict[str, int]  # the grid's spacing per axis: the curve holds at start + step * integer, >= SMALLEST
    exact: bool
    fallback_reason: str = ""
    values: dict[str, int] = field(default_factory=dict)  # the spec's own value per axis (what `at` defaults to)
    events: AllocationEvents | None = None  # the structure (sizes at the grid's origin)
    coefficients: np.ndarray | None = None  # (distinct polynomials, 3**axes) forward differences, Python integers
    polynomial: np.ndarray | None = None  # per event, its row of `coefficients`
    bucket_bytes: int = 0
    degrees: dict[str, int] = field(default_factory=dict)  # per axis, the highest degree of any event's size
    traces: list[dict[str, Any]] = field(default_factory=list)  # {"shape", "seconds", "use": grid|verify|direct}
    traced: dict[tuple, Traced] = field(default_factory=dict, repr=False)  # this session's traces, by shape
    tracer: Callable[[RunSpec], Traced] = field(default=trace, repr=False)
    peaks: allocation_events.PeakReplay | None = field(default=None, repr=False)  # built at the first `peak`

    @property
    def run_spec(self) -> RunSpec:
        return RunSpec.from_dict(self.spec)

    def point(self, shape: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(shape) - set(self.axes))
        if unknown:
            raise UserError(f"{', '.join(unknown)}: not an axis of this curve (its axes: {', '.join(self.axes)})")
        return {axis: int(shape[axis]) if axis in shape else self.values[axis] for axis in self.axes}

    def on_curve(self, point: dict[str, int]) -> bool:
        """Whether the polynomials hold at `point`: on the grid's lattice, no value below SMALLEST."""
        return self.exact and all(v >= SMALLEST and (v - self.start[a]) % self.step[a] == 0 for a, v in point.items())

    def sizes(self, point: dict[str, int]) -> np.ndarray:
        """Every event's size at `point` (on the curve)."""
        u = [(point[a] - self.start[a]) // self.step[a] for a in self.axes]
        weights = [int(np.prod([binomial(u[a], k[a]) for a in range(len(u))]))
                   for k in itertools.product(range(POINTS), repeat=len(u))]
        per_polynomial = self.coefficients.astype(object) @ np.array(weights, dtype=object)
        return np.asarray(per_polynomial[self.polynomial], dtype=np.int64)

    def at(self, **shape: int) -> dict[str, Any]:
        """peak_bytes, by_category, by_phase and step_peak_bytes at a shape (axes left out: the spec's values),
        with "source": "curve" (evaluated) or "trace" (traced directly, and "why")."""
        point = self.point(shape)
        if self.on_curve(point):
            figures = allocation_events.replay(self.events, self.sizes(point))
            return {**add_buckets(figures, self.bucket_bytes), "source": "curve"}
        traced = self.traced.get(key(point)) or self.trace_at(point, "direct")
        why = self.fallback_reason if not self.exact else (
            f"{point} is off the curve's lattice (start {self.start}, step {self.step}, values >= {SMALLEST})")
        return {**add_buckets(traced.figures, traced.bucket_bytes), "source": "trace", "why": why}

    def trace_at(self, point: dict[str, int], use: str) -> Traced:
        """A trace at `point`; a grid point's or a check's is spliced where the tracer can (TraceCache.spliced)."""
        spliced = use in ("grid", "verify") and isinstance(self.tracer, TraceCache)
        traced = (self.tracer.spliced if spliced else self.tracer)(with_shape(self.run_spec, point))
        self.traced[key(point)] = traced
        self.traces.append({"shape": dict(point), "seconds": round(traced.seconds, 3), "use": use,
                            **({"spliced": True} if traced.spliced else {})})
        return traced

    def peak(self, **shape: int) -> int:
        """`at(**shape)["peak_bytes"]`, without the other figures where the curve holds (a search asks many)."""
        point = self.point(shape)
        if not self.on_curve(point):
            return self.at(**shape)["peak_bytes"]
        if self.peaks is None:
            self.peaks = allocation_events.PeakReplay(self.events)
        return self.peaks.peak(self.sizes(point)) + self.bucket_bytes

    def max_fitting(self, axis: str, budget: int, limit: int = 1 << 16, **fixed: int) -> int | None:
        """The largest value of `axis` (<= limit, on the axis's lattice) whose peak fits `budget` bytes, the
        other axes at `fixed` (else the spec's); None when not even the smallest fits. Assumes the peak does not
        fall as the axis grows; values below the curve's (a batch of 1) are traced only when the curve's
        smallest value does not fit."""
        if axis not in self.axes:
            raise UserError(f"{axis!r} is not an axis of this curve (its axes: {', '.join(self.axes)})")
        step = self.step[axis]
        offset = self.start[axis] % step if step > 1 else 0

        def value(k: int) -> int:  # the k-th value of the axis's lattice (k >= 1)
            return offset + step * k

        def fits(k: int) -> bool:
            return self.peak(**{**fixed, axis: value(k)}) <= budget

        top = (limit - offset) // step  # the largest k whose value is <= limit
        low = max(1, -(-(SMALLEST - offset) // step))  # the smallest k on the curve (those below are traced)
        good, bad = 0, top + 1  # the largest k known to fit (0: none yet), the smallest known not to
        if low <= top and fits(low):
            good = low
            while bad > top and good < top:  # double until a value fails or the limit is reached
                k = min(2 * good, top)
                good, bad = (k, bad) if fits(k) else (good, k)
        else:
            bad = min(low, top + 1)
        while bad - good > 1:
            mid = (good + bad) // 2
            good, bad = (mid, bad) if fits(mid) else (good, mid)
        return value(good) if good else None

    def bytes_per_unit(self, **shape: int) -> dict[str, float]:
        """Peak bytes per extra unit of each axis at a shape: (peak at value + step - peak at value) / step."""
        point = self.point(shape)
        base = self.peak(**point)
        return {a: (self.peak(**{**point, a: point[a] + self.step[a]}) - base) / self.step[a] for a in self.axes}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the events' arrays and each event's polynomial index in base64, the distinct polynomials'
        coefficients as decimal strings (they may exceed 64 bits)."""
        out: dict[str, Any] = {
            "spec": self.spec, "axes": self.axes, "start": self.start, "step": self.step, "exact": self.exact,
            "fallback_reason": self.fallback_reason, "values": self.values, "bucket_bytes": self.bucket_bytes,
            "degrees": self.degrees, "traces": self.traces,
        }
        if self.exact:
            out.update(events=self.events.to_dict(), polynomial=encode(self.polynomial.astype(np.int32)),
                       coefficients=[[str(int(c)) for c in row] for row in self.coefficients])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryCurve:
        curve = cls(data["spec"], list(data["axes"]), dict(data["start"]), dict(data["step"]), data["exact"],
                    data.get("fallback_reason", ""), dict(data["values"]), bucket_bytes=data.get("bucket_bytes", 0),
                    degrees=dict(data.get("degrees", {})), traces=list(data.get("traces", [])))
        if curve.exact:
            curve.events = AllocationEvents.from_dict(data["events"])
            curve.polynomial = decode(data["polynomial"], "i").astype(np.int64)
            curve.coefficients = np.array([[int(c) for c in row] for row in data["coefficients"]], dtype=object)
        return curve


def grid_start(value: int, step: int) -> int:
    """The first grid value of a shape axis whose spec value is `value` (the batch's is 2, the cheapest): two
    steps below it when that stays at or above 2 * max(step, SMALLEST) (smaller shapes trace faster), else the
    lowest lattice value from there."""
    low = 2 * max(step, SMALLEST)
    if value - 2 * step >= low:
        return value - 2 * step
    start = value - step * ((value - low) // step) if value >= low else value
    return max(start, SMALLEST)


def first_difference(a: AllocationEvents, b: AllocationEvents) -> str:
    """Where two traces' event sequences part (empty when they align)."""
    sa, sb = a.structure(), b.structure()
    if a.phases != b.phases:
        return f"phases {a.phases} vs {b.phases}"
    if len(a) != len(b):
        n = min(len(a), len(b))
    else:
        n = len(a)
    for name in sa:
        differs = np.flatnonzero(sa[name][:n] != sb[name][:n])
        if len(differs):
            i = int(differs[0])
            kinds = allocation_events.KINDS
            return (f"event {i} differs ({name}: {kinds[sa['kind'][i]]} vs {kinds[sb['kind'][i]]}, "
                    f"phase {phase_name(a, sa['phase'][i])}, step {sa['step'][i]})")
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} events (one trace runs more ops)"
    return ""


def phase_name(events: AllocationEvents, index: int) -> str:
    return events.phases[index] if index >= 0 else "none"


def memory_curve(spec: RunSpec, axes: Sequence[str], tracer: Callable[[RunSpec], Traced] = trace,
                 verified: bool = True) -> MemoryCurve:
    """Trace `spec` at a 3-point grid per axis, solve every event's size exactly, verify at one more shape.

    Costs 3**len(axes) + 1 traces (`verified=False`: no verification trace, for a caller that checks the
    curve with traces of its own, as `fit` does). A curve whose traces do not align, or whose verification differs from its
    prediction, has exact=False and says why in fallback_reason; its `at` traces directly.
    """
    axes = list(dict.fromkeys(axes))
    if not axes:
        raise UserError("a memory curve needs at least one axis (batch or <tower>.<key>)")
    step = {a: STEP.get(a.rpartition(".")[2], 1) if a != "batch" else 1 for a in axes}
    values = {a: shape_of(spec, a) for a in axes}
    start = {a: SMALLEST if a == "batch" else grid_start(values[a], step[a]) for a in axes}
    curve = MemoryCurve(RunSpec.from_dict({**spec.to_dict(), "mode": "estimate"}).to_dict(), axes, start, step,
                        exact=False, values=values, tracer=tracer)
    grid = list(itertools.product(range(POINTS), repeat=len(axes)))
    traced = []
    for k in grid:
        traced.append(curve.trace_at({a: start[a] + step[a] * k[i] for i, a in enumerate(axes)}, "grid"))
        if why := first_difference(traced[0].events, traced[-1].events):
            curve.fallback_reason = (f"the traces at {curve.traces[0]['shape']} and {curve.traces[-1]['shape']} do "
                                     f"not align: {why}; the model's ops depend on the shape (data-dependent "
                                     "control flow, or a kernel chosen by shape), so each shape is traced")
            return curve
    if not traced[0].spliced:  # a spliced trace's figures are its events' replay already
        replayed = allocation_events.replay(traced[0].events)
        if any(replayed[k] != traced[0].figures[k] for k in COMPARED):
            curve.fallback_reason = "replaying the events does not reproduce the tracker's figures"
            return curve
    sizes = np.stack([t.events.numpy("nbytes") for t in traced]).reshape((POINTS,) * len(axes) + (-1,))
    diffs = forward_differences(sizes, len(axes)).reshape(len(grid), -1).T  # (events, 3**axes)
    rows, polynomial = unique_rows(diffs)
    curve.events, curve.coefficients, curve.polynomial = traced[0].events, rows, polynomial
    curve.bucket_bytes = traced[0].bucket_bytes
    curve.degrees = {a: max((k[i] for j, k in enumerate(grid) if any(rows[:, j])), default=0)
                     for i, a in enumerate(axes)}
    curve.exact = True
    if verified:
        verify(curve, {a: start[a] + step[a] * POINTS for a in axes})
    return curve


def unique_rows(diffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of an (events, terms) integer table and, per event, the index of its row."""
    index: dict[tuple, int] = {}
    polynomial = np.empty(len(diffs), dtype=np.int64)
    for i, row in enumerate(map(tuple, diffs.tolist())):
        polynomial[i] = index.setdefault(row, len(index))
    rows = np.array(list(index), dtype=object).reshape(len(index), diffs.shape[1])
    return rows, polynomial


def verify(curve: MemoryCurve, point: dict[str, int]) -> bool:
    """Trace `point` (once: a shape traced before is not traced again) and compare with the curve: the event
    structure, every size, and the figures byte for byte. On a difference the curve stops being exact and says
    why."""
    traced = curve.traced.get(key(point)) or curve.trace_at(point, "verify")
    why = first_difference(curve.events, traced.events)
    if not why:
        predicted = curve.sizes(point)
        wrong = np.flatnonzero(predicted != traced.events.numpy("nbytes"))
        if len(wrong):
            why = (f"{len(wrong)} event sizes differ from their polynomial (first: event {int(wrong[0])}, "
                   f"{int(predicted[wrong[0]])} vs {int(traced.events.numpy('nbytes')[wrong[0]])} bytes)")
    if not why:
        figures = allocation_events.replay(curve.events, curve.sizes(point))
        differs = [k for k in COMPARED if figures[k] != traced.figures[k]]
        if differs:
            why = f"the replayed {', '.join(differs)} differ from the trace"
    if why:
        curve.exact = False
        curve.fallback_reason = f"verification at {point} failed: {why}; each shape is traced"
    return not why
