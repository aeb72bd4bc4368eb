"""Inputs of a joint ("text+grid") tower: a question's tokens and its image's grid features, per sample.

Questions are tokenized and zero-padded to the tower's seq_len (CLIP-ViL pads every question to 20 tokens:
src/lxrt/entry.py:61-62, src/tasks/vqa_model.py:11); grids are the [G, C] rows of data/grid_features.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..backbones.base import Backbone
from ..errors import UserError
from .text import tokenizer_for


class JointValue(NamedTuple):
    """One sample for a joint tower: the question, its grid features [G, C], and the file they came from."""

    question: str
    grid: np.ndarray
    source: Path


class JointInputs:
    """Encodes JointValues: input_ids, attention_mask [B, T], grid [B, G, C] and per-sample cache keys."""

    def __init__(self, backbone: Backbone, weights: str, shape: dict[str, int]) -> None:
        config = backbone.config
        self.tokenizer = tokenizer_for(weights, config.vocab_size, getattr(config, "model_type", None))
        self.description = f"{getattr(self.tokenizer, 'description', 'tokenizer')} + grid features"
        self.length = shape["seq_len"]
        self.expected = (shape["grid"], backbone.visual_dim)  # (G, C) the tower was configured for

    def __call__(self, values: list[JointValue]) -> dict[str, torch.Tensor]:
        for value in values:
            if value.grid.shape != self.expected:
                raise UserError(f"{value.source}: grid features of shape [{', '.join(map(str, value.grid.shape))}] "
                                f"per image; the joint tower expects [{self.expected[0]}, {self.expected[1]}] (its "
                                "grid and its visual width: set the tower's grid, or the task's extractor and image size)")
        text = self.tokenizer([v.question for v in values], self.length)  # [B, T] each
        grid = torch.from_numpy(np.stack([np.asarray(v.grid, dtype=np.float32) for v in values]))  # [B, G, C]
        rows = torch.cat([text["input_ids"].double(), grid.flatten(1).double()], dim=1).numpy()
        keys = torch.tensor([hash(row.tobytes()) for row in rows], dtype=torch.long)  # equal samples, equal keys
        return {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"], "grid": grid,
                "cache_keys": keys}

    def describe(self) -> dict[str, Any]:
        return {"tokenizer": self.description, "seq_len": self.length, "grid": list(self.expected)}
