"""DTL (docs/methods.md §DTL): where the backbone keeps activations, where gradients go, the trainable count."""

from __future__ import annotations

import pytest
import torch

from unipt_bench.backbones import create_backbone
from unipt_bench.errors import NotApplicable
from unipt_bench.methods import create_method

from .helpers import assert_estimate_equals_cpu, saved_activation_count, trainable

APPLIES = ["tiny-bert", "tiny-vit", "tiny-clip-text", "tiny-joint"]


def saved_per_block(backbone: str, options: dict) -> list[int]:
    """Tensors each frozen block saves for backward in one training step (a fresh tower per block)."""
    counts = []
    for i in range(2):
        torch.manual_seed(0)
        bb = create_backbone(backbone)
        tower = create_method("dtl", options).apply(bb, 16).train()
        frozen = bb.blocks()[i].block  # the backbone's own block inside its CSN tap
        counts.append(saved_activation_count(tower, frozen, bb.dummy_inputs(2))[0])
    return counts


@pytest.mark.parametrize("backbone", APPLIES)
def test_blocks_up_to_the_injection_point_save_nothing_and_later_blocks_do(backbone: str) -> None:
    """Default on 2 blocks: M = 1, the only injection follows the last block, so no block saves anything.
    inject_from = 0: injection after block 0, so gradients pass through block 1, which saves its activations."""
    assert saved_per_block(backbone, {}) == [0, 0]
    early, late = saved_per_block(backbone, {"inject_from": 0.0})
    assert early == 0 < late


@pytest.mark.parametrize("backbone", APPLIES)
def test_gradients_reach_exactly_the_csn(backbone: str) -> None:
    torch.manual_seed(0)
    bb = create_backbone(backbone)
    tower = create_method("dtl", {"inject_from": 0.0}).apply(bb, 16).train()
    saved_activation_count(tower, bb, bb.dummy_inputs(2))  # runs a backward
    assert all(p.grad is None for p in bb.parameters() if not p.requires_grad)
    csn = list(tower.csn.parameters())
    assert csn and all(p.requires_grad and p.grad is not None for p in csn)
    assert {id(p) for p in tower.parameters() if p.requires_grad} == {id(p) for p in csn}
    assert tower.csn.residual is None  # the CSN's state lives for one forward


def test_trainable_count_by_hand_on_tiny_bert() -> None:
    """L = 2 blocks of width D = 32, r = 2: per block A [2, 32] and B [32, 2]."""
    bb = create_backbone("tiny-bert")
    expected = 2 * (2 * 32 + 32 * 2)
    assert create_method("dtl").closed_form_trainable(bb, 16) == expected == 256
    assert trainable(create_method("dtl").apply(bb, 16)) == 256


def test_starts_as_the_frozen_backbone() -> None:
    """B = 0 at initialisation: the tuned tower's output equals the backbone's."""
    torch.manual_seed(0)
    bb = create_backbone("tiny-vit").eval()
    inputs = bb.dummy_inputs(2)
    frozen = bb(inputs).last
    tower = create_method("dtl", {"inject_from": 0.0}).apply(bb, 16).eval()
    torch.testing.assert_close(tower(inputs).last, frozen)


@pytest.mark.parametrize("backbone", ["tiny-resnext", "tiny-mdetr"])
def test_no_design_for_cnn_or_encoder_decoder(backbone: str) -> None:
    with pytest.raises(NotApplicable, match="equal-width blocks"):
        create_method("dtl").apply(create_backbone(backbone), 16)


def test_profile_estimate_and_cpu_agree_byte_for_byte(spec_factory) -> None:
    assert_estimate_equals_cpu(spec_factory("dtl", options={"inject_from": 0.0}))
