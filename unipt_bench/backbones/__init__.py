"""Backbone families; importing this package registers every variant."""

from __future__ import annotations

from . import bert, clip, encdec, features, gru, joint, resnext, vit  # noqa: F401  (registration)
from .base import BACKBONES, Backbone, BackboneOutput, register_backbone

__all__ = ["BACKBONES", "Backbone", "BackboneOutput", "create_backbone", "register_backbone"]


def create_backbone(name: str, weights: str = "random") -> Backbone:
    """Build backbone `name`; weights: "random", "pretrained" (the variant's default source), a hub name or a path."""
    info = BACKBONES.get(name)
    if weights == "pretrained":
        weights = info.default_weights
    return info.factory(weights=weights)
