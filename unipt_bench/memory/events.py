"""The allocation events of a traced run, in order: what the tensor tracker saw, compactly (typed arrays).

While `recording()` is on (in this thread), the tensor tracker (estimate.py) appends one event per byte
change it applies: a storage allocated, freed, resized or relabelled (its bytes move to another category),
plus the points where it compares live bytes with its peaks (after every op, at every phase mark), the end
of each training step and the moment it starts. `replay` recomputes the tracker's figures (peak, peak by
category, per phase, per step) from the events and one size per event, exactly as the tracker does; the
allocator's replay reads the same arrays (storage serial, kind and bytes in order).

Recording is off by default and costs one attribute test per byte change when off.
"""

from __future__ import annotations

import base64
import threading
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from .base import CATEGORIES, TRAINING_PHASES

ALLOC, FREE, RESIZE, RELABEL, CHECK, MARK, END_STEP, START = range(8)
KINDS = ("alloc", "free", "resize", "relabel", "check", "mark", "end_step", "start")
NONE = -1  # no storage, category or phase
# event fields: name -> array typecode (int8, int64, ...)
FIELDS = {"kind": "b", "serial": "q", "nbytes": "q", "category": "b", "old_category": "b", "phase": "b",
          "step": "i"}

_active = threading.local()


class AllocationEvents:
    """One trace's events as parallel typed arrays, one entry per event.

    kind: ALLOC, FREE, RESIZE, RELABEL (storage events), CHECK (live bytes compared with every peak, after an
    op), MARK (a phase starts: compared with the phase and step peaks only), END_STEP, START (the tracker starts:
    its peak is the live bytes then). serial: the storage's number, 0, 1, ... in order of first event (NONE for
    the others). nbytes: the storage's bytes after the event (freed: the bytes it held). category: index into
    CATEGORIES (a relabel's new one); old_category: a relabel's previous one. phase: index into `phases`
    (NONE outside every phase). step: training steps ended before the event.
    `grads_in_buckets`: gradients count 0 bytes (DDP's bucket views, counted apart).
    """

    def __init__(self, grads_in_buckets: bool = False) -> None:
        self.grads_in_buckets = grads_in_buckets
        self.phases: list[str] = []
        self.arrays = {name: array(code) for name, code in FIELDS.items()}
        self.serials: dict[Any, int] = {}  # live storage (the tracker's info object) -> serial
        self.next_serial = 0
        self.phase = NONE
        self.step = 0
        self.dirty = True  # bytes changed since the last CHECK (a CHECK with no change in between does nothing)

    def __len__(self) -> int:
        return len(self.arrays["kind"])

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (a trace sent to another process): without the live storages' serials, which only recording
        needs."""
        return {**self.__dict__, "serials": {}}

    def _add(self, kind: int, serial: int = NONE, nbytes: int = 0, category: int = NONE,
             old_category: int = NONE) -> None:
        a = self.arrays
        a["kind"].append(kind)
        a["serial"].append(serial)
        a["nbytes"].append(nbytes)
        a["category"].append(category)
        a["old_category"].append(old_category)
        a["phase"].append(self.phase)
        a["step"].append(self.step)

    def storage(self, kind: int, info: Any, category: str, old_category: str | None = None) -> None:
        """A storage event; `info` identifies the storage while it lives (the tracker's _WeakRefInfo)."""
        serial = self.serials.get(info)
        if serial is None:
            serial = self.serials[info] = self.next_serial
            self.next_serial += 1
        if kind == FREE:
            del self.serials[info]
        self._add(kind, serial, info.mem_consumed, CATEGORIES.index(category),
                  CATEGORIES.index(old_category) if old_category else NONE)
        self.dirty = True

    def check(self) -> None:
        if self.dirty:
            self._add(CHECK)
            self.dirty = False

    def mark(self, phase: str | None) -> None:
        if phase is not None and phase not in self.phases:
            self.phases.append(phase)
        self.phase = self.phases.index(phase) if phase is not None else NONE
        self._add(MARK)

    def end_step(self) -> None:
        self._add(END_STEP)
        self.step += 1
        self.phase = NONE

    def start(self) -> None:
        self._add(START)
        self.dirty = True

    def resized(self, nbytes: np.ndarray) -> AllocationEvents:
        """The same events with other sizes, one per event (a curve's spliced grid point: memory/splice.py)."""
        out = AllocationEvents(self.grads_in_buckets)
        out.phases = list(self.phases)
        out.arrays = {**self.arrays, "nbytes": array("q", np.asarray(nbytes, dtype=np.int64).tobytes())}
        return out

    def numpy(self, name: str) -> np.ndarray:
        return np.frombuffer(self.arrays[name], dtype=np.dtype(self.arrays[name].typecode))

    def structure(self) -> dict[str, np.ndarray]:
        """Every field but the bytes: two traces align when their structures are equal."""
        return {name: self.numpy(name) for name in FIELDS if name != "nbytes"}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: each array as base64 of its little-endian bytes."""
        return {"grads_in_buckets": self.grads_in_buckets, "phases": list(self.phases), "length": len(self),
                "arrays": {name: encode(self.numpy(name)) for name in FIELDS}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AllocationEvents:
        events = cls(data["grads_in_buckets"])
        events.phases = list(data["phases"])
        for name, code in FIELDS.items():
            events.arrays[name] = array(code, decode(data["arrays"][name], code).tobytes())
        return events


def encode(values: np.ndarray) -> str:
    return base64.b64encode(values.astype(values.dtype.newbyteorder("<")).tobytes()).decode()


def decode(text: str, typecode: str) -> np.ndarray:
    dtype = np.dtype(typecode).newbyteorder("<")
    return np.frombuffer(base64.b64decode(text), dtype=dtype).astype(np.dtype(typecode))


@contextmanager
def recording(grads_in_buckets: bool = False) -> Iterator[AllocationEvents]:
    """Record the events of every tensor tracker created in this thread inside the block."""
    events = AllocationEvents(grads_in_buckets)
    previous = getattr(_active, "events", None)
    _active.events = events
    try:
        yield events
    finally:
        _active.events = previous


def active() -> AllocationEvents | None:
    """The recorder of this thread, or None when nothing records (the default)."""
    return getattr(_active, "events", None)


def replay(events: AllocationEvents, nbytes: np.ndarray | None = None) -> dict[str, Any]:
    """The tracker's figures (peak_bytes, by_category, by_phase, step_peak_bytes) from the events, with
    `nbytes` (one size per event; default: the recorded ones) in place of the recorded sizes.

    As the tracker: the peak starts at the live bytes at START and moves at a CHECK where live bytes exceed
    it (the first such moment keeps its split by category); a phase's peak likewise over the CHECKs and
    MARKs inside it; a step's peak is the largest live total seen in its training phases (0 if none).
    """
    kind, cat, old = events.numpy("kind"), events.numpy("category"), events.numpy("old_category")
    serial, phase, step = events.numpy("serial"), events.numpy("phase"), events.numpy("step")
    size = (events.numpy("nbytes") if nbytes is None else nbytes).astype(np.int64)
    n = len(kind)
    delta = np.zeros((len(CATEGORIES), n), dtype=np.int64)
    index = np.arange(n)
    storage = kind <= RELABEL
    alloc, free, resize, relabel = (kind == ALLOC), (kind == FREE), (kind == RESIZE), (kind == RELABEL)
    previous = previous_of_serial(serial, storage)
    delta[cat[alloc], index[alloc]] = size[alloc]
    delta[cat[free], index[free]] = -size[free]
    delta[cat[resize], index[resize]] = size[resize] - size[previous[resize]]
    delta[cat[relabel], index[relabel]] += size[relabel]
    delta[old[relabel], index[relabel]] -= size[relabel]
    if events.grads_in_buckets:
        delta[CATEGORIES.index("grads")] = 0
    live = np.cumsum(delta, axis=1)  # (categories, events)
    total = live.sum(axis=0)

    def snapshot(at: int) -> dict[str, Any]:
        return {"peak_bytes": int(total[at]), "by_category": {c: int(v) for c, v in zip(CATEGORIES, live[:, at], strict=True)}}

    starts = np.flatnonzero(kind == START)
    first = starts[0] if len(starts) else 0
    candidates = index[(index == first) | ((kind == CHECK) & (index > first))]
    out = snapshot(int(candidates[np.argmax(total[candidates])]))
    noted = (kind == CHECK) | (kind == MARK)
    by_phase = {}
    for p in sorted(set(phase[noted & (phase >= 0)].tolist()), key=lambda p: np.argmax(noted & (phase == p))):
        points = index[noted & (phase == p)]
        by_phase[events.phases[p]] = snapshot(int(points[np.argmax(total[points])]))
    training = noted & np.isin(phase, [events.phases.index(p) for p in TRAINING_PHASES if p in events.phases])
    steps = int((kind == END_STEP).sum())
    step_peaks = [0] * steps
    for s in range(steps):
        in_step = total[training & (step == s)]
        step_peaks[s] = max(0, int(in_step.max())) if len(in_step) else 0
    return {**out, "by_phase": by_phase, "step_peak_bytes": step_peaks}


class PeakReplay:
    """`replay(events, nbytes)["peak_bytes"]` alone, for many `nbytes`: what depends on the events only (which
    event adds or removes bytes, the previous event of each storage, where the peak may be taken) is computed
    once, so that each peak is one weighted sum and one cumulative sum over the events."""

    def __init__(self, events: AllocationEvents) -> None:
        kind, cat, old = events.numpy("kind"), events.numpy("category"), events.numpy("old_category")
        counted = np.ones(len(CATEGORIES) + 1, dtype=np.int64)  # per category (and NONE, last): do its bytes count
        if events.grads_in_buckets:
            counted[CATEGORIES.index("grads")] = 0
        into = np.where(kind <= RELABEL, counted[cat], 0)  # 1 where the event's bytes count in its category
        out_of = np.where(kind == RELABEL, counted[old], 0)  # a relabel's bytes leave its previous category
        self.own = np.select([kind == ALLOC, kind == FREE, kind == RESIZE, kind == RELABEL],
                             [into, -into, into, into - out_of], 0)  # change = own * size + previous_weight * size[previous]
        self.previous_weight = np.where(kind == RESIZE, -into, 0)
        self.previous = previous_of_serial(events.numpy("serial"), kind <= RELABEL)
        starts = np.flatnonzero(kind == START)
        first = starts[0] if len(starts) else 0
        index = np.arange(len(kind))
        self.candidates = index[(index == first) | ((kind == CHECK) & (index > first))]

    def peak(self, nbytes: np.ndarray) -> int:
        size = nbytes.astype(np.int64, copy=False)
        total = np.cumsum(self.own * size + self.previous_weight * size[self.previous])
        return int(total[self.candidates].max())


def previous_of_serial(serial: np.ndarray, storage: np.ndarray) -> np.ndarray:
    """For each storage event, the index of the previous event of the same storage (itself for the first)."""
    n = len(serial)
    previous = np.arange(n)
    order = np.flatnonzero(storage)
    by_serial = order[np.argsort(serial[order], kind="stable")]
    same = serial[by_serial[1:]] == serial[by_serial[:-1]]
    previous[by_serial[1:][same]] = by_serial[:-1][same]
    return previous
