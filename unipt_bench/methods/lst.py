"""Ladder Side Tuning (Sung et al. 2022, arXiv 2206.06522), the paper's main memory-efficient competitor.

A side network of the backbone's own layer type at width d = D / r, fed through gated ladder
connections from every hidden state of the frozen backbone (run under no_grad): only the side
network trains and gradients never enter the backbone. SPEC_METHODS section 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..backbones.base import Backbone, BackboneOutput
from ..errors import UserError
from .base import Method, SideTuned, register_method


class LadderSide(nn.Module):
    """Down_0(h_0), then for each kept layer i: gate with Down_i(h_i) and run side layer i."""

    def __init__(self, backbone: Backbone, out_dim: int, reduction: int, temperature: float, layers: list[int]):
        super().__init__()
        width = backbone.width // reduction
        self.layers = layers  # backbone layer indices (1..L) that get a side layer
        self.temperature = temperature
        self.run_layer = backbone.run_side_layer
        self.downs = nn.ModuleList(nn.Linear(backbone.hidden_sizes[i], width) for i in [0, *layers])
        self.gates = nn.Parameter(torch.zeros(len(layers)))  # alpha_i, init 0: an even mix at the start
        self.side_layers = nn.ModuleList(backbone.side_layer(reduction) for _ in layers)
        self.up = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_dim))

    def forward(self, out: BackboneOutput) -> BackboneOutput:
        h, mask = out.hidden, out.mask
        x = self.downs[0](h[0])  # [B, N, d]
        gates = torch.sigmoid(self.gates / self.temperature)  # [kept layers]
        for k, i in enumerate(self.layers):
            x = gates[k] * x + (1 - gates[k]) * self.downs[k + 1](h[i])
            x = self.run_layer(self.side_layers[k], x, mask)
        return BackboneOutput(out.hidden, self.up(x), mask)  # last: [B, N, E]


@register_method("lst")
@dataclass
class LST(Method):
    side = True
    reduction: int = 4  # side width d = D / 4 (the paper's comparisons)
    temperature: float = 0.1  # gate temperature T
    layers: list[int] = field(default_factory=list)  # backbone layers given a side layer; empty = all

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        depth = len(backbone.hidden_sizes) - 1
        layers = sorted(self.layers) or list(range(1, depth + 1))
        if layers[0] < 1 or layers[-1] > depth or len(set(layers)) != len(layers):
            raise UserError(f"lst: layers must be distinct indices in 1..{depth}, got {self.layers}")
        return SideTuned(backbone, LadderSide(backbone, out_dim, self.reduction, self.temperature, layers))
