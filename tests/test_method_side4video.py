"""Side4Video: the trainable count by hand, where it applies, the frozen vision tower saving nothing, the side
output starting at zero, and estimate/cpu profiles agreeing on a video-retrieval run."""

from __future__ import annotations

import pytest
import torch

from unipt_bench.backbones import create_backbone
from unipt_bench.config import RunSpec, TowerSpec
from unipt_bench.errors import NotApplicable
from unipt_bench.methods import create_method

from .helpers import assert_estimate_equals_cpu, saved_activation_count, trainable

SMALL = {"side_dim": 64}  # one attention head of width 64


def test_trainable_count_by_hand_on_tiny_frames() -> None:
    """tiny-clip-frames: D = 32, L = 2, patch 8 on 32 px (P = 16); s = 64."""
    stem = 3 * 8 * 8 * 3 * 64 + 64 + 2 * 64  # Conv3d(3 -> s, 3 x 8 x 8) + BatchNorm3d
    block = 2 * 128 + 2 * (64 * 64 + 64) + 4 * 64 + 4 * (64 * 64 + 64) + 128 + (64 * 256 + 256) + (256 * 64 + 64)
    layer = 2 * 32 + (32 * 64 + 64) + block  # LayerNorm(D), Linear(D -> s), the side block
    expected = stem + 2 * layer + 17 * 64 + 2 * 64 + 64 * 32  # + position, post BatchNorm, proj
    method = create_method("side4video", SMALL)
    assert method.closed_form_trainable(create_backbone("tiny-clip-frames"), 16) == expected
    assert trainable(method.apply(create_backbone("tiny-clip-frames"), 16)) == expected == 162_048


def test_a_text_tower_trains_fully_and_image_or_other_kinds_are_refused() -> None:
    text = create_backbone("tiny-clip-text")
    assert trainable(create_method("side4video").apply(text, 16)) == sum(p.numel() for p in text.parameters())
    for name, reason in (("tiny-clip-vision", "not for image towers"), ("tiny-resnext", "no design"),
                         ("tiny-mdetr", "no design")):
        with pytest.raises(NotApplicable, match=reason):
            create_method("side4video", SMALL).apply(create_backbone(name), 16)


def test_the_vision_tower_saves_nothing_and_the_side_output_starts_at_zero() -> None:
    torch.manual_seed(0)
    bb = create_backbone("tiny-clip-frames")
    tower = create_method("side4video", SMALL).apply(bb, 16).train()
    inputs = bb.dummy_inputs(2)
    backbone_saved, all_saved = saved_activation_count(tower, bb, inputs)
    assert backbone_saved == 0 < all_saved
    assert all(p.grad is None for p in bb.parameters())
    assert all((p.grad is not None) == p.requires_grad for p in tower.parameters())
    with torch.no_grad():
        torch.testing.assert_close(tower(inputs).last, bb(inputs).last)  # proj starts at zero
        tower.side.proj.normal_()
        assert not torch.allclose(tower(inputs).last[:, 0], bb(inputs).last[:, 0])


def test_estimate_and_cpu_profiles_agree_byte_for_byte() -> None:
    towers = [TowerSpec("video", "tiny-clip-frames", pooling="cls"), TowerSpec("text", "tiny-clip-text", pooling="eot")]
    assert_estimate_equals_cpu(RunSpec(
        suite="t", config="c", label="side4video", method="side4video", method_options=SMALL,
        task="video-retrieval", task_options={"embed_dim": 16}, towers=towers, batch=2, gpus=1, steps=1, seed=0,
        mode="estimate"))
