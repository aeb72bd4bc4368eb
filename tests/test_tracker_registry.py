"""Trackers register where they are defined; profiling and training build the same set from the registry;
optional trackers run by their default (a new one: off) unless a selection names them."""

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
    """Register the counting tracker for cpu runs, the way a tracker module does (with no default: off), and
    remove it afterwards."""
    from unipt_bench.memory.registry import register_tracker

    load_trackers()
    register_tracker("counting", {"cpu"}, "phases and steps seen")(lambda context: CountingTracker())
    yield
    TRACKERS._entries.pop("counting")


MODES = ("estimate", "cpu", "cuda")


def test_every_mode_has_exactly_one_primary_tracker() -> None:
    load_trackers()
    for mode in MODES:
        primary = [n for n in TRACKERS.names() if TRACKERS.get(n).primary and mode in TRACKERS.get(n).modes]
        assert len(primary) == 1, mode


def test_every_registered_tracker_follows_its_default_and_a_selection() -> None:
    """Registry-wide: with no selection a mode gets its primary tracker and the optional ones on by default;
    a selection gets the primary one and exactly the optional ones it names."""
    load_trackers()
    for mode in MODES:
        serving = [TRACKERS.get(n) for n in TRACKERS.names() if mode in TRACKERS.get(n).modes]
        (primary,) = [e.name for e in serving if e.primary]
        optional = [e for e in serving if not e.primary]
        assert selected(mode) == [primary] + [e.name for e in optional if e.default]
        assert selected(mode, []) == [primary]
        for entry in optional:
            assert selected(mode, [entry.name]) == [primary, entry.name]


def test_a_registered_tracker_is_off_unless_asked_and_only_in_its_modes(spec_factory, counting) -> None:
    # cpu_allocations: the allocator-level counter every cpu profile runs (RunOptions.count_allocations)
    assert set(profile(spec_factory("unipt", mode="cpu"))["memory"]) == {"memtracker_real", "rss", "cpu_allocations"}
    assert "counting" not in profile(spec_factory("unipt"), RunOptions(trackers=["counting"]))["memory"]  # estimate


def test_optional_trackers_can_be_switched_off_the_primary_one_cannot(spec_factory, counting) -> None:
    memory = profile(spec_factory("unipt", mode="cpu"), RunOptions(trackers=["counting"]))["memory"]
    assert set(memory) == {"memtracker_real", "counting", "cpu_allocations"}  # rss off, the primary tracker on
    assert memory["counting"]["steps"] == 2  # the tracker measured the run
    assert memory["counting"]["phases"][:3] == ["forward", "backward", "optimizer"]
    memory = profile(spec_factory("unipt", mode="cpu"), RunOptions(trackers=[]))["memory"]
    assert set(memory) == {"memtracker_real", "cpu_allocations"}


def test_rss_and_nvml_stay_on_by_default() -> None:
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
    load_trackers()
    with pytest.raises(UserError, match=f"^unknown tracker\\(s\\) bogus; known: {', '.join(TRACKERS.names())}$"):
        check_selection(["rss", "bogus"])
