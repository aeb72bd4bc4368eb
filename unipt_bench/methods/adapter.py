"""Adapter tuning (Houlsby et al. 2019, arXiv 1902.00751): bottlenecks inside the frozen backbone.

After the attention output projection and after the FFN output projection of every layer:
`x + Up(ReLU(Down(x)))`, bottleneck D / reduction. Only the adapters train, but gradients flow back
through every layer of the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbones.base import Backbone
from .base import Method, freeze, register_method


class Bottleneck(nn.Module):
    """x + Up(ReLU(Down(x))), with Up initialised near zero so the adapter starts as the identity."""

    def __init__(self, width: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.normal_(self.up.weight, std=1e-3)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D]
        return x + self.up(torch.relu(self.down(x)))


class Adapted(nn.Module):
    """A frozen projection followed by its adapter."""

    def __init__(self, base: nn.Linear, adapter: Bottleneck) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


@register_method("adapter")
@dataclass
class Adapter(Method):
    reduction: int = 16  # bottleneck = D / 16 (Houlsby)

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        freeze(backbone)
        for parent, attr in backbone.adapter_sites():
            base = getattr(parent, attr)
            setattr(parent, attr, Adapted(base, Bottleneck(base.out_features, base.out_features // self.reduction)))
        return backbone
