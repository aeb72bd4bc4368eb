"""Precomputed region features (BUTD, Anderson et al. 2018): the image side of VSE-infinity's precomp setting."""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import Backbone, BackboneOutput, register_backbone


class RegionFeatures(Backbone):
    """No parameters: the 'backbone' output is the detector's region features, [B, R, D] with D = 2048."""

    kind: ClassVar[str] = "features"
    modality = "features"

    def __init__(self, dim: int, regions: int) -> None:
        super().__init__()
        self.width = dim
        self.hidden_sizes = (dim,)
        self.shape_defaults = {"regions": regions}

    def forward(self, inputs: dict[str, torch.Tensor], all_hidden: bool = False) -> BackboneOutput:
        feats = inputs["features"]  # [B, R, D]
        return BackboneOutput((feats,), feats, None)

    def dummy_inputs(self, batch: int, **shape: int) -> dict[str, torch.Tensor]:
        regions = shape.get("regions", self.shape_defaults["regions"])
        return {"features": torch.randn(batch, regions, self.width)}


@register_backbone("butd-regions", "36 Faster R-CNN (BUTD) region features of 2048 dims per image, precomputed")
def butd_regions(weights: str = "random") -> RegionFeatures:
    return RegionFeatures(dim=2048, regions=36)


@register_backbone("tiny-regions", "4 region features of 16 dims, for tests", tiny=True)
def tiny_regions(weights: str = "random") -> RegionFeatures:
    return RegionFeatures(dim=16, regions=4)
