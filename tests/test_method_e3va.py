"""E3VA (docs/methods.md §E3VA): the backbone keeps nothing, gradients reach only the highway, the count."""

from __future__ import annotations

import pytest
import torch

from unipt_bench.backbones import create_backbone
from unipt_bench.errors import NotApplicable
from unipt_bench.methods import create_method

from .helpers import assert_estimate_equals_cpu, saved_activation_count, trainable

APPLIES = ["tiny-bert", "tiny-vit", "tiny-clip-text", "tiny-joint"]


@pytest.mark.parametrize("backbone", APPLIES)
def test_backbone_saves_nothing_and_gradients_reach_exactly_the_highway(backbone: str) -> None:
    torch.manual_seed(0)
    bb = create_backbone(backbone)
    tower = create_method("e3va").apply(bb, 16).train()
    backbone_saved, all_saved = saved_activation_count(tower, bb, bb.dummy_inputs(2))
    assert backbone_saved == 0 < all_saved  # the highway's adapters and norm keep theirs
    assert all(p.grad is None for p in bb.parameters())
    highway = list(tower.side.parameters())
    assert highway and all(p.requires_grad and p.grad is not None for p in highway)
    assert {id(p) for p in tower.parameters() if p.requires_grad} == {id(p) for p in highway}


def test_every_attention_and_mlp_output_feeds_one_adapter() -> None:
    bb = create_backbone("tiny-bert")
    tower = create_method("e3va").apply(bb, 16)
    with torch.no_grad():
        out = tower.backbone(bb.dummy_inputs(2))
    assert len(out.hidden) == len(tower.side.adapters) == 2 * bb.num_layers
    assert all(h.shape == (2, 32, bb.width) for h in out.hidden)


def test_trainable_count_by_hand_on_tiny_bert() -> None:
    """D = 32, b = 32 / 16 = 2, 2 layers x 2 sites: 4 x (Down 32*2 + 2, Up 2*32 + 32) + LayerNorm 2*32."""
    bb = create_backbone("tiny-bert")
    expected = 4 * ((32 * 2 + 2) + (2 * 32 + 32)) + 2 * 32
    assert create_method("e3va").closed_form_trainable(bb, 16) == expected == 712
    assert trainable(create_method("e3va").apply(bb, 16)) == 712


def test_output_keeps_the_backbones_width_and_mask() -> None:
    bb = create_backbone("tiny-clip-text")
    inputs = bb.dummy_inputs(3)
    out = create_method("e3va").apply(bb, 16)(inputs)
    assert out.last.shape == (3, 32, bb.width)
    assert torch.equal(out.mask, inputs["attention_mask"])


@pytest.mark.parametrize("backbone", ["tiny-resnext", "tiny-mdetr"])
def test_no_design_for_cnn_or_encoder_decoder(backbone: str) -> None:
    with pytest.raises(NotApplicable, match="no design"):
        create_method("e3va").apply(create_backbone(backbone), 16)


def test_profile_estimate_and_cpu_agree_byte_for_byte(spec_factory) -> None:
    assert_estimate_equals_cpu(spec_factory("e3va"))
