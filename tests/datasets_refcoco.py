"""A tiny RefCOCO in MDETR's pre-processed format: COCO-named images of two coloured squares on grey, each
image referred to twice ("the red square", "the blue square"), one box and one token span per expression."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

SQUARES = {"red": (220, 30, 30), "blue": (30, 40, 220)}
SPLITS = {"refcoco": ("train", "val", "testA", "testB"), "refcocog": ("train", "val", "test")}


def square_image(path: Path, rng: np.random.Generator, size: tuple[int, int], side: int,
                 colors: int = 2) -> dict[str, list[float]]:
    """Grey noise with one square per colour at random, non-overlapping places; returns each square's COCO bbox."""
    w, h = size
    pixels = np.clip(128 + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8)
    boxes: dict[str, list[float]] = {}
    quadrants = rng.permutation(4)
    while len(boxes) < colors:
        q = quadrants[len(boxes)]  # each square in its own quadrant, a few pixels from its corner
        x = int(q % 2 * (w - side) + (1 - 2 * (q % 2)) * rng.integers(0, 4))
        y = int(q // 2 * (h - side) + (1 - 2 * (q // 2)) * rng.integers(0, 4))
        color = list(SQUARES)[(len(boxes) + int(path.stem[-1])) % len(SQUARES)]
        pixels[y : y + side, x : x + side] = SQUARES[color]
        boxes[color] = [float(x), float(y), float(side), float(side)]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)
    return boxes


def write_refcoco(root: Path, name: str = "refcoco", train_images: int = 24, eval_images: int = 6,
                  size: tuple[int, int] = (64, 64), side: int = 26, prefix: str = "finetune", colors: int = 2) -> Path:
    """root/mdetr_annotations/<prefix>_<name>_<split>.json and root/train2014/COCO_train2014_*.jpg."""
    rng = np.random.default_rng(0)
    number = 0
    for split in SPLITS["refcocog" if name == "refcocog" else "refcoco"]:
        images, annotations = [], []
        for _ in range(train_images if split == "train" else eval_images):
            number += 1
            file_name = f"COCO_train2014_{number:012d}.jpg"
            boxes = square_image(root / "train2014" / file_name, rng, size, side, colors)
            for color, box in boxes.items():
                caption = f"the {color} square"
                key = len(images) + 1000 * number
                begin = caption.index(color)
                images.append({"file_name": file_name, "height": size[1], "width": size[0], "id": key,
                               "original_id": number, "caption": caption, "dataset_name": name,
                               "tokens_negative": []})
                annotations.append({"area": box[2] * box[3], "iscrowd": 0, "image_id": key, "category_id": 1,
                                    "id": key, "bbox": box, "original_id": key,
                                    "tokens_positive": [[begin, len(caption)]]})
        folder = root / "mdetr_annotations"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{prefix}_{name}_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}))
    return root
