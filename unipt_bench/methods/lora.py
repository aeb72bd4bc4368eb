"""LoRA (Hu et al. 2022, arXiv 2106.09685) through peft: low-rank updates on the query and value projections.

Only the low-rank factors train; gradients flow back through the whole backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from ..backbones.base import Backbone, LoraTargets
from ..configurable import bounded
from .base import Method, freeze, register_method


@register_method("lora")
@dataclass
class LoRA(Method):
    module_names = ("lora_A", "lora_B")
    needs = (LoraTargets,)
    rank: int = bounded(8, at_least=1)
    alpha: int = bounded(16, at_least=1)
    dropout: float = bounded(0.0, at_least=0, below=1)

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        freeze(backbone)
        root, targets = backbone.lora_targets()
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets)
        inject_adapter_in_model(config, root)
        for name, p in backbone.named_parameters():
            p.requires_grad_("lora_" in name)
        return backbone

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """A (r x in) and B (out x r) on every targeted projection: r (in + out) each; on the query and value
        projections of L layers of width D, L * 2 * r (D + D) (docs/methods.md §3.5)."""
        root, targets = backbone.lora_targets()
        return sum(self.rank * (m.in_features + m.out_features) for name, m in root.named_modules()
                   if isinstance(m, nn.Linear) and name.rpartition(".")[2] in targets)
