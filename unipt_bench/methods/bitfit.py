"""BitFit (Ben Zaken et al. 2022, arXiv 2106.10199): only the backbone's bias terms train.

Transformer: every bias (projections and LayerNorms); CNN: the BatchNorm biases (its convs have none).
Backpropagation still runs through the whole backbone, so activations are kept as in full tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..backbones.base import Backbone
from ..errors import NotApplicable
from .base import TOKEN_KINDS, Method, freeze, register_method


@register_method("bitfit")
@dataclass
class BitFit(Method):
    kinds = TOKEN_KINDS | {"cnn", "rnn", "encdec"}

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        freeze(backbone)
        biases = [p for name, p in backbone.named_parameters() if name.rsplit(".", 1)[-1].startswith("bias")]
        if not biases:
            raise NotApplicable("bitfit: the backbone has no bias terms")
        for p in biases:
            p.requires_grad_(True)
        return backbone
