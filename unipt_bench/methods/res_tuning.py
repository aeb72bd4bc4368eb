"""Res-Tuning-Bypass (Jiang et al., NeurIPS 2023, arXiv 2310.19859): tuners unbound from the backbone.

A bypass network beside the frozen backbone (run under no_grad): from x_0 = h_0, each layer l adds a
lateral Res-Adapter of the frozen h_l to a vertical Res-Adapter of the bypass stream,
x_l = RA_lat(h_l) + RA_ver(x_{l-1}); x_L replaces the backbone's output. Only the bypass trains;
gradients never enter the backbone. docs/methods.md §Res-Tuning-Bypass. Reference implementation: the
authors' Res-Tuning in ModelScope SWIFT (github.com/modelscope/ms-swift, commit 3602360), files
swift/tuners/restuning.py and restuning_components.py, cited below by file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..backbones.base import Backbone, BackboneOutput
from ..configurable import bounded
from .adapter import bottleneck_params
from .base import TOKEN_KINDS, Method, SideTuned, register_method


class ResAdapter(nn.Module):
    """x + W2 GELU(W1 x), bottleneck a (restuning_components.py:128-153); Xavier-uniform weights, biases
    N(0, 1e-6) (restuning_components.py:104-108, 123-126)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(width, hidden), nn.Linear(hidden, width)
        for layer in (self.down, self.up):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D]
        return x + self.up(nn.functional.gelu(self.down(x)))


class Bypass(nn.Module):
    """x_0 = h_0; x_l = RA_lat_l(h_l) + RA_ver_l(x_{l-1}) for l = 1..L (restuning.py:284-294, 318-325)."""

    def __init__(self, width: int, depth: int, hidden: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(ResAdapter(width, hidden) for _ in range(depth))
        self.vertical = nn.ModuleList(ResAdapter(width, hidden) for _ in range(depth))

    def forward(self, out: BackboneOutput) -> BackboneOutput:
        x = out.hidden[0]  # x_0 = h_0: [B, N, D] (frozen)
        for lateral, vertical, state in zip(self.lateral, self.vertical, out.hidden[1:], strict=True):
            x = lateral(state) + vertical(x)  # x_l: [B, N, D]
        return replace(out, last=x)


@register_method("res-tuning")
@dataclass
class ResTuningBypass(Method):
    """Token models with hidden states of one width (transformer, joint). The paper's bypass runs along a
    ViT's blocks; a CNN's stages change width and resolution, and an encoder-decoder has two stacks, for
    which it states no bypass."""

    module_names = ("side",)
    kinds = TOKEN_KINDS
    side = True
    hidden: int = bounded(32, at_least=1)  # Res-Adapter bottleneck a (restuning_components.py:85)

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        return SideTuned(backbone, Bypass(backbone.width, len(backbone.hidden_sizes) - 1, self.hidden))

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """2 L Res-Adapters of (D a + a) + (a D + D) (docs/methods.md §Res-Tuning-Bypass)."""
        depth, d = len(backbone.hidden_sizes) - 1, backbone.width
        return 2 * depth * bottleneck_params(d, self.hidden)

    def output_width(self, backbone: Backbone, out_dim: int) -> int:
        return backbone.width  # x_L stands for the backbone's output; the task head projects
