"""Box geometry for grounding: formats, IoU and generalised IoU (Rezatofighi et al., CVPR 2019, arXiv 1902.09630).

Every function works elementwise over the leading dimensions (broadcasting), without indexing by value, so the
same code traces on fake tensors (estimates) and runs on real ones.
"""

from __future__ import annotations

import torch


def corners(box: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1), over the last dimension."""
    cx, cy, w, h = box.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def from_xywh(box: torch.Tensor) -> torch.Tensor:
    """COCO's (x, y, w, h) -> (x0, y0, x1, y1)."""
    x, y, w, h = box.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def area(box: torch.Tensor) -> torch.Tensor:
    return (box[..., 2:] - box[..., :2]).clamp(min=0).prod(dim=-1)


def iou_parts(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Intersection, union and enclosing-box area of corner boxes a, b [..., 4] (broadcast)."""
    inter = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0).prod(dim=-1)
    union = area(a) + area(b) - inter
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(dim=-1)
    return inter, union, hull


def box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU of corner boxes a, b [..., 4] -> [...]."""
    inter, union, _ = iou_parts(a, b)
    return inter / union.clamp(min=eps)


def generalized_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Generalised IoU of corner boxes a, b [..., 4] -> [...]: IoU - (hull - union) / hull, in [-1, 1]."""
    inter, union, hull = iou_parts(a, b)
    return inter / union.clamp(min=eps) - (hull - union) / hull.clamp(min=eps)
