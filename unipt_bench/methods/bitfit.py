"""BitFit (Ben Zaken et al. 2022, arXiv 2106.10199): only the backbone's bias terms train.

Transformer: every bias (projections and LayerNorms); CNN: the BatchNorm biases (its convs have none).
Each backbone family states its count in closed form (`bias_count`, the Biases capability).
Backpropagation still runs through the whole backbone, so activations are kept as in full tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..backbones.base import Backbone, Biases, is_bias
from .base import Method, freeze, register_method


@register_method("bitfit")
@dataclass
class BitFit(Method):
    def refusal(self, backbone: Backbone) -> str:
        return super().refusal(backbone) or ("" if any(is_bias(name) for name, _ in backbone.named_parameters())
                                             else "bitfit: the backbone has no bias terms")

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        freeze(backbone)
        for name, p in backbone.named_parameters():
            p.requires_grad_(is_bias(name))
        return backbone

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """The backbone's bias vectors (docs/methods.md §3.3), as its family states their count (Biases)."""
        if not isinstance(backbone, Biases):
            raise NotImplementedError(f"bitfit's closed form is the backbone's bias count: define bias_count() on "
                                      f"{type(backbone).__name__} (Biases, backbones/base.py)")
        return backbone.bias_count()
