"""Every architecture kind: side methods keep gradients out of every backbone; UniPT and LST counts on the
paper's joint and encoder-decoder backbones; video, VQA and grounding heads behave."""

from __future__ import annotations

import pytest
import torch

from unipt_bench.backbones import BACKBONES, create_backbone
from unipt_bench.errors import NotApplicable
from unipt_bench.methods import METHODS, create_method

from .helpers import saved_activation_count, trainable

TINY = [n for n in BACKBONES.names() if BACKBONES.get(n).tiny]
SIDE_METHODS = [m for m in METHODS.names() if METHODS.get(m).side]
SMALL_LST = {"cnn_width": 16, "cnn_heads": 4}


def small_options(method: str, backbone: str) -> dict:
    return SMALL_LST if method == "lst" and "resnext" in backbone else {}


@pytest.mark.parametrize("backbone", TINY)
@pytest.mark.parametrize("method", SIDE_METHODS)
def test_side_methods_never_send_gradients_into_any_backbone(method: str, backbone: str) -> None:
    """For every side method on every backbone kind it applies to: the backbone saves no activation and
    none of its parameters gets a gradient, while every side parameter does."""
    torch.manual_seed(0)
    bb = create_backbone(backbone)
    try:
        tower = create_method(method, small_options(method, backbone)).apply(bb, 32)
    except NotApplicable:
        assert METHODS.get(method)().refusal(bb)
        return
    tower.train()
    backbone_saved, all_saved = saved_activation_count(tower, bb, bb.dummy_inputs(2))
    assert backbone_saved == 0 < all_saved
    assert all(p.grad is None for p in bb.parameters())
    side = [p for p in tower.parameters() if p.requires_grad]
    assert side and all(p.grad is not None for p in side)


def test_side_methods_apply_to_every_kind_the_paper_names() -> None:
    for method in ("unipt", "lst"):
        assert {"transformer", "joint", "cnn", "encdec"} <= METHODS.get(method).kinds


@pytest.mark.parametrize(
    ("method", "backbone", "out_dim", "expected"),
    [
        ("unipt", "clip-vil", 768, 4_736_641),  # docs/methods.md §1.3: m = 384, output width 768
        ("unipt", "mdetr", 256, 381_570),  # §1.4: m = 128, layers 1, 3, 5 and the last
        ("lst", "mdetr", 256, 1_343_756),  # §2.3: d = 64, FFN 512
    ],
)
def test_side_method_counts_on_paper_scale_joint_and_encoder_decoder(method: str, backbone: str, out_dim: int,
                                                                     expected: int) -> None:
    """The paper's VQA and grounding backbones: the method's closed form and the count it leaves trainable."""
    tuned = create_method(method)
    with torch.device("meta"):
        bb = create_backbone(backbone)
        assert tuned.closed_form_trainable(bb, out_dim) == expected
        assert trainable(tuned.apply(bb, out_dim)) == expected


def test_video_tower_runs_frames_as_rows_and_the_head_averages_them() -> None:
    from unipt_bench.backbones.base import BackboneOutput
    from unipt_bench.tasks.retrieval import EmbeddingHead

    bb = create_backbone("tiny-clip-frames")
    inputs = bb.dummy_inputs(2, frames=3)
    assert inputs["pixel_values"].shape[:2] == (2, 3)
    out = bb(inputs)
    assert out.frames == 3 and out.last.shape[0] == 6
    head = EmbeddingHead(bb.width, 8, "cls", mlp=False)
    per_frame = head.proj(out.last[:, 0])  # [6, 8]
    expected = per_frame.view(2, 3, 8).mean(1)
    expected = expected / expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(head(out), expected, atol=1e-6, rtol=1e-5)
    single = BackboneOutput(out.hidden, out.last[:2], None)
    assert head(single).shape == (2, 8)


def test_eot_pooling_picks_the_last_valid_token() -> None:
    from unipt_bench.tasks.pooling import make_pooling

    x = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert make_pooling("eot")(x, mask).flatten().tolist() == [2.0, 7.0]
    assert make_pooling("cls")(x, mask).flatten().tolist() == [0.0, 4.0]


def test_unipt_single_anchor_form_keeps_the_frozen_embedding_plus_a_residual() -> None:
    torch.manual_seed(0)
    bb = create_backbone("tiny-clip-text").eval()
    tower = create_method("unipt", {"anchor": "eot"}).apply(bb, 16).eval()
    inputs = bb.dummy_inputs(3, seq_len=6)
    frozen = bb(inputs, all_hidden=True)
    index = inputs["attention_mask"].sum(1) - 1
    out = tower(inputs)
    assert out.last.shape == (3, 1, bb.width)
    assert not torch.allclose(out.last[:, 0], frozen.hidden[-1][torch.arange(3), index])
    with torch.no_grad():
        tower.side.up[1].weight.zero_()
        tower.side.up[1].bias.zero_()
    torch.testing.assert_close(tower(inputs).last[:, 0], frozen.hidden[-1][torch.arange(3), index])


def test_generalized_iou_loss_matches_torchvision() -> None:
    from torchvision.ops import generalized_box_iou_loss

    from unipt_bench.tasks.boxes import generalized_iou

    torch.manual_seed(0)
    lo = torch.rand(16, 2) * 0.5
    a = torch.cat([lo, lo + torch.rand(16, 2) * 0.5], dim=1)
    lo = torch.rand(16, 2) * 0.5
    b = torch.cat([lo, lo + torch.rand(16, 2) * 0.5], dim=1)
    torch.testing.assert_close((1 - generalized_iou(a, b)).mean(), generalized_box_iou_loss(a, b, reduction="mean"))


def test_vqa_loss_is_bce_times_answers_against_soft_scores() -> None:
    from unipt_bench.tasks.vqa import VQA

    task = VQA(num_answers=5, hidden_dim=32)
    bb = create_backbone("tiny-joint")
    from unipt_bench.tasks.base import Tower

    model = task.build({"joint": Tower(bb, bb, False, bb.width)}).eval()  # no dropout between the two calls
    batch = {"joint": bb.dummy_inputs(3), "targets": {"scores": torch.tensor([[0, 1 / 3, 2 / 3, 1, 0]] * 3)}}
    logits = model.logits(batch)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["targets"]["scores"]) * 5
    torch.testing.assert_close(model(batch), expected)
