"""LoRA (Hu et al. 2022, arXiv 2106.09685) through peft: low-rank updates on the query and value projections.

Only the low-rank factors train; gradients flow back through the whole backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from ..backbones.base import Backbone
from .base import Method, freeze, register_method


@register_method("lora")
@dataclass
class LoRA(Method):
    module_names = ("lora_A", "lora_B")
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        freeze(backbone)
        root, targets = backbone.lora_targets()
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets)
        inject_adapter_in_model(config, root)
        for name, p in backbone.named_parameters():
            p.requires_grad_("lora_" in name)
        return backbone
