"""UniPT, Universal Parallel Tuning (Diao et al., CVPR 2024, arXiv 2308.14316).

A light parallel network over the frozen backbone's hidden states (backbone under no_grad): each
earlier layer interacts with the last layer's tokens independently (parallel interaction), and a
shared scorer weighs the layers per sample (confidence aggregation). Only it trains. SPEC_METHODS 1.1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbones.base import Backbone, BackboneOutput
from ..errors import UserError
from ..ops import l1norm, masked_mean
from .base import Method, SideTuned, register_method


class ParallelTransformer(nn.Module):
    """UniPT for token models: Down_k per hidden state, parallel interaction, confidence aggregation."""

    def __init__(self, hidden_sizes: tuple[int, ...], width: int, out_dim: int) -> None:
        super().__init__()
        self.downs = nn.ModuleList(nn.Sequential(nn.Linear(d, width), nn.LayerNorm(width)) for d in hidden_sizes)
        self.proj = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width))
        self.up = nn.Sequential(nn.ReLU(), nn.Linear(width, out_dim))
        self.gate = nn.Linear(width, 1)  # one confidence scorer shared by all layers

    def forward(self, out: BackboneOutput) -> BackboneOutput:
        h, mask = out.hidden, out.mask
        anchor = self.downs[-1](h[-1])  # A: [B, N, m]
        a = masked_mean(anchor, mask)  # [B, m]
        eye = torch.eye(anchor.shape[1], dtype=anchor.dtype, device=anchor.device)  # [N, N]
        layers, logits = [], []
        for down, state in zip(self.downs[:-1], h[:-1], strict=True):
            t_tokens = down(state)  # T_i: [B, N, m]
            scores = anchor @ t_tokens.transpose(1, 2)  # S_i: [B, N, N]
            if mask is not None:
                scores = scores * mask[:, None, :].to(scores.dtype)  # zero the padded keys
            weights = l1norm(torch.relu(scores), dim=-1) + eye  # M_i
            layers.append(weights @ t_tokens)  # R_i: [B, N, m]
            logits.append(self.gate(a * masked_mean(t_tokens, mask)))  # c_i: [B, 1]
        alpha = torch.softmax(torch.cat(logits, dim=1), dim=1)  # [B, L]
        fused = torch.einsum("bl,lbnm->bnm", alpha, torch.stack(layers))  # R: [B, N, m]
        return BackboneOutput(out.hidden, self.up(anchor + self.proj(fused)), mask)  # last: [B, N, E]


@register_method("unipt")
@dataclass
class UniPT(Method):
    side = True
    reduction: int = 2  # m = E / r (reference: E = 1024, m = 512)

    def build(self, backbone: Backbone, out_dim: int) -> nn.Module:
        if out_dim % self.reduction:
            raise UserError(f"unipt: reduction {self.reduction} does not divide the output width {out_dim}")
        side = ParallelTransformer(backbone.hidden_sizes, out_dim // self.reduction, out_dim)
        return SideTuned(backbone, side)
