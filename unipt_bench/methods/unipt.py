"""UniPT, Universal Parallel Tuning (Diao et al., CVPR 2024, arXiv 2308.14316).

A light parallel network over the frozen backbone's hidden states (backbone under no_grad): each
earlier layer interacts with the last layer's tokens independently (parallel interaction), and a
shared scorer weighs the layers per sample (confidence aggregation). Only it trains; gradients never
enter the backbone. One method, one form per architecture kind (docs/methods.md §1.1-1.5).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..backbones.base import Backbone, BackboneOutput
from ..configurable import bounded
from ..errors import UserError
from ..ops import pooled_index
from .base import TOKEN_KINDS, Method, SideTuned, down_params, linear_params, register_method
from .interaction import parallel_interaction
from .unipt_cnn import ParallelCNN
from .unipt_encdec import ParallelEncDec


class ParallelTransformer(nn.Module):
    """UniPT for token models (docs/methods.md §1.1): Down_k per hidden state, parallel interaction,
    confidence aggregation."""

    def __init__(self, hidden_sizes: tuple[int, ...], width: int, out_dim: int) -> None:
        super().__init__()
        self.downs = nn.ModuleList(nn.Sequential(nn.Linear(d, width), nn.LayerNorm(width)) for d in hidden_sizes)
        self.proj = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width))
        self.up = nn.Sequential(nn.ReLU(), nn.Linear(width, out_dim))
        self.gate = nn.Linear(width, 1)  # one confidence scorer shared by all layers

    @staticmethod
    def trainable_params(hidden_sizes: tuple[int, ...], width: int, out_dim: int) -> int:
        """sum_k (D_k m + 3 m) + (m^2 + 3 m) + (m E + E) + (m + 1) (docs/methods.md §1.1)."""
        downs = sum(down_params(d, width) for d in hidden_sizes)
        return downs + down_params(width, width) + linear_params(width, out_dim) + linear_params(width, 1)

    def forward(self, out: BackboneOutput) -> BackboneOutput:
        *early, last = out.hidden
        anchor = self.downs[-1](last)  # A: [B, N, m]
        targets = [down(state) for down, state in zip(self.downs, early, strict=False)]  # T_i: [B, N, m]
        fused = parallel_interaction(anchor, targets, out.mask, self.gate)  # R: [B, N, m]
        return replace(out, last=self.up(anchor + self.proj(fused)))  # last: [B, N, E]


class ParallelJoint(ParallelTransformer):
    """UniPT for a joint cross-modal transformer (docs/methods.md §1.3): width m = D / r, Proj an MLP
    (m -> D -> m, then LayerNorm), Up = Linear(m -> D); Linear weights drawn from N(0, 0.02)."""

    def __init__(self, hidden_sizes: tuple[int, ...], width: int) -> None:
        out_dim = hidden_sizes[-1]
        super().__init__(hidden_sizes, width, out_dim)
        self.proj = nn.Sequential(
            nn.Linear(width, out_dim), nn.ReLU(), nn.Linear(out_dim, width), nn.LayerNorm(width)
        )
        self.up = nn.Linear(width, out_dim)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    @staticmethod
    def trainable_params(hidden_sizes: tuple[int, ...], width: int) -> int:
        """sum_k (D_k m + 3 m) + (m D + D + D m + 3 m) + (m D + D) + (m + 1) (docs/methods.md §1.3)."""
        d = hidden_sizes[-1]
        downs = sum(down_params(size, width) for size in hidden_sizes)
        proj = linear_params(width, d) + down_params(d, width)
        return downs + proj + linear_params(width, d) + linear_params(width, 1)


class ParallelPooled(nn.Module):
    """UniPT with a single-vector anchor (docs/methods.md §1.5, CLIP4Clip style): the frozen final CLS/EOT
    embedding queries every hidden state; no identity term, the target's own CLS/EOT token is added instead.
    Output: one token per row, the frozen embedding + Up(R), at the backbone's width D."""

    def __init__(self, hidden_sizes: tuple[int, ...], width: int, token: str) -> None:
        super().__init__()
        self.token = token  # "cls" (first token) or "eot" (last valid token)
        self.anchor = nn.Sequential(nn.Linear(hidden_sizes[-1], width), nn.LayerNorm(width))
        self.downs = nn.ModuleList(nn.Sequential(nn.Linear(d, width), nn.LayerNorm(width)) for d in hidden_sizes)
        self.up = nn.Sequential(nn.ReLU(), nn.Linear(width, hidden_sizes[-1]))
        self.gate = nn.Linear(width, 1)

    @staticmethod
    def trainable_params(hidden_sizes: tuple[int, ...], width: int, token: str) -> int:
        """(D m + 3 m) + sum_k (D_k m + 3 m) + (m D + D) + (m + 1) (docs/methods.md §1.5)."""
        d = hidden_sizes[-1]
        downs = sum(down_params(size, width) for size in hidden_sizes)
        return down_params(d, width) + downs + linear_params(width, d) + linear_params(width, 1)

    def forward(self, out: BackboneOutput) -> BackboneOutput:
        rows = torch.arange(out.last.shape[0], device=out.last.device)
        index = pooled_index(out.mask, self.token, rows.shape[0], rows.device)  # [B]
        frozen = out.hidden[-1][rows, index][:, None, :]  # the frozen embedding token: [B, 1, D]
        targets = [down(state) for down, state in zip(self.downs, out.hidden, strict=True)]  # [B, N, m] each
        fused = parallel_interaction(self.anchor(frozen), targets, out.mask, self.gate, identity=False,
                                     keep_token=index)  # [B, 1, m]
        return replace(out, last=frozen + self.up(fused), mask=None)  # [B, 1, D]


@register_method("unipt")
@dataclass
class UniPT(Method):
    module_names = ("side",)
    kinds = TOKEN_KINDS | {"cnn", "encdec"}
    side = True
    reduction: int = bounded(2, at_least=1)  # m = E / r (reference: E = 1024, m = 512)
    anchor: str = "tokens"  # "tokens": every last-layer token (1.1); "cls" or "eot": one frozen token (1.5)

    def __post_init__(self) -> None:
        if self.anchor not in ("tokens", "cls", "eot"):
            raise UserError(f"unipt: anchor must be 'tokens', 'cls' or 'eot', got {self.anchor!r}")

    def side_network(self, backbone: Backbone, out_dim: int) -> tuple[type[nn.Module], tuple]:
        """The form for this backbone (docs/methods.md §1.1-1.5) and its constructor arguments."""
        if out_dim % self.reduction:
            raise UserError(f"unipt: reduction {self.reduction} does not divide the output width {out_dim}")
        width = out_dim // self.reduction
        if backbone.kind == "joint":  # m = D / r and the output keeps the joint transformer's width D
            return ParallelJoint, (backbone.hidden_sizes, backbone.width // self.reduction)
        if backbone.kind == "cnn":
            return ParallelCNN, (backbone.hidden_sizes, width, out_dim)
        if backbone.kind == "encdec":  # MDETR: D = 256, m = 128, layers 1, 3, 5 (of 6) and the last
            depth = len(backbone.hidden_sizes) - 1
            return ParallelEncDec, (backbone.width, backbone.width // self.reduction, tuple(range(1, depth, 2)), depth)
        if self.anchor != "tokens":
            return ParallelPooled, (backbone.hidden_sizes, width, self.anchor)
        return ParallelTransformer, (backbone.hidden_sizes, width, out_dim)

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        form, args = self.side_network(backbone, out_dim)
        return SideTuned(backbone, form(*args))

    def closed_form_trainable(self, backbone: Backbone, out_dim: int) -> int:
        """The chosen form's count, written from the same constructor arguments (docs/methods.md §1.1-1.5)."""
        form, args = self.side_network(backbone, out_dim)
        return form.trainable_params(*args)

    def output_width(self, backbone: Backbone, out_dim: int) -> int:
        pooled = self.anchor != "tokens" and backbone.kind == "transformer"
        return backbone.width if pooled or backbone.kind in ("joint", "encdec") else out_dim
