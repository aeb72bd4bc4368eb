"""Full fine-tuning: every backbone parameter trains (the upper bound in memory)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..backbones.base import Backbone
from .base import TOKEN_KINDS, Method, register_method


@register_method("full")
@dataclass
class Full(Method):
    kinds = TOKEN_KINDS | {"cnn", "rnn", "encdec"}

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        for p in backbone.parameters():
            p.requires_grad_(True)
        return backbone
