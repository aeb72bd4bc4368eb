"""A curve's spliced traces (memory/splice.py): the shape-dependent phases traced, the rest taken from a full trace
of the same run at another shape. A spliced trace must equal the full trace at its shape, event for event and byte
for byte; whatever cannot be spliced is refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from unipt_bench.config import TowerSpec
from unipt_bench.curves import COMPARED, TraceCache, memory_curve, trace, with_shape
from unipt_bench.memory import events as allocation_events
from unipt_bench.memory.events import ALLOC, FREE, AllocationEvents
from unipt_bench.memory.splice import splice

from .conftest import make_spec


def tiny(method: str, accumulate: int = 1):
    """`method` on a tiny BERT beside untuned region features, two steps (a second step to splice)."""
    spec = make_spec(method, second=TowerSpec("b", "tiny-regions", tuned=False, pooling="mean"))
    spec.towers[0] = TowerSpec("a", "tiny-bert", shape={"seq_len": 8}, pooling="mean")
    spec.accumulate = accumulate
    return spec


@pytest.mark.parametrize(("method", "accumulate"), [("full", 1), ("lora", 1), ("unipt", 1), ("bitfit", 2)],
                         ids=["full", "lora", "unipt", "bitfit-2-micro-batches"])
def test_a_spliced_trace_equals_the_full_trace_at_its_shape(method, accumulate) -> None:
    spec = tiny(method, accumulate)
    cache = TraceCache()
    cache(with_shape(spec, {"batch": 3}))  # the run's reference: a full trace at another shape
    for shape in ({"batch": 5}, {"a.seq_len": 11}):
        spliced = cache.spliced(with_shape(spec, shape))
        full = trace(with_shape(spec, shape))
        assert spliced.spliced and not cache.unspliced
        for name, values in full.events.structure().items():
            assert np.array_equal(spliced.events.numpy(name), values), name
        assert np.array_equal(spliced.events.numpy("nbytes"), full.events.numpy("nbytes"))
        assert {k: spliced.figures[k] for k in COMPARED} == {k: full.figures[k] for k in COMPARED}


def test_a_curve_on_spliced_traces_equals_full_traces_off_its_grid() -> None:
    spec, cache = tiny("lora"), TraceCache()
    curve = memory_curve(spec, ["a.seq_len"], cache)
    assert curve.exact, curve.fallback_reason
    assert [t.get("spliced", False) for t in curve.traces] == [False, True, True, True]  # the first is the reference
    for length in (7, 12):
        full = trace(with_shape(spec, {"a.seq_len": length}))
        assert {k: curve.at(**{"a.seq_len": length})[k] for k in COMPARED} == {k: full.figures[k] for k in COMPARED}


def test_the_reference_is_the_same_runs_only() -> None:
    cache = TraceCache()
    cache(with_shape(tiny("lora"), {"batch": 3}))
    other = cache.spliced(with_shape(tiny("bitfit"), {"batch": 5}))  # another run: no reference yet, a full trace
    assert not other.spliced


class Storage:
    """What the tracker records a storage by: its bytes."""

    def __init__(self, nbytes: int) -> None:
        self.mem_consumed = nbytes


def events(activation: int, gradient: int, steps: int = 2, update: bool = True, second_activation: int | None = None,
           extra_op: bool = False) -> AllocationEvents:
    """A run's events: a parameter, then per step an activation (forward), its gradient (backward), the optimizer
    state (made at the first update) and the gradient dropped (optimizer), then an evaluation."""
    out = AllocationEvents()
    out.storage(ALLOC, Storage(100), "params")
    out.start()
    for step in range(steps):
        out.mark("forward")
        act = Storage(second_activation if step and second_activation else activation)
        out.storage(ALLOC, act, "activations")
        if extra_op:
            out.storage(ALLOC, Storage(4), "temporaries")
        out.check()
        out.mark("backward")
        grad = Storage(gradient)
        out.storage(ALLOC, grad, "grads")
        out.storage(FREE, act, "activations")
        out.check()
        out.mark("optimizer")
        if update and step == 0:
            out.storage(ALLOC, Storage(2 * gradient), "optimizer_state")
        out.storage(FREE, grad, "grads")
        out.check()
        out.end_step()
    out.mark("evaluation")
    act = Storage(activation)
    out.storage(ALLOC, act, "activations")
    out.check()
    out.storage(FREE, act, "activations")
    return out


def test_splice_takes_the_shape_dependent_sizes_and_keeps_the_optimizers() -> None:
    reference = events(activation=10, gradient=100)
    sizes = splice(reference, events(activation=30, gradient=100, steps=1, update=False))
    assert not isinstance(sizes, str), sizes
    expected = events(activation=30, gradient=100)
    assert np.array_equal(sizes, expected.numpy("nbytes"))
    assert allocation_events.replay(reference.resized(sizes)) == allocation_events.replay(expected)


@pytest.mark.parametrize(("traced", "reference", "why"), [
    (dict(activation=30, gradient=120), {}, "would release 100 bytes, holding 120"),  # a parameter that grows
    (dict(activation=30, gradient=100, extra_op=True), {}, "forward segment 1 runs other events"),
    (dict(activation=30, gradient=100), dict(second_activation=11), "steps differ in their forward segment 1"),
    (dict(activation=30, gradient=100, steps=2), {}, "repeat their forward segment"),
], ids=["parameter-depends-on-the-shape", "other-ops", "steps-differ", "two-steps-traced"])
def test_splice_refuses_what_it_cannot_take_with_the_reason(traced, reference, why) -> None:
    phases = events(**{"steps": 1, "update": False, **traced})
    got = splice(events(activation=10, gradient=100, **reference), phases)
    assert isinstance(got, str) and why in got, got
