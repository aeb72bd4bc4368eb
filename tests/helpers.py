"""Test helpers shared by several test files."""

from __future__ import annotations

import pytest
import torch


def slow_except(specs: list, quick: set[str]) -> list:
    """`specs` as pytest parameters (id: the spec's key), all marked slow but the runs named in `quick`
    ("config/label"): the quick loop (`pytest -m "not slow"`) keeps a sample, `pytest` checks every one."""
    return [pytest.param(s, id=s.key, marks=() if f"{s.config}/{s.label}" in quick else pytest.mark.slow)
            for s in specs]


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def saved_activation_count(tower: torch.nn.Module, backbone: torch.nn.Module, inputs: dict) -> tuple[int, int]:
    """(tensors the backbone saves for backward, tensors saved in total) during one forward of `tower`.

    Also runs a backward pass, so gradients can be inspected afterwards.
    """
    counts = {"backbone": 0, "all": 0}
    inside = {"flag": False}

    def pack(t: torch.Tensor) -> torch.Tensor:
        counts["all"] += 1
        counts["backbone"] += inside["flag"]
        return t

    pre = backbone.register_forward_pre_hook(lambda *_: inside.__setitem__("flag", True))
    post = backbone.register_forward_hook(lambda *_: inside.__setitem__("flag", False))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = tower(inputs)
    pre.remove()
    post.remove()
    out.last.float().pow(2).mean().backward()
    return counts["backbone"], counts["all"]


def assert_estimate_equals_cpu(spec) -> None:
    """Profile `spec` (an estimate-mode RunSpec) on fake and on real CPU tensors: peak, every category, every
    phase's peak and the parameter counts must agree byte for byte."""
    from unipt_bench.config import RunSpec
    from unipt_bench.profile import RunOptions, profile

    estimate = profile(spec)
    # the allocator counter (torch.profiler, slower by a third) compares nothing here
    real = profile(RunSpec.from_dict({**spec.to_dict(), "mode": "cpu"}), RunOptions(count_allocations=False))
    fake_mem, real_mem = estimate["memory"]["memtracker_fake"], real["memory"]["memtracker_real"]
    assert fake_mem["peak_bytes"] == real_mem["peak_bytes"]
    assert fake_mem["by_category"] == real_mem["by_category"]
    assert ({p: v["peak_bytes"] for p, v in fake_mem["by_phase"].items()}
            == {p: v["peak_bytes"] for p, v in real_mem["by_phase"].items()})
    assert estimate["params"] == real["params"]
