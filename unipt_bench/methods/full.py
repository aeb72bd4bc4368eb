"""Full fine-tuning: every backbone parameter trains (the upper bound in memory)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..backbones.base import Backbone
from .base import Method, register_method


@register_method("full")
@dataclass
class Full(Method):
    def refusal(self, backbone: Backbone) -> str:
        return super().refusal(backbone) or ("" if any(True for _ in backbone.parameters())
                                             else "full: the backbone has no parameters to tune")

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        for p in backbone.parameters():
            p.requires_grad_(True)
        return backbone

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """Every backbone parameter (docs/methods.md §3.1)."""
        return sum(p.numel() for p in backbone.parameters())
