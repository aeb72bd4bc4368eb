"""BitFit (Ben Zaken et al. 2022, arXiv 2106.10199): only the backbone's bias terms train.

Transformer: every bias (projections and LayerNorms); CNN: the BatchNorm biases (its convs have none).
Backpropagation still runs through the whole backbone, so activations are kept as in full tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..backbones.base import Backbone
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
        """The backbone's bias vectors (docs/methods.md §3.3)."""
        return bias_count(backbone)


def is_bias(name: str) -> bool:
    """A parameter path whose leaf is a bias (`bias`, or a GRU's `bias_ih_l0` and the like)."""
    return name.rsplit(".", 1)[-1].startswith("bias")


def bias_count(backbone: Backbone) -> int:
    """Bias parameters of a backbone, by its kind (docs/methods.md §3.3).

    Transformer and joint: per layer q, k, v, o, two LayerNorms and the FFN's two projections,
    L (7 D + I), plus the biases outside the layers as built (embedding or final LayerNorms, a patch
    projection, the joint model's visual projection). CNN: one per BatchNorm channel (its convs have
    none). Bi-GRU: b_ih and b_hh of 3 gates in both directions, 12 H. Encoder-decoder: its CNN and
    its text encoder, the input projection (D), the text resizer's Linear and LayerNorm (2 D),
    L encoder layers (7 D + F), L decoder layers (12 D + F: two attentions, three LayerNorms) and the
    decoder norm (D).
    """
    if backbone.kind == "cnn":
        return sum(m.num_features for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
    if backbone.kind == "rnn":
        return 12 * backbone.width
    if backbone.kind == "encdec":
        d, f, layers = backbone.width, backbone.ffn, len(backbone.encoder)
        return (bias_count(backbone.vision) + bias_count(backbone.text) + 3 * d
                + layers * (7 * d + f) + layers * (12 * d + f) + d)
    d, ffn = backbone.width, backbone.ffn
    in_layers = {id(p) for block in backbone.blocks() for p in block.parameters()}
    outside = sum(p.numel() for name, p in backbone.named_parameters() if is_bias(name) and id(p) not in in_layers)
    return backbone.num_layers * (7 * d + ffn) + outside
