"""UniPT for CNNs (docs/methods.md §1.2): last-stage-guided pre-interaction pools each stage onto the last
grid, then the transformer procedure (post-interaction) runs over the grid's tokens."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from torch.nn import functional as F

from ..backbones.base import BackboneOutput
from ..errors import UserError
from ..ops import l1norm
from .base import down_params, linear_params
from .interaction import parallel_interaction


def pooling_rate(stage: torch.Tensor, last: torch.Tensor) -> int:
    """The integer r with stage = r x last in both spatial dimensions; anything else is a clear error."""
    (h, w), (h4, w4) = stage.shape[-2:], last.shape[-2:]
    if h % h4 or w % w4 or h // h4 != w // w4:
        raise UserError(
            f"unipt: a {h}x{w} stage does not pool onto the {h4}x{w4} last stage by one integer rate; "
            "choose an input size whose stage grids divide evenly (e.g. a multiple of 32 pixels)"
        )
    return h // h4


def guided_pool(stage: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """Weighted sum-pool of stage [B, C, H, W] onto the guide's grid [B, C, h, w] (H = r h, W = r w).

    Per pixel, s = <guide upsampled to the pixel, stage pixel> over channels; within each r x r patch the
    weights are l1norm(ReLU(s)) + 1/r^2, and the patch's pixels are summed with them.
    """
    b, c, h, w = guide.shape
    r = pooling_rate(stage, guide)
    upsampled = F.interpolate(guide, size=stage.shape[-2:], mode="nearest")  # [B, C, H, W]
    scores = (upsampled * stage).sum(dim=1, keepdim=True)  # s: [B, 1, H, W]
    patches = torch.relu(scores).view(b, 1, h, r, w, r)  # [B, 1, h, r, w, r]
    weights = l1norm(patches, dim=(3, 5)) + 1.0 / (r * r)  # normalised within each r x r patch
    return (weights * stage.view(b, c, h, r, w, r)).sum(dim=(3, 5))  # [B, C, h, w]


def tokens(grid: torch.Tensor) -> torch.Tensor:
    return grid.flatten(2).transpose(1, 2)  # [B, C, h, w] -> [B, h*w, C]


class ParallelCNN(nn.Module):
    """Down_k = BN . Conv1x1(C_k -> m); Id_k = ReLU . Conv1x1(C_4 -> C_k) guides the pre-interaction."""

    def __init__(self, channels: tuple[int, ...], width: int, out_dim: int) -> None:
        super().__init__()
        self.downs = nn.ModuleList(nn.Sequential(nn.Conv2d(c, width, 1), nn.BatchNorm2d(width)) for c in channels)
        self.guides = nn.ModuleList(nn.Sequential(nn.Conv2d(channels[-1], c, 1), nn.ReLU()) for c in channels[:-1])
        self.proj = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width))
        self.up = nn.Sequential(nn.ReLU(), nn.Conv2d(width, out_dim, 1))
        self.gate = nn.Linear(width, 1)

    @staticmethod
    def trainable_params(channels: tuple[int, ...], width: int, out_dim: int) -> int:
        """sum_k (C_k m + 3 m) + sum_{k<K} (C_K C_k + C_k) + (m^2 + 3 m) + (m E + E) + (m + 1)
        (docs/methods.md §1.2)."""
        downs = sum(down_params(c, width) for c in channels)
        guides = sum(linear_params(channels[-1], c) for c in channels[:-1])
        return downs + guides + down_params(width, width) + linear_params(width, out_dim) + linear_params(width, 1)

    def forward(self, out: BackboneOutput) -> BackboneOutput:
        *early, last = out.hidden  # stages [B, C_k, H_k, W_k]; last [B, C_4, h, w]
        b, _, h, w = last.shape
        targets = [
            tokens(down(guided_pool(stage, guide(last))))  # T_k: [B, h*w, m]
            for stage, guide, down in zip(early, self.guides, self.downs, strict=False)
        ]
        anchor = self.downs[-1](last)  # [B, m, h, w]
        fused = parallel_interaction(tokens(anchor), targets, None, self.gate)  # [B, h*w, m]
        fused = fused.transpose(1, 2).reshape(b, -1, h, w)  # [B, m, h, w]
        return replace(out, last=tokens(self.up(anchor + self.proj(fused))), mask=None)  # [B, h*w, E]
