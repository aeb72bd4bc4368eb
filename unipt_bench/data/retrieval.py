"""Image-text retrieval data in its two published layouts.

- Karpathy split (Flickr30K, MSCOCO): `dataset_flickr30k.json` / `dataset_coco.json` with
  {"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}, ...]}]} and an image folder.
  MSCOCO's "restval" images join the training split, as in VSE-infinity.
- VSE-infinity "precomp": `<split>_ims.npy` (BUTD region features [N, 36, 2048]) and `<split>_caps.txt`
  (one caption per line, 5 per image). When the array holds one row per caption (5 copies of each
  image), every fifth row is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .files import brief, check_images, expect, field, load_npy, read_json, read_text, typed

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
    data = read_json(json_path, "Karpathy-split file")
    expect(isinstance(data, dict) and "images" in data, json_path,
           f'not a Karpathy-split file: expected {{"images": [...]}}, got {brief(data)}')
    entries = typed(data["images"], list, json_path, "images")
    wanted = KARPATHY_SPLITS.get(split, (split,))
    paths: list[Path] = []
    captions: list[str] = []
    caption_image: list[int] = []
    for n, entry in enumerate(entries):
        where = f"images[{n}]"
        if field(entry, "split", str, json_path, where) not in wanted:
            continue
        folder = typed(entry.get("filepath", ""), str, json_path, f"{where}.filepath")
        path = image_dir / folder / field(entry, "filename", str, json_path, where)
        sentences = field(entry, "sentences", list, json_path, where)
        for k, sentence in enumerate(sentences):
            captions.append(field(sentence, "raw", str, json_path, f"{where}.sentences[{k}]"))
            caption_image.append(len(paths))
        paths.append(path)
    expect(paths, json_path, f"no images in split {split!r}")
    check_images(paths, json_path)
    return ImageTextData(captions, caption_image, image_paths=paths)


def load_features(path: Path) -> np.ndarray:
    """Region features [images, regions, dims] from a .npy file, memory-mapped."""
    expected = "expected region features [images, regions, dims]"
    features = load_npy(path, expected)
    expect(isinstance(features, np.ndarray), path, f"not a NumPy .npy array (an .npz archive?); {expected}")
    expect(features.ndim == 3 and all(features.shape), path, f"{expected}, got shape {features.shape}")
    expect(features.dtype.kind in "fiu", path, f"{expected} of numbers, got dtype {features.dtype}")
    return features


def load_precomp(folder: Path, split: str) -> ImageTextData:
    ims, caps = folder / f"{split}_ims.npy", folder / f"{split}_caps.txt"
    for path in (ims, caps):
        if not path.is_file():
            raise UserError(f"missing {path}: the precomp layout needs {split}_ims.npy and {split}_caps.txt")
    features = load_features(ims)
    text = read_text(caps, "captions, one per line")
    captions = [line.strip() for line in text.splitlines() if line.strip()]
    expect(captions, caps, "no captions; expected one caption per line")
    if len(features) == len(captions) and len(captions) % 5 == 0:
        features = features[::5]  # one row per caption: keep one copy of each image
    expect(len(captions) % len(features) == 0, caps,
           f"{len(captions)} captions for {len(features)} images in {ims.name}; "
           "expected the same number for every image")
    per_image = len(captions) // len(features)
    return ImageTextData(captions, [i // per_image for i in range(len(captions))], features=features)
