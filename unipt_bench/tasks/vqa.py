"""Visual question answering as multi-label classification over an answer vocabulary (VQAv2, GQA, easy-vqa).

One joint tower (CLIP-ViL): its first token ([CLS]) feeds LXMERT's answer head, Linear(D, 2D) -> GELU
-> LayerNorm -> Linear(2D, answers). Two towers (a question encoder and an image encoder): each is
pooled and projected to the hidden width, and their product feeds the same head (late fusion).
Loss: binary cross-entropy against soft scores (min(#annotators who gave the answer / 3, 1)), times
the number of answers, as LXMERT does, or times a fixed `loss_scale` (CLIP-ViL's scripts pass 500).
The joint tower's grid features come from a frozen extractor (data/grid_features.py), set by the task
options below; docs/recipes/vqa.md has the recipes, the features format and the accuracy equations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..backbones.base import BackboneOutput
from ..configurable import bounded
from ..errors import UserError
from .base import Recipe, Task, TaskModel, Tower, register_task
from .pooling import make_pooling


class AnswerHead(nn.Module):
    def __init__(self, width: int, answers: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.LayerNorm(2 * width), nn.Linear(2 * width, answers)
        )

    def forward(self, cls: torch.Tensor) -> torch.Tensor:  # [B, D] -> [B, answers]
        return self.net(cls)


class PooledProjection(nn.Module):
    """One tower of a late-fusion model: pool its tokens, project to the fusion width."""

    def __init__(self, width: int, hidden: int, pooling: str) -> None:
        super().__init__()
        self.pool = make_pooling(pooling)
        self.proj = nn.Linear(width, hidden)

    def forward(self, out: BackboneOutput) -> torch.Tensor:
        return self.proj(self.pool(out.last, out.mask))  # [B, hidden]


class VQAModel(TaskModel):
    def __init__(self, towers: dict[str, Tower], task: VQA) -> None:
        super().__init__()
        self.towers = nn.ModuleDict({name: t.module for name, t in towers.items()})
        self.tuned = tuple(name for name, t in towers.items() if t.tuned)
        self.loss_scale = task.loss_scale
        if len(towers) == 1:  # a joint transformer: its [CLS] token answers
            (name, tower), = towers.items()
            self.heads = nn.ModuleDict({"answer": AnswerHead(tower.width, task.num_answers)})
        else:
            hidden = task.hidden_dim
            self.heads = nn.ModuleDict(
                {name: PooledProjection(t.width, hidden, t.pooling or "mean") for name, t in towers.items()}
            )
            self.heads["answer"] = AnswerHead(hidden, task.num_answers)

    def logits(self, batch: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        outs = {name: tower(batch[name]) for name, tower in self.towers.items()}
        if len(outs) == 1:
            (out,) = outs.values()
            return self.heads["answer"](out.last[:, 0])  # [B, answers]
        fused = math.prod(self.heads[name](out) for name, out in outs.items())  # [B, hidden]
        return self.heads["answer"](fused)

    def forward(self, batch: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        logits = self.logits(batch)
        scores = batch["targets"]["scores"]  # [B, answers], soft scores in [0, 1]
        # mean BCE x answers (LXMERT, CLIP-ViL src/tasks/vqa.py:297), or x loss_scale (src/tasks/vqa.py:294-295)
        return F.binary_cross_entropy_with_logits(logits, scores) * (self.loss_scale or logits.shape[1])


@register_task("vqa")
@dataclass
class VQA(Task):
    """VQAv2 on a joint cross-modal transformer (CLIP-ViL recipe), or a question and an image tower."""

    recipe = Recipe(lr=5e-4, weight_decay=0.01, grad_clip=1.0)  # CLIP-ViL VQA: AdamW, warm-up 5%, clip 1.0
    num_answers: int = bounded(3129, at_least=1)  # VQAv2 answers seen at least 9 times (LXMERT's vocabulary)
    hidden_dim: int = bounded(768, at_least=1)  # width side methods project to (the joint transformer's), and the fusion width
    loss_scale: float = bounded(0.0, at_least=0)  # the loss is mean BCE x this; 0: x the number of answers
    # answers that are the label (VQAv2: multiple_choice_answer) of at least this many training questions
    min_answer_count: int = bounded(9, at_least=1)  # 9: bottom-up-attention-vqa tools/compute_softscore.py:241
    # a joint tower's grid features (data/grid_features.py): a features folder you have (absolute, or under the
    # dataset's folder), else extracted once by `extractor` and cached under <dataset>/grid_features/
    features: str = ""
    extractor: str = "resnet50x4_clip"  # timm name; CLIP-ViL: CLIP RN50x4 (scripts/train_side_vqa.sh:40)
    extractor_weights: str = "random"  # a checkpoint file timm loads; "random": untrained (results say so)
    extractor_stage: int = bounded(-1, at_least=-5, at_most=4)  # timm feature_info index; -1: the last (clip/model.py:212-214)
    image_min: int = bounded(384, at_least=1)  # shorter image side (CLIP-ViL src/param.py:184)
    image_max: int = bounded(640, at_least=1)  # longer side cap and padded canvas (CLIP-ViL src/param.py:185)

    def check_towers(self, count: int) -> None:
        if count not in (1, 2):
            raise UserError(f"{self.name}: one joint tower or a question and an image tower, not {count}")

    @property
    def out_dim(self) -> int:
        return self.hidden_dim

    def build(self, towers: dict[str, Tower]) -> VQAModel:
        return VQAModel(towers, self)

    def data_missing(self, spec: Any, data_root: Path) -> str:
        from .vqa_data import missing

        return missing(spec, data_root, self)

    def read_data(self, spec: Any, data_root: Path, seed: int, modalities: dict[str, str]) -> Any:
        from .vqa_data import VQAData

        return VQAData(spec, data_root, seed, modalities, self)

    def example_targets(self, batch: int) -> dict[str, torch.Tensor]:
        return {"scores": torch.rand(batch, self.num_answers)}


@register_task("gqa")
@dataclass
class GQA(VQA):
    """GQA compositional question answering on the same model (CLIP-ViL recipe, lower learning rate)."""

    recipe = Recipe(lr=1e-4, weight_decay=0.01, grad_clip=1.0)
    num_answers: int = 1842  # LXMERT's GQA answer vocabulary
    min_answer_count: int = 1  # every training answer (LXMERT ships GQA's vocabulary without the script)
