"""Tracker interface: context managers the training loop marks with phases; results are bytes, per counter."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Protocol

TRAINING_PHASES = ("forward", "backward", "optimizer")  # the phases of a training step
PHASES = (*TRAINING_PHASES, "evaluation")  # evaluation: forward passes without gradients, between or after steps
CATEGORIES = ("params", "buffers", "grads", "activations", "temporaries", "optimizer_state", "inputs")
# what only some runs allocate, reported beside the categories when present (data-parallel runs' gradient buckets)
EXTRA_CATEGORIES = ("ddp_buckets",)
REPORTED_CATEGORIES = (*CATEGORIES, *EXTRA_CATEGORIES)
# who memory is charged to: the backbone, the PETL method's own modules, the task head, or anything else
# (the loss, clipping and the optimizer)
OWNERS = ("backbone", "method", "head", "other")


def phase_peak(figures: dict[str, Any] | None) -> int | None:
    """One phase's peak bytes, whichever counter measured it: `peak_bytes` (the tensor trackers) or the CUDA
    allocator's `max_memory_allocated`; None when the phase has neither (or was not measured)."""
    figures = figures or {}
    return figures.get("peak_bytes") or figures.get("max_memory_allocated")


class Tracker(Protocol):
    """Measures memory while a few training steps run.

    `mark(phase)` starts a phase (one of PHASES), `end_step()` closes a training step, and `result()`
    returns a JSON-ready dict of byte counts that names its counter. Per-step figures cover the
    training phases only: an evaluation between two steps never counts towards the next step's peak.
    """

    counter: str

    def __enter__(self) -> Tracker: ...

    def __exit__(self, *exc: object) -> None: ...

    def mark(self, phase: str) -> None: ...

    def end_step(self) -> None: ...

    def result(self) -> dict[str, Any]: ...


class Trackers:
    """Several trackers entered together (ExitStack) and marked together; the loop sees one object."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers
        self._stack = ExitStack()

    def __enter__(self) -> Trackers:
        for tracker in self.trackers:
            self._stack.enter_context(tracker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(*exc)

    def mark(self, phase: str) -> None:
        for tracker in self.trackers:
            tracker.mark(phase)

    def end_step(self) -> None:
        for tracker in self.trackers:
            tracker.end_step()

    def results(self) -> dict[str, dict[str, Any]]:
        return {tracker.counter: tracker.result() for tracker in self.trackers}
