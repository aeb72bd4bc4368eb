"""Turn raw examples (text, images, region features) into one tower's input tensors, with cache keys.

Each encoder pads to a fixed length or size, so a sample's tensors never depend on the rest of its
batch: that keeps training deterministic and lets a side method's hidden states be cached per sample.
Text may instead pad to the batch's longest (train.padding = "longest", as VSE-infinity does): a row's
cache key then covers its padded width, so the cache stays exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbones.base import Backbone
from ..config import TowerSpec
from ..errors import UserError
from .image_text import ImageTextInputs
from .images import load_image, normalise
from .joint_inputs import JointInputs
from .text import tokenizer_for
from .video import CLIP_MEAN, CLIP_STD, VideoFrames


def row_keys(tensor: torch.Tensor) -> torch.Tensor:
    """One int64 key per row, from the row's bytes (equal rows, equal keys)."""
    rows = tensor.reshape(tensor.shape[0], -1).contiguous().numpy()
    return torch.tensor([hash(row.tobytes()) for row in rows], dtype=torch.long)


class ImageTable:
    """Image files loaded once, kept as uint8 [3, S, S] while they fit in `max_bytes`."""

    def __init__(self, size: int, max_bytes: int = 2 << 30) -> None:
        self.size, self.max_bytes = size, max_bytes
        self.loaded: dict[Path, torch.Tensor] = {}

    def __call__(self, path: Path) -> torch.Tensor:
        image = self.loaded.get(path)
        if image is None:
            image = load_image(path, self.size)
            if (len(self.loaded) + 1) * image.numel() <= self.max_bytes:
                self.loaded[path] = image
        return image


class TowerInputs:
    """Encodes a list of raw values for one tower: str (text), Path (image file), VideoClip or an array (regions)."""

    def __init__(self, spec: TowerSpec, backbone: Backbone, weights: str, padding: str = "max_length",
                 max_len: int = 0) -> None:
        shape = {**backbone.shape_defaults, **spec.shape}
        self.modality = backbone.modality
        self.padding = padding
        self.description = self.modality
        if self.modality == "text":
            config = getattr(backbone, "config", None)
            vocab = getattr(config, "vocab_size", None) or backbone.vocab_size
            self.tokenizer = tokenizer_for(weights, vocab, getattr(config, "model_type", None))
            self.description = self.tokenizer.description
            self.length = max_len or shape["seq_len"]  # truncation: the recipe's, else the profiled length
        elif self.modality == "image":
            self.images = ImageTable(shape["image_size"])
        elif self.modality == "video":  # values are VideoClips
            self.video = VideoFrames(shape["frames"], shape["image_size"])
        elif self.modality == "image+text":  # MDETR: (image path, caption, size) values, see data/image_text.py
            self.joint = ImageTextInputs.for_backbone(shape, backbone, weights)
        elif self.modality == "text+grid":  # CLIP-ViL: (question, grid features) values, see data/joint_inputs.py
            self.joint = JointInputs(backbone, weights, shape)
        elif self.modality != "features":
            raise UserError(f"training a {self.modality} tower ({spec.backbone}) on real data is not supported yet")

    def __call__(self, values: list[Any]) -> dict[str, torch.Tensor]:
        if self.modality == "text":
            out = self.tokenizer(values, self.length, self.padding)
            return {**out, "cache_keys": row_keys(out["input_ids"])}
        if self.modality == "image":
            raw = torch.stack([self.images(v) for v in values])  # uint8 [B, 3, S, S]
            return {"pixel_values": normalise(raw), "cache_keys": row_keys(raw)}
        if self.modality == "video":
            raw = self.video.batch(values)  # uint8 [B, F, 3, S, S]
            return {"pixel_values": normalise(raw, CLIP_MEAN, CLIP_STD), "cache_keys": row_keys(raw)}
        if self.modality == "image+text":
            return self.joint(values)
        if self.modality == "text+grid":
            return self.joint(values)
        features = torch.from_numpy(np.stack([np.asarray(v, dtype=np.float32) for v in values]))  # [B, R, D]
        return {"features": features, "cache_keys": row_keys(features)}
