"""Inputs of a tower that reads an image and a text together (MDETR): a letterboxed image and the tokens.

Images follow MDETR's evaluation resize (MDETR/datasets/coco.py:230-236: short side to 800, long side capped)
on a fixed canvas, the tower's image_height x image_width: scaled by min(H / h, W / w), kept at the top left,
the rest zeros after normalisation (as MDETR pads its batches). A fixed canvas keeps every sample's tensors
independent of its batch. Boxes are then given relative to the canvas (`Letterbox`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import UserError
from .images import normalise
from .text import PretrainedTokenizer, Tokenizer, WordHashTokenizer, tokenizer_for


@dataclass(frozen=True)
class Letterbox:
    """Where an image of `size` (w, h) lies on a canvas (W, H): scaled by `scale`, at the top left."""

    size: tuple[int, int]
    canvas: tuple[int, int]

    @property
    def scale(self) -> float:
        (w, h), (cw, ch) = self.size, self.canvas
        return min(cw / w, ch / h)

    @property
    def resized(self) -> tuple[int, int]:
        w, h = self.size
        return max(1, round(w * self.scale)), max(1, round(h * self.scale))

    def to_canvas(self, box: tuple[float, float, float, float]) -> torch.Tensor:
        """A pixel box (x, y, w, h) of the image -> (cx, cy, w, h) relative to the canvas."""
        x, y, w, h = box
        cw, ch = self.canvas
        s = self.scale
        return torch.tensor([(x + w / 2) * s / cw, (y + h / 2) * s / ch, w * s / cw, h * s / ch])

    def to_image(self, boxes: torch.Tensor) -> torch.Tensor:
        """Canvas-relative (cx, cy, w, h) [..., 4] -> corner boxes (x0, y0, x1, y1) in the image's pixels."""
        cw, ch = self.canvas
        cx, cy, w, h = (boxes * torch.tensor([cw, ch, cw, ch], dtype=boxes.dtype) / self.scale).unbind(-1)
        return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def load_letterboxed(path: Path, letterbox: Letterbox) -> torch.Tensor:
    """The image resized (bilinear) to its letterbox size, uint8 [3, h', w']; its size must match the annotation's."""
    if not path.is_file():
        raise UserError(f"missing image {path}")
    try:
        with Image.open(path) as img:
            if img.size != letterbox.size:
                raise UserError(f"{path}: image is {img.size[0]}x{img.size[1]}, its annotation says "
                                f"{letterbox.size[0]}x{letterbox.size[1]}")
            w, h = letterbox.resized
            rgb = img.convert("RGB").resize((w, h), Image.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: not a readable image ({exc}); expected a JPEG, PNG or other format PIL reads") from None
    return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1).clone()


def token_offsets(tokenizer: Tokenizer, text: str, length: int) -> list[tuple[int, int] | None]:
    """The caption's character span of each token position (None: a special token or padding), `length` long."""
    if isinstance(tokenizer, WordHashTokenizer):  # [CLS] word ... [SEP]
        spans: list[tuple[int, int] | None] = [None, *((m.start(), m.end()) for m in re.finditer(r"\w+", text))]
    elif isinstance(tokenizer, PretrainedTokenizer) and tokenizer.tokenizer.is_fast:
        out = tokenizer.tokenizer(text, truncation=True, max_length=length, return_offsets_mapping=True)
        spans = [None if s == e else (s, e) for s, e in out["offset_mapping"]]
    else:
        raise UserError(f"grounding needs token offsets, which {type(tokenizer).__name__} does not give; "
                        "use a fast (tokenizer.json) tokenizer")
    return (spans + [None] * length)[:length]


def token_map(offsets: list[tuple[int, int] | None], spans: tuple[tuple[int, int], ...], classes: int) -> torch.Tensor:
    """MDETR's positive map of one box [classes]: 1 on every token overlapping one of its character spans,
    normalised to sum 1 (MDETR/datasets/coco.py:81-107)."""
    positive = torch.zeros(classes)
    for pos, tok in enumerate(offsets[: classes - 1]):  # the last class is "no object"
        if tok is not None and any(tok[0] < end and begin < tok[1] for begin, end in spans):
            positive[pos] = 1.0
    return positive / (positive.sum() + 1e-6)


class ImageTextInputs:
    """Encodes (image path, caption, (width, height)) values: pixel_values [B, 3, H, W], input_ids and
    attention_mask [B, T], and a per-sample cache key."""

    def __init__(self, shape: dict[str, int], tokenizer: Tokenizer, max_bytes: int = 2 << 30) -> None:
        self.canvas = (shape["image_width"], shape["image_height"])
        self.length = shape["seq_len"]
        self.tokenizer = tokenizer
        words = getattr(tokenizer, "description", type(tokenizer).__name__)
        self.description = f"image {self.canvas[0]}x{self.canvas[1]} letterboxed + {words}"
        self.max_bytes = max_bytes
        self.loaded: dict[Path, torch.Tensor] = {}
        self.bytes = 0

    @classmethod
    def for_backbone(cls, shape: dict[str, int], backbone: Any, weights: str) -> ImageTextInputs:
        return cls(shape, tokenizer_for(weights, backbone.text.config.vocab_size))

    def letterbox(self, size: tuple[int, int]) -> Letterbox:
        return Letterbox(size, self.canvas)

    def image(self, path: Path, size: tuple[int, int]) -> torch.Tensor:
        image = self.loaded.get(path)
        if image is None:
            image = load_letterboxed(path, self.letterbox(size))
            if self.bytes + image.numel() <= self.max_bytes:
                self.loaded[path] = image
                self.bytes += image.numel()
        return image

    def __call__(self, values: list[tuple[Path, str, tuple[int, int]]]) -> dict[str, torch.Tensor]:
        cw, ch = self.canvas
        pixels = torch.zeros(len(values), 3, ch, cw)  # [B, 3, H, W]
        keys = []
        for row, (path, _, size) in enumerate(values):
            image = self.image(path, size)  # uint8 [3, h', w']
            pixels[row, :, : image.shape[1], : image.shape[2]] = normalise(image[None])[0]
            keys.append(hash(image.numpy().tobytes()))
        text = self.tokenizer([caption for _, caption, _ in values], self.length)
        keys = [hash((k, ids.numpy().tobytes())) for k, ids in zip(keys, text["input_ids"], strict=True)]
        return {"pixel_values": pixels, **text, "cache_keys": torch.tensor(keys, dtype=torch.long)}

    def positive(self, caption: str, spans: tuple[tuple[int, int], ...], classes: int) -> torch.Tensor:
        return token_map(token_offsets(self.tokenizer, caption, self.length), spans, classes)
