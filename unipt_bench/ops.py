"""Small tensor helpers shared by methods and heads."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over tokens of x [B, N, C] counting only valid tokens (mask [B, N]); returns [B, C]."""
    if mask is None:
        return x.mean(dim=1)
    m = mask.to(x.dtype).unsqueeze(-1)  # [B, N, 1]
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


def l1norm(x: torch.Tensor, dim: int | tuple[int, ...]) -> torch.Tensor:
    """x / (sum |x| + 1e-8) along `dim` (docs/methods.md §0)."""
    return x / (x.abs().sum(dim=dim, keepdim=True) + 1e-8)


def l2norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x / (||x||_2 + 1e-8) along `dim`."""
    return x / (x.norm(dim=dim, keepdim=True) + 1e-8)


def pooled_index(mask: torch.Tensor | None, kind: str, batch: int, device: torch.device) -> torch.Tensor:
    """Token position per row: 0 for "cls"; the last valid token for "eot" (CLIP text's end token)."""
    if kind == "eot" and mask is not None:
        return mask.sum(dim=1) - 1  # [B]
    return torch.zeros(batch, dtype=torch.long, device=device)
