"""Res-Tuning-Bypass: the backbone saves nothing, gradients reach exactly the bypass, the recurrence, the
trainable count by hand, and estimate/cpu profiles agreeing."""

from __future__ import annotations

import pytest
import torch

from unipt_bench.backbones import create_backbone
from unipt_bench.errors import NotApplicable
from unipt_bench.methods import create_method

from .conftest import make_spec
from .helpers import assert_estimate_equals_cpu, saved_activation_count, trainable

E = 16


@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-vit", "tiny-clip-text", "tiny-joint"])
def test_backbone_saves_nothing_and_only_the_bypass_gets_gradients(backbone: str) -> None:
    torch.manual_seed(0)
    bb = create_backbone(backbone)
    tower = create_method("res-tuning").apply(bb, E).train()
    backbone_saved, all_saved = saved_activation_count(tower, bb, bb.dummy_inputs(3))
    assert backbone_saved == 0 < all_saved
    assert all(p.grad is None for p in bb.parameters())
    assert all((p.grad is not None) == p.requires_grad for p in tower.parameters())
    assert all(name.startswith("side.") for name, p in tower.named_parameters() if p.requires_grad)


def test_bypass_follows_the_recurrence() -> None:
    torch.manual_seed(0)
    bb = create_backbone("tiny-bert").eval()
    tower = create_method("res-tuning", {"hidden": 4}).apply(bb, E).eval()
    inputs = bb.dummy_inputs(2)
    hidden = bb(inputs, all_hidden=True).hidden
    bypass, x = tower.side, hidden[0]
    for layer, state in enumerate(hidden[1:]):
        lat, ver = bypass.lateral[layer], bypass.vertical[layer]
        x = state + lat.up(torch.nn.functional.gelu(lat.down(state))) + x + ver.up(torch.nn.functional.gelu(ver.down(x)))
    torch.testing.assert_close(tower(inputs).last, x)


def test_trainable_count_by_hand_on_tiny_bert() -> None:
    """D = 32, L = 2, a = 32: 2 L adapters of Linear(32 -> 32) + Linear(32 -> 32)."""
    expected = 2 * 2 * ((32 * 32 + 32) + (32 * 32 + 32))
    method = create_method("res-tuning")
    assert method.closed_form_trainable(create_backbone("tiny-bert"), E) == expected == 8448
    assert trainable(method.apply(create_backbone("tiny-bert"), E)) == expected


@pytest.mark.parametrize("backbone", ["tiny-resnext", "tiny-mdetr"])
def test_cnn_and_encoder_decoder_are_not_applicable(backbone: str) -> None:
    with pytest.raises(NotApplicable, match="no design"):
        create_method("res-tuning").apply(create_backbone(backbone), E)


def test_estimate_and_cpu_profiles_agree_byte_for_byte() -> None:
    assert_estimate_equals_cpu(make_spec("res-tuning"))
