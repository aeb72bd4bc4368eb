"""Referring-expression grounding with MDETR's heads (Kamath et al., ICCV 2021, arXiv 2104.12763).

Every decoder output (the final one and the auxiliary ones) goes through a soft-token head (which
text tokens a query refers to, plus "no object") and a 3-layer box MLP. The loss: soft-token cross
entropy, L1 and generalised IoU on the referred box. Simplification: the referred box is matched to
query 0 instead of by Hungarian matching (data-dependent, not traceable on fake tensors; the matching
itself holds no memory), and MDETR's contrastive-alignment loss is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..configurable import bounded
from .base import Recipe, Task, TaskModel, Tower, register_task

TOKEN_CLASSES = 256  # MDETR: 255 text-token positions + "no object"


class BoxMLP(nn.Sequential):
    def __init__(self, width: int) -> None:
        super().__init__(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))


class GroundingHead(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.tokens = nn.Linear(width, TOKEN_CLASSES)
        self.boxes = BoxMLP(width)

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [B, Q, D]
        return self.tokens(state), self.boxes(state).sigmoid()  # [B, Q, 256], [B, Q, 4] (cx, cy, w, h)


def corners(box: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = box.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def giou_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Mean (1 - generalised IoU) of corner boxes a, b [B, 4], without data-dependent indexing
    (torchvision's version masks by value, which fake tensors cannot trace)."""
    def area(box: torch.Tensor) -> torch.Tensor:
        return (box[:, 2:] - box[:, :2]).clamp(min=0).prod(dim=1)

    inter = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0).prod(dim=1)
    union = area(a) + area(b) - inter
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp(min=0).prod(dim=1)
    giou = inter / union.clamp(min=eps) - (hull - union) / hull.clamp(min=eps)
    return (1 - giou).mean()


class GroundingModel(TaskModel):
    def __init__(self, towers: dict[str, Tower], task: Grounding) -> None:
        super().__init__()
        (name, tower), = towers.items()
        self.name, self.task = name, task
        self.towers = nn.ModuleDict({name: tower.module})
        self.heads = nn.ModuleDict({name: GroundingHead(tower.width)})
        self.tuned = (name,) if tower.tuned else ()

    def forward(self, batch: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        out = self.towers[self.name](batch[self.name])
        targets = batch["targets"]
        total = out.last.new_zeros(())
        for state in out.predictions:  # auxiliary outputs and the final one
            logits, boxes = self.heads[self.name](state)
            b, q, _ = logits.shape
            classes = torch.full((b, q), TOKEN_CLASSES - 1, dtype=torch.long, device=logits.device)
            classes[:, 0] = targets["token"]  # query 0 carries the referred object
            weight = torch.ones(TOKEN_CLASSES, device=logits.device)
            weight[-1] = self.task.no_object_weight
            total = total + F.cross_entropy(logits.flatten(0, 1), classes.flatten(), weight=weight)
            pred, true = boxes[:, 0], targets["box"]  # [B, 4]
            total = total + self.task.l1_weight * F.l1_loss(pred, true)
            total = total + self.task.giou_weight * giou_loss(corners(pred), corners(true))
        return total


@register_task("grounding")
@dataclass
class Grounding(Task):
    """Referring-expression grounding (RefCOCO/+/g) on an encoder-decoder (MDETR recipe)."""

    recipe = Recipe(lr=5e-4, weight_decay=1e-4, grad_clip=0.1)  # MDETR fine-tuning: AdamW, clip 0.1
    tower_count = 1
    hidden_dim: int = bounded(256, at_least=1)  # width side methods project to: the transformer's width
    no_object_weight: float = bounded(0.1, at_least=0)
    l1_weight: float = bounded(5.0, at_least=0)
    giou_weight: float = bounded(2.0, at_least=0)

    @property
    def out_dim(self) -> int:
        return self.hidden_dim

    def build(self, towers: dict[str, Tower]) -> GroundingModel:
        return GroundingModel(towers, self)

    def example_targets(self, batch: int) -> dict[str, torch.Tensor]:
        return {"token": torch.randint(0, TOKEN_CLASSES - 1, (batch,)), "box": torch.rand(batch, 4) * 0.5 + 0.25}
