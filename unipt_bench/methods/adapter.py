"""Adapter tuning (Houlsby et al. 2019, arXiv 1902.00751): bottlenecks inside the frozen backbone.

Transformer: after the attention output projection and after the FFN output projection of every
layer, `x + Up(ReLU(Down(x)))` with bottleneck D / 16. CNN: a 1x1-conv bottleneck of C / 8 after each
stage conv2..conv5. Only the adapters train, but gradients flow back through the whole backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbones.base import AdapterSites, Backbone
from ..configurable import bounded
from .base import Method, freeze, linear_params, register_method


class Bottleneck(nn.Module):
    """x + Up(ReLU(Down(x))) over the last dim (tokens) or channels (1x1 convs); Up starts near zero."""

    def __init__(self, width: int, bottleneck: int, conv: bool = False) -> None:
        super().__init__()
        layer = (lambda i, o: nn.Conv2d(i, o, 1)) if conv else nn.Linear
        self.down = layer(width, bottleneck)
        self.up = layer(bottleneck, width)
        nn.init.normal_(self.up.weight, std=1e-3)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D] or [B, C, H, W]
        return x + self.up(torch.relu(self.down(x)))


class Adapted(nn.Module):
    """A frozen module (projection or CNN stage) followed by its adapter."""

    def __init__(self, base: nn.Module, adapter: Bottleneck) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


@register_method("adapter")
@dataclass
class Adapter(Method):
    module_names = ("adapter",)
    needs = (AdapterSites,)
    reduction: int = bounded(16, at_least=1)  # transformer bottleneck = D / 16 (Houlsby)
    cnn_reduction: int = bounded(8, at_least=1)  # CNN bottleneck = C / 8 (with the 2048 -> 1024 head: the paper's 3.5M)

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        freeze(backbone)
        conv = backbone.adapter_on_maps
        for parent, attr, width in backbone.adapter_sites():
            adapter = Bottleneck(width, width // self.reduction_for(backbone), conv)
            setattr(parent, attr, Adapted(getattr(parent, attr), adapter))
        return backbone

    def reduction_for(self, backbone: Backbone) -> int:
        return self.cnn_reduction if backbone.adapter_on_maps else self.reduction

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """One bottleneck Down(C -> b) + Up(b -> C) per site the backbone declares (docs/methods.md §3.4):
        a transformer's two per layer at C = D, b = D / 16; a CNN's one per stage at C = C_k, b = C_k / 8."""
        return sum(bottleneck_params(width, width // self.reduction_for(backbone))
                   for _, _, width in backbone.adapter_sites())


def bottleneck_params(width: int, bottleneck: int) -> int:
    return linear_params(width, bottleneck) + linear_params(bottleneck, width)
