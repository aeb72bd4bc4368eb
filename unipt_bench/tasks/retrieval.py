"""Cross-modal retrieval heads and losses: VSE-infinity for images (Chen et al., CVPR 2021, arXiv 2011.11486)
and CLIP4Clip's mean-pooled frames for video (Luo et al. 2022, arXiv 2104.08860).

Each tower's tokens -> pooling -> projection to E (only when the width differs; plus VSE-infinity's
two-layer MLP branch on a CNN) -> mean over a video's frames -> L2-normalised embedding [B, E].
Loss: hinge triplet with hardest negatives (VSE++), or symmetric InfoNCE (CLIP4Clip, for video with its
learnable temperature: docs/recipes/video.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..backbones.base import BackboneOutput
from ..configurable import bounded
from ..errors import UserError
from ..ops import l2norm
from .base import Recipe, Task, TaskModel, Tower, register_task
from .pooling import POOLINGS, make_pooling


class TwoLayerMLP(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Linear over tokens (VSE-infinity's MLP for backbone image features)."""

    def __init__(self, width: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, width]
        b, n, _ = x.shape
        h = self.bn(self.fc1(x).reshape(b * n, -1)).reshape(b, n, -1)
        return self.fc2(torch.relu(h))  # [B, N, out_dim]


class EmbeddingHead(nn.Module):
    """Tokens of one tower -> one L2-normalised embedding per sample.

    Set pooling (GPO, mean) runs on projected tokens, as VSE-infinity does; a single-token pick (CLS,
    EOT) is projected after picking, as CLIP does.
    """

    def __init__(self, width: int, embed_dim: int, pooling: str, mlp: bool, normalise_frames: bool = False) -> None:
        super().__init__()
        self.normalise_frames = normalise_frames  # L2-normalise each frame before the mean (CLIP4Clip meanP)
        self.proj = nn.Linear(width, embed_dim) if width != embed_dim or mlp else nn.Identity()
        self.mlp = TwoLayerMLP(width, embed_dim // 2, embed_dim) if mlp else None
        self.pool = make_pooling(pooling)
        self.pick_first = pooling in ("cls", "eot")

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) if self.mlp is None else self.proj(x) + self.mlp(x)

    def forward(self, out: BackboneOutput) -> torch.Tensor:
        if self.pick_first:
            pooled = self.project(self.pool(out.last, out.mask)[:, None, :])[:, 0]  # [B*F, E]
        else:
            pooled = self.pool(self.project(out.last), out.mask)  # [B*F, E]
        if out.frames > 1:
            if self.normalise_frames:
                pooled = l2norm(pooled)
            pooled = pooled.view(-1, out.frames, pooled.shape[-1]).mean(dim=1)  # mean over frames: [B, E]
        return l2norm(pooled)


def hinge_triplet_loss(a: torch.Tensor, b: torch.Tensor, margin: float, hardest: bool) -> torch.Tensor:
    """VSE++ loss on embeddings a, b [B, E] where row i of each is a matching pair.

    Sums the hinge over negatives in both directions, or only the hardest negative per query.
    """
    scores = a @ b.t()  # [B, B]
    positive = scores.diag()  # [B]
    cost_b = (margin + scores - positive[:, None]).clamp(min=0)  # query a_i against negatives b_j
    cost_a = (margin + scores - positive[None, :]).clamp(min=0)  # query b_j against negatives a_i
    off_diagonal = ~torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    cost_b, cost_a = cost_b * off_diagonal, cost_a * off_diagonal
    if hardest:
        return cost_b.max(dim=1).values.sum() + cost_a.max(dim=0).values.sum()
    return cost_b.sum() + cost_a.sum()


def symmetric_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean of the row-wise and column-wise cross-entropy of logits [B, B] whose matches are on the diagonal."""
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def infonce_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric cross-entropy over the similarity matrix (CLIP4Clip), matches on the diagonal."""
    return symmetric_cross_entropy(a @ b.t() / temperature)  # [B, B]


class LogitScale(nn.Module):
    """CLIP's learnable temperature: s = exp(w), logits = s * cos; w starts at ln(1 / temperature) and is clamped
    to at most ln 100 before each use (CLIP4Clip clamps after each step: main_task_retrieval.py:294-298)."""

    def __init__(self, temperature: float, learnable: bool, max_scale: float = 100.0) -> None:
        super().__init__()
        # CLIP4Clip: a CLIP parameter (modules/module_clip.py:381), loaded from the checkpoint: ln 100 for ViT-B/32
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)), requires_grad=learnable)
        self.max_log = math.log(max_scale)  # CLIP4Clip/main_task_retrieval.py:296

    def forward(self) -> torch.Tensor:
        if self.training and self.log_scale.requires_grad:
            with torch.no_grad():
                self.log_scale.clamp_(max=self.max_log)  # the previous step's update, clamped as CLIP4Clip does
        return self.log_scale.clamp(max=self.max_log).exp()  # [] (clamped here too for a loaded or frozen value)


class RetrievalModel(TaskModel):
    def __init__(self, towers: dict[str, Tower], task: Retrieval) -> None:
        super().__init__()
        self.towers = nn.ModuleDict({name: t.module for name, t in towers.items()})
        self.heads = nn.ModuleDict(
            {
                name: EmbeddingHead(t.width, task.embed_dim, t.pooling or task.pooling, mlp=t.backbone.kind == "cnn",
                                    normalise_frames=task.normalise_frames)
                for name, t in towers.items()
            }
        )
        self.tuned = tuple(name for name, t in towers.items() if t.tuned)
        self.task = task

    def encode(self, name: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """One tower's L2-normalised embeddings [B, E]."""
        return self.heads[name](self.towers[name](inputs))

    def embed(self, batch: dict[str, dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        return [self.encode(name, batch[name]) for name in self.towers]

    def forward(self, batch: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        a, b = self.embed(batch)
        if "logit_scale" in self.heads:
            return symmetric_cross_entropy(self.heads["logit_scale"]() * (a @ b.t()))  # [B, B] logits
        if self.task.loss == "infonce":
            return infonce_loss(a, b, self.task.temperature)
        return hinge_triplet_loss(a, b, self.task.margin, self.task.hardest_negatives)


@register_task("retrieval")
@dataclass
class Retrieval(Task):
    """Image-text retrieval: two towers embedded into one space of width E (VSE-infinity recipe)."""

    recipe = Recipe(lr=5e-4, weight_decay=1e-4, grad_clip=2.0)  # VSE-infinity: AdamW, clip 2.0
    tower_count = 2
    normalise_frames: ClassVar[bool] = False  # video: whether each frame's embedding is normalised before the mean
    embed_dim: int = bounded(1024, at_least=1)
    pooling: str = "gpo"  # default for towers that do not set their own
    loss: str = "hinge"  # "hinge" (VSE++ triplet) or "infonce"
    margin: float = bounded(0.2, at_least=0)
    hardest_negatives: bool = True  # max-violation (the reference switches it on after epoch 1)
    temperature: float = bounded(0.01, above=0)  # InfoNCE: CLIP's logit scale of 100

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise UserError(f"{self.name}: pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.loss not in ("hinge", "infonce"):
            raise UserError(f"{self.name}: loss must be 'hinge' or 'infonce', got {self.loss!r}")

    @property
    def out_dim(self) -> int:
        return self.embed_dim

    def build(self, towers: dict[str, Tower]) -> RetrievalModel:
        return RetrievalModel(towers, self)

    def data_missing(self, spec: Any, data_root: Path) -> str:
        from .retrieval_data import missing

        return missing(spec, data_root)

    def read_data(self, spec: Any, data_root: Path, seed: int, modalities: dict[str, str]) -> Any:
        from .retrieval_data import RetrievalData

        return RetrievalData(spec, data_root, seed, modalities)


@register_task("video-retrieval")
@dataclass
class VideoRetrieval(Retrieval):
    """Video-text retrieval, CLIP4Clip meanP (Luo et al. 2022, arXiv 2104.08860): each frame's CLS embedding
    L2-normalised, averaged over frames and normalised again (CLIP4Clip/modules/modeling.py:413-415); symmetric
    InfoNCE with CLIP's learnable logit scale (LogitScale), a head parameter."""

    recipe = Recipe(lr=1e-4, weight_decay=0.2, grad_clip=1.0, betas=(0.9, 0.98))  # CLIP4Clip: Adam b2 0.98
    normalise_frames: ClassVar[bool] = True
    embed_dim: int = 512
    pooling: str = "cls"
    loss: str = "infonce"
    # initial temperature 1 / 100: the logit scale of pretrained CLIP ViT-B/32, which CLIP4Clip loads
    temperature: float = bounded(0.01, above=0)
    # CLIP4Clip trains the scale with CLIP's weights; UniPT's fork of it freezes everything but the side network,
    # the scale included (UniPT CLIP4Clip/main_task_retrieval.py:193-201): learn_temperature = false mirrors that
    learn_temperature: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss != "infonce":
            raise UserError(f"{self.name}: loss must be 'infonce' (CLIP4Clip), got {self.loss!r}")

    def build(self, towers: dict[str, Tower]) -> RetrievalModel:
        model = RetrievalModel(towers, self)
        model.heads["logit_scale"] = LogitScale(self.temperature, self.learn_temperature)
        return model

    def data_missing(self, spec: Any, data_root: Path) -> str:
        from .video_data import missing

        return missing(spec, data_root)

    def read_data(self, spec: Any, data_root: Path, seed: int, modalities: dict[str, str]) -> Any:
        from .video_data import VideoRetrievalData

        return VideoRetrievalData(spec, data_root, seed, modalities)
