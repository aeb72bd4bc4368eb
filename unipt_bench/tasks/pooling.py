"""Token pooling for embedding heads: GPO (Chen et al., VSE-infinity, CVPR 2021, arXiv 2011.11486), mean,
and single-token picks: the first token (CLS) or the last valid one (CLIP's EOT)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops import masked_mean, pooled_index
from .position_gru import position_gru


def sinusoid_positions(length: int, dim: int, device: torch.device) -> torch.Tensor:
    """Sine/cosine position encodings, [N, dim]."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]  # [N, 1]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


class GPO(nn.Module):
    """Generalised pooling operator: a learned weighting of each dimension's sorted values.

    A small bi-GRU over position encodings scores each rank; features are sorted per dimension
    (descending), weighted by softmax(score / 0.1) and summed. Runs the GRU over the padded length
    and masks padded ranks (the reference packs sequences instead): every row's GRU input is then the
    same, so the GRU runs once, as one fused op (position_gru.py).
    """

    def __init__(self, d_pe: int = 32, d_hidden: int = 32) -> None:
        super().__init__()
        self.d_pe, self.d_hidden = d_pe, d_hidden
        self.gru = nn.GRU(d_pe, d_hidden, batch_first=True, bidirectional=True)
        self.score = nn.Linear(d_hidden, 1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:  # x: [B, N, E]
        b, n, _ = x.shape
        pe = sinusoid_positions(n, self.d_pe, x.device).to(x.dtype)  # [N, d_pe], the same for every row
        both = position_gru(self.gru, pe)  # [N, 2 * d_hidden]
        rank_scores = self.score((both[:, : self.d_hidden] + both[:, self.d_hidden :]) / 2).expand(b, n, 1)  # [B, N, 1]
        if mask is not None:
            lengths = mask.sum(dim=1, keepdim=True)  # [B, 1]
            valid_rank = (torch.arange(n, device=x.device)[None, :] < lengths)[:, :, None]  # [B, N, 1]
            rank_scores = rank_scores.masked_fill(~valid_rank, -10000.0)
            x = x.masked_fill(~mask[:, :, None].bool(), -10000.0)  # padded tokens sort last
        weights = torch.softmax(rank_scores / 0.1, dim=1)  # [B, N, 1]
        ranked = x.sort(dim=1, descending=True).values  # [B, N, E]
        if mask is not None:
            ranked = ranked.masked_fill(~valid_rank, 0.0)
        return (ranked * weights).sum(dim=1)  # [B, E]


class MeanPool(nn.Module):
    """Mean over valid tokens."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return masked_mean(x, mask)


class TokenPick(nn.Module):
    """One token per row: the first ("cls") or the last valid ("eot")."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:  # [B, N, E] -> [B, E]
        index = pooled_index(mask, self.kind, x.shape[0], x.device)
        return x[torch.arange(x.shape[0], device=x.device), index]


POOLINGS = ("gpo", "mean", "cls", "eot")


def make_pooling(name: str) -> nn.Module:
    if name in ("cls", "eot"):
        return TokenPick(name)
    return {"gpo": GPO, "mean": MeanPool}[name]()
