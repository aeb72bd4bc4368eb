"""LoRA-FA (Zhang et al. 2023, arXiv 2308.03303): LoRA with the down-projection A frozen, PEFT's LoRA-FA optimizer.

With A frozen, backpropagation keeps only the r-wide product A x of each targeted projection instead of
its full input x; the optimizer projects B's gradient (PEFT's `create_lorafa_optimizer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import peft
import torch
from peft import LoraConfig
from peft.optimizers import create_lorafa_optimizer
from peft.optimizers.lorafa import LoraFAOptimizer
from torch import nn

from ..backbones.base import Backbone
from .base import register_method
from .lora import LoRA
from .peft_tuners import apply_peft, plain


@register_method("lora-fa")
@dataclass
class LoraFA(LoRA):
    """LoRA's options (rank, alpha, dropout) and targets; A frozen, PEFT's LoRA-FA optimizer."""

    def __post_init__(self) -> None:
        self.tuned: list[peft.PeftModel] = []  # one per tuned tower, for the optimizer

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        _, targets = backbone.lora_targets()
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets)
        tuned = apply_peft(backbone, config)
        for name, p in tuned.named_parameters():
            if "lora_A" in name:
                p.requires_grad_(False)  # frozen A: what LoRA-FA's optimizer also does
        self.tuned.append(tuned)
        return backbone

    def optimizer(self, model: nn.Module, lr: float, betas: tuple[float, float],
                  weight_decay: float) -> torch.optim.Optimizer | None:
        """PEFT's LoRA-FA optimizer per tuned tower (its names prefixed per tower: the state is keyed by name),
        plus one group (plain AdamW steps, as LoraFAOptimizer takes non-LoRA parameters) for the task heads."""
        groups = []
        for k, tuned in enumerate(self.tuned):
            group = create_lorafa_optimizer(tuned, self.rank, self.alpha, lr, weight_decay).param_groups[0]
            groups.append({**group, "betas": betas, "names": [f"tower{k}.{n}" for n in group["names"]]})
        inside = {id(p) for tuned in self.tuned for p in tuned.parameters()}
        rest = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in inside]
        groups.append({"params": [p for _, p in rest], "names": [n for n, _ in rest], "lr": lr, "betas": betas,
                       "scaling_factors": [None] * len(rest), "weight_decay": weight_decay})
        return LoraFAOptimizer(groups)

    def recorded(self) -> dict[str, Any]:
        configs = [plain(t.peft_config["default"].to_dict()) for t in self.tuned]
        return {"optimizer": "LoraFAOptimizer (PEFT create_lorafa_optimizer)",
                "peft": {"version": peft.__version__, "type": "LORA", "configs": configs}}

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """Only B (out x r) trains on every targeted projection: on the query and value projections of L layers
        of width D, L * 2 * r D (docs/methods.md)."""
        root, targets = backbone.lora_targets()
        return sum(self.rank * m.out_features for name, m in root.named_modules()
                   if isinstance(m, nn.Linear) and name.rpartition(".")[2] in targets)
