"""CNN forms of UniPT, LST and Adapter: pre-interaction against a plain loop, paper-scale counts, gradient flow."""

from __future__ import annotations

import pytest
import torch

from unipt_bench.backbones import create_backbone
from unipt_bench.errors import UserError
from unipt_bench.methods import create_method
from unipt_bench.methods.unipt_cnn import guided_pool

from .helpers import saved_activation_count, trainable


def guided_pool_loop(stage: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """docs/methods.md §1.2 written out patch by patch."""
    b, c, h, w = guide.shape
    r = stage.shape[-1] // w
    out = torch.zeros(b, c, h, w)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                patch = stage[n, :, i * r : (i + 1) * r, j * r : (j + 1) * r]  # [C, r, r]
                g = guide[n, :, i, j][:, None, None]  # nearest upsampling: one guide vector per patch
                s = torch.relu((g * patch).sum(0))  # [r, r]
                weights = s / (s.sum() + 1e-8) + 1.0 / (r * r)
                out[n, :, i, j] = (weights * patch).sum(dim=(1, 2))
    return out


@pytest.mark.parametrize("rate", [1, 2, 4])
def test_vectorised_pre_interaction_equals_the_patch_loop(rate: int) -> None:
    torch.manual_seed(0)
    guide = torch.randn(2, 3, 3, 4)
    stage = torch.randn(2, 3, 3 * rate, 4 * rate)
    torch.testing.assert_close(guided_pool(stage, guide), guided_pool_loop(stage, guide))


def test_non_integer_pooling_rate_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="does not pool onto"):
        guided_pool(torch.randn(1, 2, 10, 10), torch.randn(1, 2, 4, 4))
    bb = create_backbone("tiny-resnext")
    tower = create_method("unipt").apply(bb, 16)
    with pytest.raises(UserError, match="integer rate"):
        tower(bb.dummy_inputs(1, image_size=72))  # 72 px: stage grids 18, 9, 5, 3


def test_unipt_cnn_pools_onto_any_last_grid() -> None:
    bb = create_backbone("tiny-resnext")
    tower = create_method("unipt").apply(bb, 16)
    for size in (64, 96):
        grid = size // 32
        assert tower(bb.dummy_inputs(2, image_size=size)).last.shape == (2, grid * grid, 16)


@pytest.mark.parametrize(
    ("method", "expected", "paper"),
    [
        ("unipt", 6_433_537, 6.4),  # Table 5: 6.4M
        ("lst", 2_270_659, 2.27),  # Table 5 prints 22.7 (a lost decimal point)
        ("adapter", 1_396_960, 3.5 - 2.1),  # 3.5M includes the 2048->1024 head
    ],
)
def test_resnext101_counts_match_closed_forms_and_the_paper(method: str, expected: int, paper: float) -> None:
    """ResNeXt-101 (C = 256, 512, 1024, 2048), E = 1024: the method's closed form, the count and the paper."""
    tuned = create_method(method)
    with torch.device("meta"):
        backbone = create_backbone("resnext101-32x8d")
        assert tuned.closed_form_trainable(backbone, 1024) == expected
        assert trainable(tuned.apply(backbone, 1024)) == expected
    assert abs(expected / 1e6 - paper) < 0.05


@pytest.mark.parametrize("method", ["unipt", "lst"])
def test_cnn_side_methods_keep_gradients_out_of_the_backbone(method: str) -> None:
    torch.manual_seed(0)
    bb = create_backbone("tiny-resnext")
    tower = create_method(method, {"cnn_width": 16, "cnn_heads": 4} if method == "lst" else {}).apply(bb, 16)
    backbone_saved, all_saved = saved_activation_count(tower, bb, bb.dummy_inputs(2))
    assert backbone_saved == 0 < all_saved
    assert all(p.grad is None for p in bb.parameters())
    assert all(p.grad is not None for p in tower.parameters() if p.requires_grad)


def test_cnn_adapter_backpropagates_through_the_stages() -> None:
    bb = create_backbone("tiny-resnext")
    tower = create_method("adapter").apply(bb, 16)
    tower(bb.dummy_inputs(2)).last.pow(2).mean().backward()
    adapters = [p for n, p in tower.named_parameters() if ".adapter." in n]
    assert adapters and all(p.grad is not None for p in adapters)
    assert all(p.grad is None for n, p in tower.named_parameters() if ".adapter." not in n)
