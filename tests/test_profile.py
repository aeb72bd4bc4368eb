"""Profiling: estimate (fake tensors) and cpu (real tensors) agree; phases and categories add up."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from unipt_bench.backbones import create_backbone
from unipt_bench.config import RunSpec
from unipt_bench.errors import NotApplicable
from unipt_bench.memory.base import CATEGORIES, PHASES
from unipt_bench.methods import Method, create_method
from unipt_bench.profile import profile
from unipt_bench.suite_file import load_suite

from .helpers import slow_except

SMOKE = load_suite("smoke").with_mode("estimate")


def relative_gap(a: int, b: int) -> float:
    return abs(a - b) / max(a, b, 1)


@pytest.mark.parametrize("spec", slow_except(SMOKE, {"bert/unipt"}))
def test_estimate_and_cpu_agree_within_a_tenth_of_a_percent(spec) -> None:
    """The acceptance check: every smoke run, peak and every category and phase, within 0.1%. One step per
    run: what holds for a step holds for every step (the two-step profiles are checked elsewhere)."""
    spec = type(spec).from_dict({**spec.to_dict(), "steps": 1})
    try:
        estimate = profile(spec)
    except NotApplicable:  # only where the method itself declares why (a missing capability or design)
        method = create_method(spec.method, spec.method_options)
        assert any(method.refusal(create_backbone(t.backbone)) for t in spec.towers if t.tuned)
        return
    real_spec = type(spec).from_dict({**spec.to_dict(), "mode": "cpu"})
    real = profile(real_spec)
    fake_mem, real_mem = estimate["memory"]["memtracker_fake"], real["memory"]["memtracker_real"]
    assert relative_gap(fake_mem["peak_bytes"], real_mem["peak_bytes"]) <= 1e-3
    for cat in CATEGORIES:
        assert relative_gap(fake_mem["by_category"][cat], real_mem["by_category"][cat]) <= 1e-3, cat
    for phase in PHASES:
        assert relative_gap(fake_mem["by_phase"][phase]["peak_bytes"], real_mem["by_phase"][phase]["peak_bytes"]) <= 1e-3
    assert estimate["params"] == real["params"]


def test_result_parts_are_consistent(spec_factory) -> None:
    out = profile(spec_factory("unipt"))
    mem = out["memory"]["memtracker_fake"]
    assert mem["peak_bytes"] == sum(mem["by_category"].values())
    assert mem["peak_bytes"] == max(p["peak_bytes"] for p in mem["by_phase"].values())
    assert set(mem["by_phase"]) == set(PHASES)
    assert len(mem["step_peak_bytes"]) == 2 and max(mem["step_peak_bytes"]) == mem["peak_bytes"]
    params = out["params"]
    assert params["trainable_params"] == params["trainable_method_params"] + params["trainable_head_params"]
    # params are fp32: the tracked parameter bytes are 4 x the parameter count
    assert mem["by_category"]["params"] == 4 * params["total_params"]
    assert out["timing"]["step_seconds"] is None  # fake tensors run no kernels


def test_evaluation_phase_follows_the_steps_without_gradients(spec_factory) -> None:
    mem = profile(spec_factory("bitfit"))["memory"]["memtracker_fake"]
    evaluation, forward = mem["by_phase"]["evaluation"], mem["by_phase"]["forward"]
    assert evaluation["by_category"]["grads"] == 0  # zero_grad(set_to_none) ran before it
    assert 0 < evaluation["peak_bytes"] < forward["peak_bytes"]  # nothing is saved for a backward
    assert len(mem["step_peak_bytes"]) == 2  # the evaluation is not a step


def test_tensor_tracker_follows_a_no_grad_forward_given_a_parameter_view() -> None:
    """Under no_grad, a view of a parameter requires grad yet has no grad_fn; MemTracker's module
    tracker used to fail on it (a DETR-style query embedding expanded over the batch)."""
    import torch
    from torch import nn

    from unipt_bench.memory.estimate import TensorMemoryTracker

    class Add(nn.Module):
        def forward(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
            return x + q

    class Queries(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query = nn.Parameter(torch.zeros(8, 16))
            self.add = Add()

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 8, 16]
            return self.add(x, self.query[None].expand(x.shape[0], -1, -1))

    model, x = Queries(), torch.randn(4, 8, 16)
    tracker = TensorMemoryTracker(model, torch.optim.AdamW(model.parameters()), [x], "memtracker_real")
    with tracker:
        tracker.mark("evaluation")
        with torch.no_grad():
            out = model(x)
    evaluation = tracker.result()["by_phase"]["evaluation"]
    assert evaluation["peak_bytes"] >= 4 * (model.query.numel() + x.numel() + out.numel())


def test_cpu_mode_times_steps_and_reads_rss(spec_factory) -> None:
    out = profile(spec_factory("lora", mode="cpu"))
    assert out["timing"]["step_seconds"] > 0 and len(out["timing"]["step_seconds_all"]) == 3
    assert out["memory"]["rss"]["peak_bytes"] > 0
    allocations = out["memory"]["cpu_allocations"]  # the allocator's own count, beside the tensor tracker's
    assert allocations["peak_bytes"] > 0 and "note" not in allocations  # a transformer: no convolution buffers


def test_cpu_mode_measures_and_names_what_convolutions_allocate_beyond_tensors(spec_factory) -> None:
    """oneDNN's convolution kernels allocate buffers no tensor owns: the allocator counter sees them."""
    allocations = profile(spec_factory("bitfit", "tiny-resnext", mode="cpu"))["memory"]["cpu_allocations"]
    assert allocations["beyond_tensor_tracker_bytes"] > 0 and "oneDNN" in allocations["note"]


def test_optimizer_state_is_two_moments_per_trainable_parameter(spec_factory) -> None:
    """AdamW keeps exp_avg and exp_avg_sq (fp32) plus a scalar step per parameter tensor."""
    from unipt_bench.build import build

    spec = spec_factory("lora")
    out = profile(spec)
    model = build(spec).model
    tensors = [p for p in model.parameters() if p.requires_grad]
    expected = 2 * 4 * out["params"]["trainable_params"] + 4 * len(tensors)
    assert out["memory"]["memtracker_fake"]["by_category"]["optimizer_state"] >= expected


@pytest.mark.slow
def test_side_method_peak_is_below_inserted_methods_at_paper_scale() -> None:
    """Table 5 BERT configuration: UniPT and LST avoid storing backbone activations, Adapter cannot."""
    specs = {s.label: s for s in load_suite("flickr30k").with_mode("estimate") if s.config == "t5-bert"}
    peaks = {m: profile(specs[m])["memory"]["memtracker_fake"]["peak_bytes"] for m in ("unipt", "adapter")}
    assert peaks["unipt"] < 0.6 * peaks["adapter"]


class FusedAttention(torch.nn.Module):
    """A tower whose own attention calls fused SDPA directly: no transformers config switches it."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.query = torch.nn.Linear(backbone.width, backbone.width)

    def forward(self, inputs: dict[str, torch.Tensor]) -> object:
        out = self.backbone(inputs)
        q = self.query(out.last)[:, None]  # [B, 1, N, D]: one head
        attended = torch.nn.functional.scaled_dot_product_attention(q, q, q)[:, 0]
        return dataclasses.replace(out, last=attended)


@dataclasses.dataclass
class FusedAttentionMethod(Method):
    name = "fused-attention"

    def build(self, backbone: torch.nn.Module, out_dim: int) -> torch.nn.Module:
        return FusedAttention(backbone)


def test_the_protocol_records_fused_attention_that_ran_in_an_eager_run(spec_factory, monkeypatch) -> None:
    monkeypatch.setattr("unipt_bench.build.create_method", lambda name, options: FusedAttentionMethod())
    eager = RunSpec.from_dict({**spec_factory("fused-attention").to_dict(), "attention": "eager", "steps": 1})
    protocol = profile(eager)["protocol"]
    assert protocol["attention"] == "eager+sdpa" and "ran 2 times" in protocol["attention_note"]  # 1 step, 1 eval
