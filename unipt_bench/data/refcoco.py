"""RefCOCO / RefCOCO+ / RefCOCOg in MDETR's pre-processed form: one COCO-style JSON per split.

Each entry of `images` is one referring expression: `file_name` (a COCO train2014 image), `caption` (the
expression), `height`, `width` and `id`; its one entry in `annotations` carries `image_id`, `bbox`
([x, y, width, height] in pixels) and `tokens_positive` ([begin, end) character spans of the caption that
name the referred object). MDETR's conversion script writes exactly one annotation per expression
(MDETR/scripts/fine-tuning/refexp_coco_format.py:79-104) and its evaluator requires it (MDETR/datasets/refexp.py:54).

Layout under the dataset folder: `mdetr_annotations/finetune_<name>_<split>.json` (the name MDETR's loader
reads, MDETR/datasets/refexp.py:100-102) or `final_<name>_<split>.json`, and the images in `train2014/`
(MDETR/datasets/refexp.py:94). Every field is checked; a problem is one line naming the file and the entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import UserError
from .files import brief, check_images, expect, field, read_json

ANNOTATIONS = "mdetr_annotations"
IMAGES = "train2014"
PREFIXES = ("finetune", "final")  # MDETR's loader reads finetune_*; the released archive also names final_*
EDGE_SLACK = 1.0  # pixels a box may pass the image's edge (COCO boxes are rounded to 1/100 px)


@dataclass(frozen=True)
class Expression:
    """One referring expression and the box it refers to."""

    image: Path
    caption: str
    size: tuple[int, int]  # (width, height) of the image, as the annotation gives it
    box: tuple[float, float, float, float]  # (x, y, width, height) in pixels
    spans: tuple[tuple[int, int], ...]  # [begin, end) character spans of the caption naming the object


def annotation_file(root: Path, name: str, split: str) -> Path:
    """The split's annotation file (finetune_* preferred); the finetune_* path when neither exists."""
    folder = root / ANNOTATIONS
    for prefix in PREFIXES:
        path = folder / f"{prefix}_{name}_{split}.json"
        if path.is_file():
            return path
    return folder / f"{PREFIXES[0]}_{name}_{split}.json"


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_box(value: Any, size: tuple[int, int], path: Path, where: str) -> tuple[float, float, float, float]:
    expect(isinstance(value, list) and len(value) == 4 and all(map(number, value)), path,
           f"{where} must be [x, y, width, height] (4 numbers), got {brief(value)}")
    x, y, w, h = (float(v) for v in value)
    expect(w > 0 and h > 0, path, f"{where} has a negative or zero size {brief(value)}; expected width and height above 0")
    width, height = size
    expect(x >= -EDGE_SLACK and y >= -EDGE_SLACK and x + w <= width + EDGE_SLACK and y + h <= height + EDGE_SLACK,
           path, f"{where} {brief(value)} lies outside its {width}x{height} image")
    return x, y, w, h


def read_spans(value: Any, caption: str, path: Path, where: str) -> tuple[tuple[int, int], ...]:
    expect(isinstance(value, list), path, f"{where} must be a list of [begin, end] character spans, got {brief(value)}")
    spans = []
    for k, span in enumerate(value):
        ok = (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in span))
        expect(ok and 0 <= span[0] < span[1] <= len(caption), path,
               f"{where}[{k}] must be [begin, end] with 0 <= begin < end <= {len(caption)} (the caption's length), "
               f"got {brief(span)}")
        spans.append((span[0], span[1]))
    return tuple(spans)


def load_refexp(path: Path, image_dir: Path) -> list[Expression]:
    """Every expression of one split file, in the file's order."""
    data = read_json(path, "an MDETR referring-expression annotation file")
    images = field(data, "images", list, path)
    annotations = field(data, "annotations", list, path)
    entries: dict[int, tuple[str, str, tuple[int, int]]] = {}
    for i, image in enumerate(images):
        where = f"images[{i}]"
        key = field(image, "id", int, path, where)
        expect(key not in entries, path, f"{where}.id {key} appears twice")
        name = field(image, "file_name", str, path, where)
        caption = field(image, "caption", str, path, where)
        expect(caption.strip(), path, f"{where}.caption is empty")
        width, height = field(image, "width", int, path, where), field(image, "height", int, path, where)
        expect(width > 0 and height > 0, path, f"{where} has size {width}x{height}; expected positive width and height")
        entries[key] = (name, caption, (width, height))
    found: dict[int, Expression] = {}
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        key = field(ann, "image_id", int, path, where)
        expect(key in entries, path, f"{where}.image_id {key} names no entry of images")
        expect(key not in found, path, f"{where}: image {key} has a second annotation; MDETR's referring expressions "
                                        "have exactly one box each")
        name, caption, size = entries[key]
        expect("bbox" in ann, path, f'{where} has no "bbox"')
        expect("tokens_positive" in ann, path, f'{where} has no "tokens_positive"')
        box = read_box(ann["bbox"], size, path, f"{where}.bbox")
        spans = read_spans(ann["tokens_positive"], caption, path, f"{where}.tokens_positive")
        found[key] = Expression(image_dir / name, caption, size, box, spans)
    lacking = next((k for k in entries if k not in found), None)
    expect(lacking is None, path, f"image {lacking} has no annotation; every expression needs its box")
    expressions = [found[k] for k in entries]
    check_images(list(dict.fromkeys(e.image for e in expressions)), path)
    return expressions


def check_image_header(image: Path, size: tuple[int, int], listed_in: str | Path) -> None:
    """The image exists, PIL reads its header, and its size is the annotation's (w, h)."""
    if not image.is_file():
        raise UserError(f"image {image} listed in {listed_in} is missing")
    try:
        with Image.open(image) as img:
            found = img.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{image}: not a readable image ({exc}); expected a JPEG, PNG or other format PIL reads") from None
    if found != size:
        raise UserError(f"{image}: image is {found[0]}x{found[1]}, {listed_in} says {size[0]}x{size[1]}")


def load_split(root: Path, name: str, split: str) -> list[Expression]:
    path = annotation_file(root, name, split)
    if not path.is_file():
        raise UserError(f"missing {path} (or {path.name.replace(PREFIXES[0], PREFIXES[1], 1)} beside it): "
                        f"MDETR's {name} {split} annotations")
    return load_refexp(path, root / IMAGES)
