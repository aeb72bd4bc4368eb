"""UniPT's parallel interaction and confidence aggregation (SPEC_METHODS 1.1 steps 2-3), shared by every variant."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import l1norm, masked_mean


def parallel_interaction(
    anchor: torch.Tensor, targets: list[torch.Tensor], mask: torch.Tensor | None, gate: nn.Linear,
    identity: bool = True, keep_token: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fuse target layers into the anchor's token positions.

    anchor [B, N, m] (the last layer, down-projected); each target T_i [B, K, m]. For every target,
    independently: S_i = A T_i^T [B, N, K] with padded keys zeroed, M_i = l1norm(ReLU(S_i)) (+ I_N
    when identity), R_i = M_i T_i (+ T_i's token at `keep_token` [B], the single-anchor form).
    A shared scorer g(mean(A) * mean(T_i)) gives one logit per layer and sample; softmax over layers
    weighs the R_i. Returns R [B, N, m].
    """
    stacked = torch.stack(targets)  # T: [L, B, K, m], every layer at once (fewer, larger ops)
    scores = torch.einsum("bnm,lbkm->lbnk", anchor, stacked)  # S: [L, B, N, K]
    if mask is not None:
        scores = scores * mask[None, :, None, :].to(scores.dtype)  # zero the padded keys
    weights = l1norm(torch.relu(scores), dim=-1)  # M: [L, B, N, K]
    if identity:
        weights = weights + torch.eye(anchor.shape[1], dtype=anchor.dtype, device=anchor.device)
    fused = weights @ stacked  # R: [L, B, N, m]
    if keep_token is not None:
        rows = torch.arange(anchor.shape[0], device=anchor.device)
        fused = fused + stacked[:, rows, keep_token][:, :, None, :]
    if mask is None:
        means = stacked.mean(dim=2)  # [L, B, m]
    else:
        valid = mask[None, :, :, None].to(stacked.dtype)  # [1, B, K, 1]
        means = (stacked * valid).sum(dim=2) / valid.sum(dim=2).clamp(min=1)
    logits = gate(masked_mean(anchor, mask)[None] * means)[..., 0]  # c: [L, B]
    alpha = torch.softmax(logits, dim=0)  # over layers, per sample
    return torch.einsum("lb,lbnm->bnm", alpha, fused)  # R: [B, N, m]
