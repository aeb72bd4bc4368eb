"""Partial tuning: the backbone is frozen; only the task head (and optionally the last blocks) train.

The lower bound of Tables 1, 2 and 5: gradients stop at the backbone output.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..backbones.base import Backbone
from ..errors import UserError
from .base import TOKEN_KINDS, Method, freeze, register_method


@register_method("partial")
@dataclass
class Partial(Method):
    kinds = TOKEN_KINDS | {"cnn", "rnn", "encdec"}
    unfreeze_last: int = 0  # also train this many final blocks (layers or CNN stages)

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        freeze(backbone)
        blocks = backbone.blocks()
        if not 0 <= self.unfreeze_last <= len(blocks):
            raise UserError(f"partial: unfreeze_last={self.unfreeze_last} but the backbone has {len(blocks)} blocks")
        for block in blocks[len(blocks) - self.unfreeze_last :]:
            for p in block.parameters():
                p.requires_grad_(True)
        return backbone
