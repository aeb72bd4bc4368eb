"""Memory attribution, registry-wide: on every method the owners add up to the peak, and what a method
created (its parameters, the activations its modules allocate) is charged to the method."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from unipt_bench.backbones import BACKBONES, create_backbone
from unipt_bench.memory.estimate import TensorMemoryTracker
from unipt_bench.methods import METHODS, Method, create_method
from unipt_bench.profile import profile

from .conftest import make_spec

TINY = [n for n in BACKBONES.names() if BACKBONES.get(n).tiny]
# tiny-mdetr at its default 64 x 96 images: the frozen CNN's feature maps outweigh everything its transformer
# halves hold, so a side method's peak lies in the frozen forward, before its own modules run. A small image
# and a long expression put the peak after them, where what they made is alive to be charged.
SHAPES = {"tiny-mdetr": {"image_height": 32, "image_width": 32, "seq_len": 60}}


def first_tiny_backbone(method: str) -> str:
    """The first tiny backbone (registry order) the method applies to."""
    with torch.device("meta"):
        return next(b for b in TINY if not create_method(method).refusal(create_backbone(b)))


def own_parameter_bytes(method: str, backbone: str) -> int:
    """Bytes of the parameters `apply` creates: those the backbone did not have before."""
    with torch.device("meta"):
        built = create_backbone(backbone)
        before = {id(p) for p in built.parameters()}
        tuned = create_method(method).apply(built, 16)
    return sum(p.numel() * p.element_size() for p in tuned.parameters() if id(p) not in before)


def assert_adds_up(figures: dict) -> None:
    owners = figures["by_owner"]
    assert sum(sum(cats.values()) for cats in owners.values()) == figures["peak_bytes"]
    for category, nbytes in figures["by_category"].items():
        assert sum(owners[o][category] for o in owners) == nbytes


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_is_charged_what_it_created(method: str) -> None:
    backbone = first_tiny_backbone(method)
    # two steps: the peak lies in the second, with the optimizer state in place and the activations alive
    # (prompt tuning's many parameters put its peak of batch 4 in the optimizer step: batch 8 for it)
    spec = make_spec(method, backbone, shape=SHAPES.get(backbone), batch=8 if method == "prompt" else 4)
    figures = profile(spec)["memory"]["memtracker_fake"]
    assert_adds_up(figures)
    own = figures["by_owner"]["method"]
    assert own["params"] == own_parameter_bytes(method, backbone)
    if own["params"]:  # modules of its own run in forward: their outputs are the method's activations
        assert own["activations"] > 0, f"{method} on {backbone}: no activation charged to the method"


class Scaled(nn.Module):
    """A tower that scales the backbone's tokens by a trainable vector held by the wrapper itself."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.scale = nn.Parameter(torch.ones(backbone.width))

    def forward(self, inputs: dict[str, torch.Tensor]) -> object:
        out = self.backbone(inputs)
        return dataclasses.replace(out, last=out.last * self.scale)


@dataclass
class ScaleTokens(Method):
    name = "scale-tokens"

    def build(self, backbone: nn.Module, out_dim: int) -> nn.Module:
        return Scaled(backbone)


def test_parameters_a_methods_wrapper_holds_are_the_methods(monkeypatch) -> None:
    monkeypatch.setattr("unipt_bench.build.create_method", lambda name, options: ScaleTokens())
    figures = profile(make_spec("scale-tokens", "tiny-bert"))["memory"]["memtracker_fake"]
    assert_adds_up(figures)
    width = create_backbone("tiny-bert").width
    assert figures["by_owner"]["method"]["params"] == 4 * width
    # its Adam moments too (the peak lies in the frozen backbone's forward of the second step, where the
    # wrapper's own output is not alive yet)
    assert figures["by_owner"]["method"]["optimizer_state"] >= 2 * 4 * width  # exp_avg, exp_avg_sq (and step)


class LateEntry(nn.Module):
    """A frozen layer whose input a pre-hook replaces with a trainable side's output (SHERL's late layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen_layer_with_a_long_name = nn.Linear(8, 8).requires_grad_(False)
        self.side = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        entry = self.side(x)
        hook = self.frozen_layer_with_a_long_name.register_forward_pre_hook(lambda _, args: (entry,))
        try:
            return self.frozen_layer_with_a_long_name(x)  # x [B, 8] no grad; the layer runs on entry
        finally:
            hook.remove()


def test_backward_after_a_frozen_layer_is_charged_to_the_modules_that_run_it() -> None:
    """The frozen layer never sees an input needing a gradient, so its backward 'runs' until the whole
    backward ends; what the side allocates after it is still the side's."""
    model = LateEntry()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    charged: dict[str, int] = {}
    owner_of = {"": "other", "frozen_layer_with_a_long_name": "backbone"}
    with TensorMemoryTracker(model, optimizer, [], "real",
                             owner_of=lambda path: owner_of.get(path, "method")) as tracker:
        charge = tracker.tracker.charge

        def recording(owner: str, reftype: object, nbytes: int) -> None:
            if tracker.tracker.phase == "backward" and nbytes > 0:
                charged[owner] = charged.get(owner, 0) + nbytes
            charge(owner, reftype, nbytes)

        tracker.tracker.charge = recording
        tracker.mark("forward")
        loss = model(torch.randn(4, 8)).sum()
        tracker.mark("backward")
        loss.backward()
        tracker.end_step()
    # the side's backward: GELU's and the second Linear's input gradients, [4, 8] float32 each
    assert charged.get("method", 0) >= 2 * 4 * 8 * 4
    assert charged.get("backbone", 0) <= 4 * 8 * 4  # the frozen layer's own input gradient, at most
