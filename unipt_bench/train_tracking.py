"""Which training steps the memory trackers see, so that a run's figures are its peak over the whole run.

- cuda: the allocator's counters cost nothing, so every step is tracked (one segment).
- cpu: the tensor tracker slows a step 8-10x, so it sees the first steps of this process and then only the
  steps whose batch is larger than every batch tracked before (a fresh tracker for each such step). With
  batches padded to their longest caption the shapes vary; a step's memory grows with its batch, so the
  largest batch seen is the peak, at the cost of a few tracked steps (record-breaking batches are rare).
- every mode: every validation and the test are tracked (`evaluation`), in the open segment or in one of
  their own: an evaluation's batches differ from training's and may hold more than any step.

Each tracked stretch is a segment (memory/segments.py merges them, and the ones of earlier processes when a
run resumes). The peak's step, phase and batch shape are found from the per-step series.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .memory.base import TRAINING_PHASES, Trackers, phase_peak
from .memory.segments import merge_segments, with_segment
from .profile import NullTracker

FIRST_TRACKED = 2  # steps traced at the start of a cpu process (the first allocates the optimizer state)
UNSHAPED = ("cache_keys", "attention_mask")  # a tower's tensors that say nothing new about its shape


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
            self.current, self.current_start = self.make(), step
            self.current.__enter__()
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
            self.current, self.current_start = self.make(), step
            self.current.__enter__()
        self.current.mark("evaluation")
        try:
            yield
        finally:
            if own:
                self.close(step)

    def close(self, step: int) -> None:
        """End the open segment (if any) at `step` and fold its figures into the memory so far."""
        if self.current is None:
            return
        self.current.__exit__(None, None, None)
        self.memory = merge_segments(self.memory, with_segment(self.current.results(), self.current_start, step))
        self.current = None

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
