"""Trackers register where they are defined; profiling and training build the same set from the registry,
and optional trackers can be switched off."""

from __future__ import annotations

from typing import Any

import pytest

from unipt_bench.errors import UserError
from unipt_bench.memory.registry import (
    TRACKERS,
    TrackerContext,
    build_trackers,
    check_selection,
    load_trackers,
    selected,
)
from unipt_bench.profile import RunOptions, profile


class CountingTracker:
    """A tracker defined outside the package: counts phases and steps."""

    counter = "counting"

    def __init__(self) -> None:
        self.phases: list[str] = []
        self.steps = 0

    def __enter__(self) -> CountingTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def mark(self, phase: str) -> None:
        self.phases.append(phase)

    def end_step(self) -> None:
        self.steps += 1

    def result(self) -> dict[str, Any]:
        return {"counter": self.counter, "phases": self.phases, "steps": self.steps}


@pytest.fixture
def counting():
    """Register the counting tracker for cpu runs, the way a tracker module does, and remove it afterwards."""
    from unipt_bench.memory.registry import register_tracker

    load_trackers()
    register_tracker("counting", {"cpu"}, "phases and steps seen")(lambda context: CountingTracker())
    yield
    TRACKERS._entries.pop("counting")


def test_every_mode_has_exactly_one_primary_tracker() -> None:
    load_trackers()
    for mode in ("estimate", "cpu", "cuda"):
        primary = [n for n in TRACKERS.names() if TRACKERS.get(n).primary and mode in TRACKERS.get(n).modes]
        assert len(primary) == 1, mode


def test_a_registered_tracker_measures_profiles_of_its_modes(spec_factory, counting) -> None:
    out = profile(spec_factory("unipt", mode="cpu"))
    assert out["memory"]["counting"]["steps"] == 2
    assert out["memory"]["counting"]["phases"][:3] == ["forward", "backward", "optimizer"]
    assert "counting" not in profile(spec_factory("unipt"))["memory"]  # estimate: not one of its modes


def test_optional_trackers_can_be_switched_off_the_primary_one_cannot(spec_factory, counting) -> None:
    memory = profile(spec_factory("unipt", mode="cpu"), RunOptions(trackers=["counting"]))["memory"]
    assert set(memory) == {"memtracker_real", "counting"}  # rss off, the primary tracker on
    memory = profile(spec_factory("unipt", mode="cpu"), RunOptions(trackers=[]))["memory"]
    assert set(memory) == {"memtracker_real"}


def test_each_mode_gets_its_primary_tracker_first_then_the_optional_ones() -> None:
    """Profiling and training both build `selected(mode)`: on a GPU that includes NVML for training too."""
    assert selected("cuda") == ["cuda_allocator", "nvml"]
    assert selected("cpu") == ["memtracker", "rss"] and selected("estimate") == ["memtracker"]
    assert selected("cuda", []) == ["cuda_allocator"]


def test_the_built_set_follows_the_selection() -> None:
    import torch

    model = torch.nn.Linear(2, 2)
    context = TrackerContext("cpu", model=model, optimizer=torch.optim.AdamW(model.parameters()))
    assert [t.counter for t in build_trackers(context, []).trackers] == ["memtracker_real"]
    assert [t.counter for t in build_trackers(context).trackers] == ["memtracker_real", "rss"]


def test_unknown_tracker_names_are_one_line() -> None:
    with pytest.raises(UserError, match="unknown tracker.*bogus.*known: cuda_allocator, memtracker, nvml, rss"):
        check_selection(["rss", "bogus"])
