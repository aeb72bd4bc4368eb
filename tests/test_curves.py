"""Memory curves: recorded allocation events replay to the tracker's figures, a curve built from a few traces
equals direct traces at shapes it was not built from, a model whose ops depend on the shape is detected and
traced directly, and `fit` on a curve gives the search's answer with at most five traces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unipt_bench import curves
from unipt_bench.backbones.base import BACKBONES, BackboneInfo
from unipt_bench.backbones.features import RegionFeatures
from unipt_bench.config import RunSpec, TowerSpec
from unipt_bench.curves import COMPARED, MemoryCurve, TraceCache, memory_curve, with_shape
from unipt_bench.fit import fit_batch, fit_on_curve
from unipt_bench.memory import events as allocation_events
from unipt_bench.memory.estimate import PhasedMemTracker

from .conftest import make_spec


def tiny(second: str = "tiny-regions") -> RunSpec:
    """BitFit on a tiny BERT beside untuned region features, one step, mean-pooled: a cheap trace."""
    spec = make_spec("bitfit", second=TowerSpec("b", second, tuned=False, pooling="mean"))
    spec.towers[0] = TowerSpec("a", "tiny-bert", shape={"seq_len": 8}, pooling="mean")
    spec.steps = 1
    return spec


TRACES = TraceCache()  # shared by the tests: each shape of each spec traced once


class ChunkedRegions(RegionFeatures):
    """Region features projected two samples at a time: the number of ops grows with the batch."""

    def forward(self, inputs, all_hidden=False):
        feats = torch.cat([chunk * 2.0 for chunk in inputs["features"].split(2)])  # [B, R, D]
        return super().forward({"features": feats}, all_hidden)


@pytest.fixture
def chunked_backbone(monkeypatch):
    info = BackboneInfo("test-chunked-regions", lambda weights="random": ChunkedRegions(16, 4), "test", True, "random")
    monkeypatch.setitem(BACKBONES._entries, info.name, info)
    return info.name


def test_recording_is_off_by_default_and_replay_reproduces_the_tracker() -> None:
    assert PhasedMemTracker().events is None
    traced = TRACES(tiny())
    assert len(traced.events) > 100
    replayed = allocation_events.replay(traced.events)
    assert {k: replayed[k] for k in COMPARED} == {k: traced.figures[k] for k in COMPARED}
    again = allocation_events.AllocationEvents.from_dict(json.loads(json.dumps(traced.events.to_dict())))
    assert allocation_events.replay(again) == replayed
    kinds = traced.events.numpy("kind")
    assert (kinds == allocation_events.ALLOC).sum() >= (kinds == allocation_events.FREE).sum() > 0


def test_curve_equals_direct_traces_at_shapes_not_used_to_build_it() -> None:
    tracer, spec = TRACES, tiny()
    curve = memory_curve(spec, ["batch"], tracer)
    assert curve.exact, curve.fallback_reason
    assert [t["shape"]["batch"] for t in curve.traces] == [2, 3, 4, 5]  # the grid, then the verification
    assert curve.degrees == {"batch": 2}  # the in-batch similarity matrix of retrieval: B x B
    for batch in (6, 9):
        direct = tracer(with_shape(spec, {"batch": batch}))
        got = curve.at(batch=batch)
        assert got["source"] == "curve"
        assert {k: got[k] for k in COMPARED} == {k: direct.figures[k] for k in COMPARED}
    restored = MemoryCurve.from_dict(json.loads(json.dumps(curve.to_dict())))
    assert restored.at(batch=9) == curve.at(batch=9)
    assert curve.max_fitting("batch", curve.peak(batch=9)) == 9
    assert curve.max_fitting("batch", curve.peak(batch=9) - 1) == 8
    assert curve.bytes_per_unit(batch=6) == {"batch": curve.peak(batch=7) - curve.peak(batch=6)}


@pytest.mark.parametrize("buckets", [False, True], ids=["plain", "grads-in-buckets"])
def test_peak_alone_equals_the_full_replays_peak(buckets) -> None:
    """`MemoryCurve.peak` (PeakReplay: the peak without the other figures) equals `at`'s, at every batch asked,
    with gradients counted and with gradients in DDP's buckets (0 bytes, relabels into and out of them)."""
    curve = memory_curve(tiny(), ["batch"], TRACES)
    curve.events = allocation_events.AllocationEvents.from_dict(curve.events.to_dict())  # the shared trace's, copied
    curve.events.grads_in_buckets = buckets
    kinds, cats = curve.events.numpy("kind"), curve.events.numpy("category")
    grads = allocation_events.CATEGORIES.index("grads")
    assert ((kinds == allocation_events.RELABEL) & (cats == grads)).any()  # temporaries become gradients
    for batch in (2, 3, 5, 17, 64):
        assert curve.peak(batch=batch) == curve.at(batch=batch)["peak_bytes"]


def test_a_model_whose_ops_depend_on_the_shape_falls_back_to_direct_traces(chunked_backbone) -> None:
    tracer = TRACES
    spec = tiny(chunked_backbone)
    curve = memory_curve(spec, ["batch"], tracer)
    assert not curve.exact
    assert "do not align" in curve.fallback_reason and "{'batch': 3}" in curve.fallback_reason
    got = curve.at(batch=5)
    assert got["source"] == "trace" and got["why"] == curve.fallback_reason
    assert got["peak_bytes"] == tracer.peak(with_shape(spec, {"batch": 5}))
    restored = MemoryCurve.from_dict(json.loads(json.dumps(curve.to_dict())))
    assert not restored.exact and restored.fallback_reason == curve.fallback_reason


@pytest.mark.parametrize("chunked", [False, True], ids=["curve", "search"])
def test_fit_on_a_curve_gives_the_searchs_answer_with_at_most_five_traces(chunked, request) -> None:
    spec, tracer = tiny(request.getfixturevalue("chunked_backbone") if chunked else "tiny-regions"), TRACES
    budget = (tracer.peak(with_shape(spec, {"batch": 6})) + tracer.peak(with_shape(spec, {"batch": 7}))) // 2
    fitted = fit_on_curve(spec, budget, limit=64, tracer=tracer)
    searched = fit_batch(lambda batch: tracer.peak(with_shape(spec, {"batch": batch})), budget, spec.batch, 64)
    assert fitted.max_batch == searched.max_batch == 6
    traces = len(fitted.curve["traces"])
    if chunked:  # the curve cannot answer: the search goes on from its traces
        assert fitted.method == "search" and "do not align" in fitted.why_search
    else:
        assert fitted.method == "curve" and traces <= 5
        assert (fitted.fixed_bytes, fitted.bytes_per_sample) == (searched.fixed_bytes, searched.bytes_per_sample)
        assert [b for b, _ in fitted.probes] == [6, 7]  # checked at the answer and one above


def test_forward_differences_solve_polynomials_with_rational_coefficients_exactly() -> None:
    """Sizes like a ViT's (tokens = (S / 16)^2 at image side S, a multiple of 32) and an in-batch B x B matrix,
    solved on a 3 x 3 grid and evaluated far outside it with integers only."""

    def size(b: int, side: int) -> int:
        return 4 * b * (side // 16) ** 2 * 768 + 4 * b * b + 1000

    axes = ["batch", "image.image_size"]
    start, step = {"batch": 2, "image.image_size": 160}, {"batch": 1, "image.image_size": 32}
    grid = np.array([[[size(b, s), 2 * size(b, s)] for s in (160, 192, 224)] for b in (2, 3, 4)], dtype=np.int64)
    rows, polynomial = curves.unique_rows(curves.forward_differences(grid, 2).reshape(9, -1).T)
    curve = MemoryCurve({}, axes, start, step, exact=True, coefficients=rows, polynomial=polynomial)
    for b, side in ((1000, 1024), (2, 32 * 40), (17, 224)):
        assert curve.sizes({"batch": b, "image.image_size": side}).tolist() == [size(b, side), 2 * size(b, side)]
    assert curve.on_curve({"batch": 5, "image.image_size": 512})
    assert not curve.on_curve({"batch": 5, "image.image_size": 500})  # off the multiples of 32
    assert not curve.on_curve({"batch": 1, "image.image_size": 512})  # below the smallest value
