"""Grounding training data: RefCOCO / RefCOCO+ / RefCOCOg expressions, batches of (image, expression) with
the referred box and tokens, and accuracy at IoU >= 0.5 of the top-1 box.

Splits: train, val (selection) and the test splits of the dataset: testA and testB for RefCOCO and RefCOCO+
(people / other objects, UNC splits), test for RefCOCOg (UMD split). Chance is the centre box: a box of the
training split's mean relative size at every image's centre.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import TrainSpec
from ..data.refcoco import ANNOTATIONS, IMAGES, Expression, annotation_file, check_image_header, load_split
from ..errors import UserError
from .boxes import box_iou, from_xywh, generalized_iou
from .grounding import TOKEN_CLASSES
from .vqa_data import to_device

TEST_SPLITS = {"refcoco": ("val", "testA", "testB"), "refcoco+": ("val", "testA", "testB"), "refcocog": ("val", "test")}
IOU = 0.5  # a prediction is correct at IoU >= 0.5 (MDETR/datasets/refexp.py:21, thresh_iou)


def dataset_name(spec: TrainSpec) -> str:
    if spec.dataset not in TEST_SPLITS:
        raise UserError(f"the grounding task reads {', '.join(TEST_SPLITS)}, not {spec.dataset!r}")
    return spec.dataset


def missing(spec: TrainSpec, data_root: Path) -> str:
    """What the dataset lacks to train ("" when its annotation files and image folder are there)."""
    name = dataset_name(spec)
    root = data_root / (spec.path or spec.dataset)
    needed = [annotation_file(root, name, split) for split in ("train", *TEST_SPLITS[name])] + [root / IMAGES]
    absent = [str(p) for p in needed if not p.exists()]
    return f"missing {', '.join(absent)}" if absent else ""


def accuracy(predicted: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    """Percent of corner boxes [N, 4] found: IoU >= 0.5 (the RefCOCO metric), and MDETR's own evaluator's
    test, generalised IoU >= 0.5 (MDETR/datasets/refexp.py:72-74), which only counts tighter boxes."""
    n = max(len(true), 1)
    return {"accuracy": (box_iou(predicted, true) >= IOU).sum().item() * 100 / n,
            "accuracy_giou": (generalized_iou(predicted, true) >= IOU).sum().item() * 100 / n}


def centre_boxes(sizes: torch.Tensor, relative: tuple[float, float]) -> torch.Tensor:
    """Corner boxes [N, 4] of `relative` (w, h) size at the centre of images of `sizes` [N, 2] (w, h)."""
    w, h = sizes[:, 0] * relative[0], sizes[:, 1] * relative[1]
    cx, cy = sizes[:, 0] / 2, sizes[:, 1] / 2
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)


class GroundingData:
    selection = "accuracy"

    def __init__(self, spec: TrainSpec, data_root: Path, seed: int, modalities: dict[str, str]) -> None:
        name = dataset_name(spec)
        root = data_root / (spec.path or spec.dataset)
        self.name, self.test_splits = name, TEST_SPLITS[name]
        self.files = {split: str(annotation_file(root, name, split)) for split in ("train", *TEST_SPLITS[name])}
        self.splits = {split: load_split(root, name, split) for split in ("train", *TEST_SPLITS[name])}
        if spec.max_train:
            self.splits["train"] = self.splits["train"][: spec.max_train]
        if spec.max_eval:
            for split in TEST_SPLITS[name]:
                self.splits[split] = self.splits[split][: spec.max_eval]
        towers = [n for n, m in modalities.items() if m == "image+text"]
        if len(towers) != 1 or len(modalities) != 1:
            raise UserError(f"grounding training needs one image+text tower (MDETR), got {modalities}")
        self.tower = towers[0]
        train = self.splits["train"]
        self.centre = (sum(e.box[2] / e.size[0] for e in train) / len(train),
                       sum(e.box[3] / e.size[1] for e in train) / len(train))  # mean relative (w, h)

    def verify(self) -> None:
        """Every image of every split is there, and its header gives the size its annotation states (loading
        checks the first 20 of each file; this reads the headers of the rest, not their pixels)."""
        for split, data in self.splits.items():
            checked: set[Path] = set()
            for e in data:
                if e.image not in checked:
                    checked.add(e.image)
                    check_image_header(e.image, e.size, self.files[split])

    def split(self, split: str) -> list[Expression]:
        """A split's expressions; "test" names testA where there is no test split (for callers that know one)."""
        if split == "test" and "test" not in self.splits:
            split = self.test_splits[1]
        return self.splits[split]

    def size(self, split: str) -> int:
        return len(self.split(split))

    def task_options(self) -> dict[str, Any]:
        return {}

    def batch(self, split: str, rows: list[int], inputs: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        data = self.split(split)
        items = [data[i] for i in rows]
        encode = inputs[self.tower]
        joint = encode.joint  # data/image_text.py: ImageTextInputs
        return {
            self.tower: encode([(e.image, e.caption, e.size) for e in items]),
            "targets": {
                "boxes": torch.stack([joint.letterbox(e.size).to_canvas(e.box) for e in items]),  # [B, 4]
                "positive": torch.stack([joint.positive(e.caption, e.spans, TOKEN_CLASSES) for e in items]),
            },
        }

    @torch.no_grad()
    def evaluate(self, model: Any, split: str, inputs: dict[str, Any], batch_size: int, device: Any) -> dict[str, float]:
        data = self.split(split)
        joint = inputs[self.tower].joint
        predicted = []
        for start in range(0, len(data), batch_size):
            rows = list(range(start, min(start + batch_size, len(data))))
            boxes, _ = model.predict(to_device(self.batch(split, rows, inputs), device))
            predicted += [joint.letterbox(data[i].size).to_image(box) for i, box in zip(rows, boxes.float().cpu(),
                                                                                        strict=True)]
        true = from_xywh(torch.tensor([e.box for e in data], dtype=torch.float64))
        return accuracy(torch.stack(predicted).double(), true)

    def baseline(self, split: str) -> dict[str, float]:
        """The centre box: the training split's mean relative size, centred in every image."""
        data = self.split(split)
        sizes = torch.tensor([e.size for e in data], dtype=torch.float64)
        true = from_xywh(torch.tensor([e.box for e in data], dtype=torch.float64))
        return {**accuracy(centre_boxes(sizes, self.centre), true), "centre_box": list(self.centre)}

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.name, "splits": {k: len(v) for k, v in self.splits.items()},
                "test_splits": list(self.test_splits), "files": self.files, "layout": f"{ANNOTATIONS}/, {IMAGES}/",
                "metric": "accuracy: % of expressions whose top-1 box has IoU >= 0.5 with the referred box "
                          "(accuracy_giou: generalised IoU >= 0.5, MDETR's evaluator)"}
