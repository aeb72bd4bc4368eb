"""Referring-expression grounding with MDETR's heads and loss (Kamath et al., ICCV 2021, arXiv 2104.12763).

Every decoder output (the final one and the auxiliary ones) goes through a soft-token head (which text
tokens a query refers to, or "no object"), a 3-layer box MLP and a contrastive-alignment projection. Each
output is matched to the referred box on its own (Hungarian matching, scipy's `linear_sum_assignment`, on
class + L1 + GIoU costs), then trained with soft-token cross entropy, L1 and GIoU on the matched query and
the box-token contrastive alignment loss (docs/recipes/grounding.md gives the equations).

On fake tensors (estimates) the matching has no values to read: the referred box goes to query 0 instead.
The matching holds no memory of its own (its costs are computed either way, then freed), so estimates and
real runs trace the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch._subclasses.fake_tensor import is_fake
from torch.nn import functional as F

from ..configurable import bounded
from .base import Recipe, Task, TaskModel, Tower, register_task
from .boxes import corners, generalized_iou

TOKEN_CLASSES = 256  # 255 text-token positions + "no object": MDETR/models/mdetr.py:724 (num_classes = 255)


class BoxMLP(nn.Sequential):
    def __init__(self, width: int) -> None:
        super().__init__(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))


class GroundingHead(nn.Module):
    """Soft-token logits, boxes, and the two contrastive-alignment projections (queries and text tokens)."""

    def __init__(self, width: int, text_width: int, align_dim: int) -> None:
        super().__init__()
        self.tokens = nn.Linear(width, TOKEN_CLASSES)
        self.boxes = BoxMLP(width)
        self.align_query = nn.Linear(width, align_dim)
        self.align_text = nn.Linear(text_width, align_dim)

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [B, Q, D]
        return self.tokens(state), self.boxes(state).sigmoid()  # [B, Q, 256], [B, Q, 4] (cx, cy, w, h)


def hungarian(cost: torch.Tensor) -> torch.Tensor:
    """For costs [B, Q] of each query against its sample's one referred box: the matched query per sample [B].

    Real tensors: scipy's assignment on the detached costs, on the CPU (MDETR/models/matcher.py:79-83). Fake
    tensors have no values: query 0, through the same tensor creation, so both trace the same bytes.
    """
    if is_fake(cost) or cost.device.type == "meta":
        picked = [0] * cost.shape[0]
    else:
        costs = cost.detach().cpu().numpy()
        picked = [int(linear_sum_assignment(c[:, None])[0][0]) for c in costs]
    return torch.tensor(picked, dtype=torch.long, device=cost.device)


class GroundingModel(TaskModel):
    def __init__(self, towers: dict[str, Tower], task: Grounding) -> None:
        super().__init__()
        (name, tower), = towers.items()
        self.name, self.task = name, task
        self.towers = nn.ModuleDict({name: tower.module})
        self.heads = nn.ModuleDict({name: GroundingHead(tower.width, tower.backbone.width, task.align_dim)})
        self.tuned = (name,) if tower.tuned else ()

    def match(self, logits: torch.Tensor, boxes: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """The query matched to each sample's referred box [B] (MDETR/models/matcher.py:57-83)."""
        task = self.task
        with torch.no_grad():
            prob = logits.softmax(-1)  # [B, Q, 256]
            cost_class = -(prob * targets["positive"][:, None, :]).sum(-1)  # [B, Q]
            true = targets["boxes"][:, None, :]  # [B, 1, 4]
            cost_bbox = (boxes - true).abs().sum(-1)  # L1 (torch.cdist with p = 1)
            cost_giou = -generalized_iou(corners(boxes), corners(true))
            cost = task.cost_bbox * cost_bbox + task.cost_class * cost_class + task.cost_giou * cost_giou
        return hungarian(cost)

    def layer_loss(self, state: torch.Tensor, tokens: torch.Tensor, text_mask: torch.Tensor,
                   targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """MDETR's SetCriterion on one decoder output (MDETR/models/mdetr.py:475-614), weighted and summed."""
        task, head = self.task, self.heads[self.name]
        logits, boxes = head(state)  # [B, Q, 256], [B, Q, 4]
        b, q, _ = logits.shape
        num_boxes = float(max(b, 1))  # one referred box per expression
        query = self.match(logits, boxes, targets)  # [B]
        rows = torch.arange(b, device=logits.device)
        # soft-token cross entropy: the matched query against the referred tokens, the rest against "no object"
        target_sim = torch.zeros_like(logits)
        target_sim[:, :, -1] = 1
        target_sim[rows, query] = targets["positive"]
        weight = torch.full((b, q), task.no_object_weight, device=logits.device)
        weight[rows, query] = 1.0
        loss_ce = (-(logits.log_softmax(-1) * target_sim).sum(-1) * weight).sum() / num_boxes
        # boxes of the matched queries
        pred, true = boxes[rows, query], targets["boxes"]  # [B, 4]
        loss_l1 = (pred - true).abs().sum() / num_boxes
        loss_giou = (1 - generalized_iou(corners(pred), corners(true))).sum() / num_boxes
        # contrastive alignment between the matched query and the referred text tokens
        queries = F.normalize(head.align_query(state), dim=-1)  # [B, Q, d]
        sim = queries @ tokens.transpose(1, 2) / task.temperature  # [B, Q, T]
        positive = torch.zeros_like(sim, dtype=torch.bool)
        positive[rows, query] = targets["positive"][:, : sim.shape[2]] > 0
        pos_logits = -sim.masked_fill(~positive, 0)
        box_neg = sim.masked_fill(~text_mask[:, None, :].bool(), float("-inf")).logsumexp(2)  # [B, Q]: padding out
        box_to_token = (pos_logits.sum(2) / (positive.sum(2) + 1e-6) + box_neg).masked_fill(~positive.any(2), 0).sum()
        token_to_box = (pos_logits.sum(1) / (positive.sum(1) + 1e-6) + sim.logsumexp(1)).masked_fill(
            ~positive.any(1), 0).sum()
        loss_align = (box_to_token + token_to_box) / 2 / num_boxes
        return (task.ce_weight * loss_ce + task.l1_weight * loss_l1 + task.giou_weight * loss_giou
                + task.align_weight * loss_align)

    def forward(self, batch: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        inputs = batch[self.name]
        out = self.towers[self.name](inputs)
        text_mask = inputs["attention_mask"]  # [B, T]
        text = out.hidden[-1][:, -text_mask.shape[1]:]  # [B, T, D]: the encoder's text tokens (MDETR's text_memory)
        tokens = F.normalize(self.heads[self.name].align_text(text), dim=-1)  # [B, T, d]
        total = out.last.new_zeros(())
        for state in out.predictions:  # auxiliary outputs and the final one, each matched on its own
            total = total + self.layer_loss(state, tokens, text_mask, batch["targets"])
        return total

    @torch.no_grad()
    def predict(self, batch: dict[str, dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-1 box [B, 4] (cx, cy, w, h) and its score [B]: the final output's query with the highest
        1 - P(no object) (MDETR/models/postprocessors.py:136-141)."""
        out = self.towers[self.name](batch[self.name])
        logits, boxes = self.heads[self.name](out.predictions[-1])
        score = 1 - logits.softmax(-1)[..., -1]  # [B, Q]
        best = score.argmax(dim=1)
        rows = torch.arange(boxes.shape[0], device=boxes.device)
        return boxes[rows, best], score[rows, best]


@register_task("grounding")
@dataclass
class Grounding(Task):
    """Referring-expression grounding (RefCOCO/+/g) on an encoder-decoder (MDETR recipe)."""

    recipe = Recipe(lr=5e-4, weight_decay=1e-4, grad_clip=0.1)  # MDETR/train_refcoco.sh:1 (--lr), main.py:77, :87
    tower_count = 1
    hidden_dim: int = bounded(256, at_least=1)  # width side methods project to: the transformer's width
    no_object_weight: float = bounded(0.1, at_least=0)  # MDETR/main.py:257 eos_coef
    ce_weight: float = bounded(1.0, at_least=0)  # MDETR/main.py:249 ce_loss_coef
    l1_weight: float = bounded(5.0, at_least=0)  # MDETR/main.py:252 bbox_loss_coef
    giou_weight: float = bounded(2.0, at_least=0)  # MDETR/main.py:253 giou_loss_coef
    align_weight: float = bounded(1.0, at_least=0)  # MDETR/main.py:262 contrastive_align_loss_coef
    align_dim: int = bounded(64, at_least=1)  # MDETR/main.py:221 contrastive_loss_hdim
    temperature: float = bounded(0.07, above=0)  # MDETR/main.py:226 temperature_NCE
    cost_class: float = bounded(1.0, at_least=0)  # MDETR/main.py:232 set_cost_class
    cost_bbox: float = bounded(5.0, at_least=0)  # MDETR/main.py:238 set_cost_bbox
    cost_giou: float = bounded(2.0, at_least=0)  # MDETR/main.py:244 set_cost_giou

    @property
    def out_dim(self) -> int:
        return self.hidden_dim

    def build(self, towers: dict[str, Tower]) -> GroundingModel:
        return GroundingModel(towers, self)

    def example_targets(self, batch: int) -> dict[str, torch.Tensor]:
        """One referred box per expression and its tokens (positions 1-2), as the data's batches give them."""
        positive = torch.zeros(batch, TOKEN_CLASSES)
        positive[:, 1:3] = 0.5
        return {"boxes": torch.rand(batch, 4) * 0.5 + 0.25, "positive": positive}

    def data_missing(self, spec: Any, data_root: Path) -> str:
        from .grounding_data import missing

        return missing(spec, data_root)

    def read_data(self, spec: Any, data_root: Path, seed: int, modalities: dict[str, str]) -> Any:
        from .grounding_data import GroundingData

        return GroundingData(spec, data_root, seed, modalities)
