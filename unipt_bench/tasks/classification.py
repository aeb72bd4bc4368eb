"""Plain classification on one tower: its tokens pooled, one linear layer to the classes, cross-entropy.

The smallest head a single backbone can be trained with, so that the memory of a PETL method on a
user's own model (`compare`) is measured without another tower or a task-specific decoder. A CNN's
tokens are its last stage's grid cells; a transformer's its hidden states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..configurable import bounded
from ..errors import UserError
from .base import Recipe, Task, TaskModel, Tower, register_task
from .pooling import POOLINGS, make_pooling


class ClassifierHead(nn.Module):
    """Tokens [B, N, width] -> pooled [B, width] -> logits [B, classes]."""

    def __init__(self, width: int, classes: int, pooling: str) -> None:
        super().__init__()
        self.pool = make_pooling(pooling)
        self.fc = nn.Linear(width, classes)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.fc(self.pool(tokens, mask))  # [B, classes]


class ClassificationModel(TaskModel):
    def __init__(self, towers: dict[str, Tower], task: Classification) -> None:
        super().__init__()
        (name, tower), = towers.items()
        self.name = name
        self.towers = nn.ModuleDict({name: tower.module})
        self.heads = nn.ModuleDict({name: ClassifierHead(tower.width, task.num_classes, tower.pooling or task.pooling)})
        self.tuned = (name,) if tower.tuned else ()

    def forward(self, batch: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        out = self.towers[self.name](batch[self.name])
        if out.frames > 1:  # a video: frames run as rows; their tokens join one sequence per clip
            out_tokens = out.last.reshape(-1, out.frames * out.last.shape[1], out.last.shape[2])  # [B, F*N, D]
            logits = self.heads[self.name](out_tokens, None)
        else:
            logits = self.heads[self.name](out.last, out.mask)  # [B, classes]
        return F.cross_entropy(logits, batch["targets"]["labels"])


@register_task("classification")
@dataclass
class Classification(Task):
    """One tower, a linear classifier on its pooled tokens, cross-entropy (AdamW at a fine-tuning rate)."""

    recipe = Recipe(lr=1e-4, weight_decay=0.01, grad_clip=1.0)  # a common fine-tuning recipe, no paper's
    tower_count = 1
    num_classes: int = bounded(1000, at_least=2)
    hidden_dim: int = bounded(768, at_least=1)  # width side methods project to (set it to the backbone's width)
    pooling: str = "mean"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise UserError(f"{self.name}: pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")

    @property
    def out_dim(self) -> int:
        return self.hidden_dim

    def build(self, towers: dict[str, Tower]) -> ClassificationModel:
        return ClassificationModel(towers, self)

    def example_targets(self, batch: int) -> dict[str, torch.Tensor]:
        return {"labels": torch.randint(0, self.num_classes, (batch,))}  # [B]
