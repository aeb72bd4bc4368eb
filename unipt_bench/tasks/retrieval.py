"""Image-text retrieval with the VSE-infinity head (Chen et al., CVPR 2021, arXiv 2011.11486).

Each tower's tokens -> projection to E (only when the width differs; plus VSE-infinity's two-layer MLP
branch on a CNN) -> pooling (GPO or mean) -> L2-normalised embedding [B, E]. Loss: hinge triplet with
margin 0.2 and hardest negatives in the batch (VSE++).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbones.base import BackboneOutput
from ..errors import UserError
from ..ops import l2norm
from .base import Recipe, Task, TaskModel, Tower, register_task
from .pooling import make_pooling


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
    """Tokens of one tower -> one L2-normalised embedding per sample."""

    def __init__(self, width: int, embed_dim: int, pooling: str, mlp: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(width, embed_dim) if width != embed_dim or mlp else nn.Identity()
        self.mlp = TwoLayerMLP(width, embed_dim // 2, embed_dim) if mlp else None
        self.pool = make_pooling(pooling)

    def forward(self, out: BackboneOutput) -> torch.Tensor:
        x = self.proj(out.last)  # [B, N, E]
        if self.mlp is not None:
            x = x + self.mlp(out.last)
        return l2norm(self.pool(x, out.mask))  # [B, E]


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


class RetrievalModel(TaskModel):
    def __init__(self, towers: dict[str, Tower], task: Retrieval) -> None:
        super().__init__()
        self.towers = nn.ModuleDict({name: t.module for name, t in towers.items()})
        self.heads = nn.ModuleDict(
            {
                name: EmbeddingHead(t.width, task.embed_dim, task.pooling, mlp=t.backbone.kind == "cnn")
                for name, t in towers.items()
            }
        )
        self.tuned = tuple(name for name, t in towers.items() if t.tuned)
        self.margin, self.hardest = task.margin, task.hardest_negatives

    def embed(self, batch: dict[str, dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        return [self.heads[name](self.towers[name](batch[name])) for name in self.towers]

    def forward(self, batch: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        a, b = self.embed(batch)
        return hinge_triplet_loss(a, b, self.margin, self.hardest)


@register_task("retrieval")
@dataclass
class Retrieval(Task):
    """Two towers (image or video, text) embedded into one space of width E."""

    recipe = Recipe(lr=5e-4, weight_decay=1e-4, grad_clip=2.0)  # VSE-infinity: AdamW, clip 2.0
    tower_count = 2
    embed_dim: int = 1024
    pooling: str = "gpo"
    margin: float = 0.2
    hardest_negatives: bool = True  # max-violation (the reference switches it on after epoch 1)

    def __post_init__(self) -> None:
        if self.pooling not in ("gpo", "mean"):
            raise UserError(f"retrieval: pooling must be 'gpo' or 'mean', got {self.pooling!r}")

    @property
    def out_dim(self) -> int:
        return self.embed_dim

    def build(self, towers: dict[str, Tower]) -> RetrievalModel:
        return RetrievalModel(towers, self)
