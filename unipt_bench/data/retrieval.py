"""Image-text retrieval data in its two published layouts.

- Karpathy split (Flickr30K, MSCOCO): `dataset_flickr30k.json` / `dataset_coco.json` with
  {"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}, ...]}]} and an image folder.
  MSCOCO's "restval" images join the training split, as in VSE-infinity.
- VSE-infinity "precomp": `<split>_ims.npy` (BUTD region features [N, 36, 2048]) and `<split>_caps.txt`
  (one caption per line, 5 per image). When the array holds one row per caption (5 copies of each
  image), every fifth row is kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}


@dataclass
class ImageTextData:
    """Captions with the index of their image; images as file paths or as rows of a feature array."""

    captions: list[str]
    caption_image: list[int]
    image_paths: list[Path] | None = None
    features: np.ndarray | None = None  # [I, R, D], memory-mapped

    @property
    def num_images(self) -> int:
        return len(self.image_paths) if self.image_paths is not None else len(self.features)


def load_karpathy(json_path: Path, image_dir: Path, split: str) -> ImageTextData:
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        entries = data["images"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{json_path}: not a Karpathy-split file ({exc}); expected {{\"images\": [...]}}") from None
    wanted = KARPATHY_SPLITS.get(split, (split,))
    paths: list[Path] = []
    captions: list[str] = []
    caption_image: list[int] = []
    for entry in entries:
        if entry.get("split") not in wanted:
            continue
        try:
            path = image_dir / entry.get("filepath", "") / entry["filename"]
            sentences = [s["raw"] for s in entry["sentences"]]
        except (KeyError, TypeError) as exc:
            raise UserError(f"{json_path}: an image entry lacks {exc}; expected filename and sentences[].raw") from None
        for sentence in sentences:
            captions.append(sentence)
            caption_image.append(len(paths))
        paths.append(path)
    if not paths:
        raise UserError(f"{json_path}: no images in split {split!r}")
    missing = [p for p in paths[:20] if not p.is_file()]
    if missing:
        raise UserError(f"image {missing[0]} listed in {json_path} is missing (expected under {image_dir})")
    return ImageTextData(captions, caption_image, image_paths=paths)


def load_precomp(folder: Path, split: str) -> ImageTextData:
    ims, caps = folder / f"{split}_ims.npy", folder / f"{split}_caps.txt"
    for path in (ims, caps):
        if not path.is_file():
            raise UserError(f"missing {path}: the precomp layout needs {split}_ims.npy and {split}_caps.txt")
    try:
        features = np.load(ims, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise UserError(f"{ims}: not a NumPy array ({exc})") from None
    captions = [line.strip() for line in caps.read_text(encoding="utf-8").splitlines() if line.strip()]
    if features.ndim != 3:
        raise UserError(f"{ims}: expected region features [images, regions, dims], got shape {features.shape}")
    if len(features) == len(captions) and len(captions) % 5 == 0:
        features = features[::5]  # one row per caption: keep one copy of each image
    if len(captions) % len(features):
        raise UserError(f"{caps}: {len(captions)} captions do not divide among {len(features)} images")
    per_image = len(captions) // len(features)
    return ImageTextData(captions, [i // per_image for i in range(len(captions))], features=features)
