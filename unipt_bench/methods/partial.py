"""Partial tuning: the backbone is frozen; only the task head (and optionally the last blocks) train.

The lower bound of Tables 1, 2 and 5: gradients stop at the backbone output.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..backbones.base import Backbone, Blocks
from ..configurable import bounded
from ..errors import UserError
from .base import Method, freeze, register_method


@register_method("partial")
@dataclass
class Partial(Method):
    needs = (Blocks,)
    unfreeze_last: int = bounded(0, at_least=0)  # also train this many final blocks (layers or CNN stages)

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        freeze(backbone)
        for block in self.unfrozen_blocks(backbone):
            for p in block.parameters():
                p.requires_grad_(True)
        return backbone

    def unfrozen_blocks(self, backbone: Backbone) -> list[nn.Module]:
        """The last `unfreeze_last` of the backbone's blocks (none by default)."""
        blocks = backbone.blocks()
        if not 0 <= self.unfreeze_last <= len(blocks):
            raise UserError(f"partial: unfreeze_last={self.unfreeze_last} but the backbone has {len(blocks)} blocks")
        return blocks[len(blocks) - self.unfreeze_last :]

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """The parameters of the last `unfreeze_last` blocks: 0 by default (docs/methods.md §3.2)."""
        return sum(p.numel() for block in self.unfrozen_blocks(backbone) for p in block.parameters())
