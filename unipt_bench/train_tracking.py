"""Which training steps the memory trackers see, so that a run's figures are its peak over the whole run.

- cuda: the allocator's counters cost nothing, so every step is tracked (one segment).
- cpu: the tensor tracker slows a step 8-10x, so it sees the first steps of this process and then only the
  steps whose batch is larger than every batch tracked before (a fresh tracker for each such step). With
  batches padded to their longest caption the shapes vary; a step's memory grows with its batch, so the
  largest batch seen is the peak, at the cost of a few tracked steps (record-breaking batches are rare).
- every mode: every validation and the test are tracked (`evaluation`), in the open segment or in one of
  their own: an evaluation's batches differ from training's and may hold more than any step.
- cpu: each segment's allocations are recorded and replayed on one CUDA caching allocator whose state
  carries over from segment to segment (memory/device_memory.py): the reserved memory a GPU would show per
  tracked step, under the primary counter's `allocator_replay` (untracked steps are not replayed).

Each tracked stretch is a segment (memory/segments.py merges them, and the ones of earlier processes when a
run resumes). The peak's step, phase and batch shape are found from the per-step series.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .memory import events as allocation_events
from .memory.base import TRAINING_PHASES, Trackers, phase_peak
from .memory.device_memory import GpuMemoryReplay
from .memory.segments import merge_segments, with_segment
from .profile import NullTracker

FIRST_TRACKED = 2  # steps traced at the start of a cpu process (the first allocates the optimizer state)
UNSHAPED = ("cache_keys", "attention_mask")  # a tower's tensors that say nothing new about its shape
STEP_SERIES = ("step_reserved", "step_allocated", "evaluation_reserved")  # the replay's figures by step


def batch_shapes(batch: dict[str, dict[str, torch.Tensor]]) -> dict[str, list[int]]:
    """Each tower's main input shape, e.g. {"text": [8, 17]} (its first tensor that is not a mask or key)."""
    shapes = {}
    for tower, tensors in batch.items():
        if tower == "targets":
            continue
        main = next((t for k, t in tensors.items() if k not in UNSHAPED), None)
        if main is not None:
            shapes[tower] = list(main.shape)
    return shapes


def batch_elements(batch: dict[str, dict[str, torch.Tensor]]) -> int:
    """Elements in all of a batch's input tensors: what orders batches by size."""
    return sum(t.numel() for tower, tensors in batch.items() if tower != "targets" for t in tensors.values())


def shape_key(shape: list[int]) -> str:
    return "x".join(map(str, shape))


class StepTracking:
    """Opens and closes trackers around the steps to track, and keeps what they measured across segments.

    `saved` is what `state()` returned in an earlier process of the same run (its checkpoint), or None.
    """

    def __init__(self, mode: str, make_trackers: Callable[[], Trackers], saved: dict[str, Any] | None) -> None:
        saved = saved or {}
        self.mode, self.make = mode, make_trackers
        self.memory: dict[str, Any] | None = saved.get("memory")  # closed segments, merged
        self.tracked_steps: list[int] = list(saved.get("tracked_steps", []))
        self.shapes_at: dict[str, dict[str, list[int]]] = dict(saved.get("shapes_at", {}))  # str(step) -> shapes
        self.histogram: dict[str, Counter] = {t: Counter(c) for t, c in saved.get("batch_shapes", {}).items()}
        self.biggest: int = saved.get("biggest", 0)
        self.first_until: int | None = None  # set at this process's first step
        self.current: Trackers | None = None
        self.current_start = 0
        self.replay = GpuMemoryReplay() if mode != "cuda" else None  # a GPU measures what a replay predicts
        self.recording: Any = None  # the open segment's event recording
        earlier = next((f.get("allocator_replay") for n, f in (self.memory or {}).items() if n.startswith("memtracker")),
                       None)
        self.earlier_steps: dict[str, dict[str, int]] = {  # an earlier process's per-step figures
            name: dict((earlier or {}).get(name, {})) for name in STEP_SERIES}

    @property
    def open(self) -> bool:
        return self.current is not None

    def tracker(self) -> Any:
        return self.current if self.current is not None else NullTracker()

    def wants(self, step: int, size: int) -> bool:
        if self.first_until is None:
            self.first_until = step + FIRST_TRACKED
        return self.mode == "cuda" or step < self.first_until or size > self.biggest

    def before_step(self, step: int, batch: dict[str, dict[str, torch.Tensor]]) -> bool:
        """Open or close trackers for this step; count its shapes. True when the step is tracked."""
        shapes = batch_shapes(batch)
        for tower, shape in shapes.items():
            self.histogram.setdefault(tower, Counter())[shape_key(shape)] += 1
        size = batch_elements(batch)
        tracked = self.wants(step, size)
        if tracked and self.current is None:
            self.start(step)
        elif not tracked and self.current is not None:
            self.close(step)
        if tracked:
            self.biggest = max(self.biggest, size)
            self.tracked_steps.append(step)
            self.shapes_at[str(step)] = shapes
        return tracked

    @contextmanager
    def evaluation(self, step: int) -> Iterator[None]:
        """Track an evaluation (a validation or the test) run after `step` steps as the "evaluation" phase."""
        own = self.current is None
        if own:
            self.start(step)
        self.current.mark("evaluation")
        try:
            yield
        finally:
            if own:
                self.close(step)

    def start(self, step: int) -> None:
        """Open a segment at `step`: its trackers, and the recording of its allocations (cpu)."""
        if self.replay is not None:
            self.recording = allocation_events.recording()
            self.events = self.recording.__enter__()  # before the trackers: they attach to it when made
        self.current, self.current_start = self.make(), step
        self.current.__enter__()

    def close(self, step: int) -> None:
        """End the open segment (if any) at `step` and fold its figures into the memory so far."""
        if self.current is None:
            return
        self.current.__exit__(None, None, None)
        if self.recording is not None:
            self.recording.__exit__(None, None, None)
            self.recording = None
            self.replay.feed(self.events, first_step=self.current_start, stretch=True)
        self.memory = self.with_replay(merge_segments(self.memory, with_segment(self.current.results(),
                                                                               self.current_start, step)))
        self.current = None

    def with_replay(self, memory: dict[str, Any]) -> dict[str, Any]:
        """The replayed allocator's figures so far under the primary counter (segment merges keep one
        segment's figures: the replay covers them all)."""
        primary = next((name for name in memory if name.startswith("memtracker")), None)
        if self.replay is None or primary is None:
            return memory
        replayed = self.replay.result()
        for name in STEP_SERIES:
            replayed[name] = {**self.earlier_steps[name], **replayed[name]}
        return {**memory, primary: {**memory[primary], "allocator_replay": replayed}}

    def memory_so_far(self, step: int) -> dict[str, Any]:
        if self.current is None:
            return self.memory or {}
        return merge_segments(self.memory, with_segment(self.current.results(), self.current_start, step))

    def state(self, step: int) -> dict[str, Any]:
        """What a checkpoint keeps so that a resumed run's figures still cover every segment."""
        return {"memory": self.memory_so_far(step), "tracked_steps": self.tracked_steps, "shapes_at": self.shapes_at,
                "batch_shapes": self.shape_counts(), "biggest": self.biggest}

    def shape_counts(self) -> dict[str, dict[str, int]]:
        return {tower: dict(counts.most_common()) for tower, counts in self.histogram.items()}


def peak_at(figures: dict[str, Any], tracked_steps: list[int], shapes_at: dict[str, Any]) -> dict[str, Any] | None:
    """Where one counter's peak happened: its phase, and for a training phase the step and its batch shapes."""
    phases = figures.get("by_phase") or {}
    if not phases:
        return None
    phase = max(phases, key=lambda p: phase_peak(phases[p]) or 0)
    where: dict[str, Any] = {"phase": phase}
    series = figures.get("step_peak_bytes") or []
    if phase in TRAINING_PHASES and series and len(series) == len(tracked_steps):
        step = tracked_steps[max(range(len(series)), key=series.__getitem__)]
        where |= {"step": step + 1, "shapes": shapes_at.get(str(step), {})}  # steps count from 1, as logged
    return where
