"""Visual question answering as multi-label classification over an answer vocabulary (VQAv2, GQA).

The joint transformer's first token ([CLS]) feeds LXMERT's answer head: Linear(D, 2D) -> GELU ->
LayerNorm -> Linear(2D, answers). Loss: binary cross-entropy against soft scores
(min(#annotators who gave the answer / 3, 1)), times the number of answers, as LXMERT and CLIP-ViL do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .base import Recipe, Task, TaskModel, Tower, register_task


class AnswerHead(nn.Module):
    def __init__(self, width: int, answers: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.LayerNorm(2 * width), nn.Linear(2 * width, answers)
        )

    def forward(self, cls: torch.Tensor) -> torch.Tensor:  # [B, D] -> [B, answers]
        return self.net(cls)


class VQAModel(TaskModel):
    def __init__(self, towers: dict[str, Tower], task: VQA) -> None:
        super().__init__()
        (name, tower), = towers.items()
        self.name = name
        self.towers = nn.ModuleDict({name: tower.module})
        self.heads = nn.ModuleDict({name: AnswerHead(tower.width, task.num_answers)})
        self.tuned = (name,) if tower.tuned else ()

    def logits(self, batch: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        out = self.towers[self.name](batch[self.name])
        return self.heads[self.name](out.last[:, 0])  # [B, answers]

    def forward(self, batch: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        logits = self.logits(batch)
        scores = batch["targets"]["scores"]  # [B, answers], soft scores in [0, 1]
        return F.binary_cross_entropy_with_logits(logits, scores) * logits.shape[1]


@register_task("vqa")
@dataclass
class VQA(Task):
    """VQAv2 on a joint cross-modal transformer (CLIP-ViL recipe)."""

    recipe = Recipe(lr=5e-4, weight_decay=0.01, grad_clip=1.0)  # CLIP-ViL VQA: AdamW, warm-up 5%, clip 1.0
    tower_count = 1
    num_answers: int = 3129  # VQAv2 answers seen at least 9 times (LXMERT's vocabulary)
    hidden_dim: int = 768  # width side methods project to: the joint transformer's width

    @property
    def out_dim(self) -> int:
        return self.hidden_dim

    def build(self, towers: dict[str, Tower]) -> VQAModel:
        return VQAModel(towers, self)

    def example_targets(self, batch: int) -> dict[str, torch.Tensor]:
        return {"scores": torch.rand(batch, self.num_answers)}


@register_task("gqa")
@dataclass
class GQA(VQA):
    """GQA compositional question answering on the same model (CLIP-ViL recipe, lower learning rate)."""

    recipe = Recipe(lr=1e-4, weight_decay=0.01, grad_clip=1.0)
    num_answers: int = 1842  # LXMERT's GQA answer vocabulary
