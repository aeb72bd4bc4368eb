"""UniPT for an encoder-decoder (docs/methods.md §1.4, MDETR): an encoder-side parallel network builds a side
memory; each used decoder layer first attends to it (pre-interaction), then the decoder-side parallel
interaction runs with the decoder's last state as anchor."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..backbones.encdec import EncDecOutput
from ..ops import l1norm
from .base import down_params, linear_params
from .interaction import parallel_interaction


def down(width: int, m: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, m), nn.LayerNorm(m))


class ParallelEncDec(nn.Module):
    """Widths D -> m; `layers` (1-based) are the intermediate layers used, the last layer is the anchor."""

    def __init__(self, width: int, m: int, layers: tuple[int, ...], depth: int) -> None:
        super().__init__()
        self.layers, self.depth = layers, depth
        self.enc_downs = nn.ModuleList(down(width, m) for _ in range(len(layers) + 1))
        self.enc_proj = down(m, m)
        self.enc_gate = nn.Linear(m, 1)
        self.dec_downs = nn.ModuleList(down(width, m) for _ in range(len(layers) + 1))
        self.cross = nn.ModuleList(nn.Linear(m, m) for _ in layers)
        self.dec_proj = down(m, m)
        self.dec_gate = nn.Linear(m, 1)
        self.up = nn.Sequential(nn.ReLU(), nn.Linear(m, width))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    @staticmethod
    def trainable_params(width: int, m: int, layers: tuple[int, ...], depth: int) -> int:
        """Two sides of (U + 1) Down, a Proj and a gate, U Cross and one Up, for U used layers
        (docs/methods.md §1.4)."""
        side = (len(layers) + 1) * down_params(width, m) + down_params(m, m) + linear_params(m, 1)
        return 2 * side + len(layers) * linear_params(m, m) + linear_params(m, width)

    def forward(self, out: EncDecOutput) -> EncDecOutput:
        enc, dec, mask = out.hidden, out.decoder_hidden, out.memory_mask  # states 0..depth
        anchor = self.enc_downs[-1](enc[self.depth])  # [B, S, m]
        targets = [d(enc[k]) for d, k in zip(self.enc_downs, self.layers, strict=False)]
        memory = anchor + self.enc_proj(parallel_interaction(anchor, targets, mask, self.enc_gate))  # Z: [B, S, m]
        key_mask = mask[:, None, :].to(memory.dtype)  # [B, 1, S]
        queries = []
        for d, cross, k in zip(self.dec_downs, self.cross, self.layers, strict=False):
            t = d(dec[k])  # [B, Q, m]
            attention = l1norm(torch.relu(t @ memory.transpose(1, 2) * key_mask), dim=-1)  # [B, Q, S]
            queries.append(t + cross(attention @ memory))  # pre-interaction with the side memory
        anchor_q = self.dec_downs[-1](dec[self.depth])  # [B, Q, m]
        fused = anchor_q + self.dec_proj(parallel_interaction(anchor_q, queries, None, self.dec_gate))
        predictions = tuple(self.up(q) for q in [*queries, fused])  # three auxiliary + the fused one: [B, Q, D]
        return replace(out, last=predictions[-1], predictions=predictions)
