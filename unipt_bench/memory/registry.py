"""The tracker registry: each tracker registers where it is defined, with the modes it serves.

`build_trackers` makes the one tracker set that profiling and training both use. The tracker that gives
a mode's peak (`primary`) is always on. Every other tracker registers with a default: on (RSS and NVML:
cheap, and part of every result so far) or off (the default for a new tracker, so that adding one never
slows every run down). A suite's `trackers` list or `--trackers` names exactly the optional trackers a
run gets, on by default or not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..registry import Registry
from .base import Tracker, Trackers


@dataclass
class TrackerContext:
    """What a tracker may need to measure one run."""

    mode: str  # estimate, cpu or cuda
    model: Any  # nn.Module
    optimizer: Any  # torch.optim.Optimizer
    inputs: list = field(default_factory=list)  # the batch's tensors (counted as inputs)
    owner_of: Callable[[str], str] | None = None  # module path -> backbone / method / head / other
    nvml_interval: float = 0.01
    grads_in_buckets: bool = False  # DDP's gradient_as_bucket_view, modelled: gradients live in its buckets


@dataclass(frozen=True)
class TrackerEntry:
    name: str
    modes: frozenset[str]
    factory: Callable[[TrackerContext], Tracker]
    primary: bool  # gives the mode's peak_bytes: cannot be switched off
    description: str
    default: bool  # an optional tracker that runs when no selection names the trackers


TRACKERS: Registry[TrackerEntry] = Registry("tracker")


def register_tracker(name: str, modes: set[str], description: str, primary: bool = False, default: bool = False
                     ) -> Callable[[Callable[[TrackerContext], Tracker]], Callable[[TrackerContext], Tracker]]:
    """Decorator: register `factory(context) -> Tracker` for the given modes; `default`: an optional tracker
    that runs unless a selection leaves it out (off: only when a selection names it)."""

    def add(factory: Callable[[TrackerContext], Tracker]) -> Callable[[TrackerContext], Tracker]:
        TRACKERS.register(name)(TrackerEntry(name, frozenset(modes), factory, primary, description, default))
        return factory

    return add


def load_trackers() -> None:
    """Import every module of the memory package: tracker modules register themselves."""
    from .. import memory
    from ..registry_imports import import_all

    import_all(memory.__name__, memory.__path__)


def check_selection(wanted: list[str] | None) -> None:
    """A selection names registered trackers only (one-line error otherwise)."""
    load_trackers()
    unknown = sorted(set(wanted or []) - set(TRACKERS.names()))
    if unknown:
        raise UserError(f"unknown tracker(s) {', '.join(unknown)}; known: {', '.join(TRACKERS.names())}")


def selected(mode: str, wanted: list[str] | None = None) -> list[str]:
    """The trackers a run of `mode` gets: its primary one first, then the others serving the mode (those on
    by default, or those in `wanted`), by name."""
    check_selection(wanted)
    serving = [TRACKERS.get(n) for n in TRACKERS.names() if mode in TRACKERS.get(n).modes]
    optional = [e.name for e in serving if not e.primary and (e.default if wanted is None else e.name in wanted)]
    return [e.name for e in serving if e.primary] + optional


def build_trackers(context: TrackerContext, wanted: list[str] | None = None) -> Trackers:
    """The tracker set of a run (`selected`), profiling and training alike."""
    return Trackers([TRACKERS.get(name).factory(context) for name in selected(context.mode, wanted)])


def describe() -> list[dict[str, Any]]:
    load_trackers()
    return [{"name": n, "modes": sorted(TRACKERS.get(n).modes), "primary": TRACKERS.get(n).primary,
             "default": TRACKERS.get(n).primary or TRACKERS.get(n).default, "description": TRACKERS.get(n).description}
            for n in TRACKERS.names()]
