"""Retrieval training data: Flickr30K / MSCOCO in the Karpathy layout or as precomp features; batches of
(caption, its image); evaluation by R@K in both directions, plus MSCOCO's 5-fold 1K protocol.

Layout under the dataset folder: `dataset_flickr30k.json` or `dataset_coco.json` with the images in
`images/` (Karpathy), or `precomp/<split>_ims.npy` and `precomp/<split>_caps.txt` (precomp; the
validation split may be called `dev`, as VSE-infinity's files call it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import TrainSpec
from ..data.images import verify_images
from ..data.retrieval import ImageTextData, load_karpathy, load_precomp
from ..errors import UserError
from .metrics import five_fold, retrieval_metrics
from .vqa_data import to_device

KARPATHY_FILES = {"flickr30k": "dataset_flickr30k.json", "mscoco": "dataset_coco.json"}


FORMATS = ("karpathy", "precomp")


def data_format(spec: TrainSpec) -> str:
    """The layout named by train.format ("" is Karpathy's JSON + images)."""
    fmt = spec.format or "karpathy"
    if fmt not in FORMATS:
        raise UserError(f"train.format must be one of {', '.join(FORMATS)} for retrieval, got {fmt!r}")
    return fmt


def missing(spec: TrainSpec, data_root: Path) -> str:
    """What the dataset lacks to train ("" when its index files are there): the one-line reason to profile instead."""
    root = data_root / (spec.path or spec.dataset)
    if data_format(spec) == "precomp":
        needed = [root / "precomp" / "train_ims.npy", root / "precomp" / "train_caps.txt"]
    else:
        needed = [root / KARPATHY_FILES.get(spec.dataset, f"dataset_{spec.dataset}.json"), root / "images"]
    absent = [str(p) for p in needed if not p.exists()]
    return f"missing {', '.join(absent)}" if absent else ""


def load_split(spec: TrainSpec, root: Path, split: str) -> ImageTextData:
    if data_format(spec) == "precomp":
        folder = root / "precomp"
        if split == "val" and not (folder / "val_ims.npy").exists():
            split = "dev"
        return load_precomp(folder, split)
    name = KARPATHY_FILES.get(spec.dataset)
    if name is None:
        raise UserError(f"the retrieval task reads flickr30k or mscoco, not {spec.dataset!r}")
    json_path = root / name
    if not json_path.is_file():
        raise UserError(f"missing {json_path}: the Karpathy layout needs {name} and an images/ folder beside it")
    return load_karpathy(json_path, root / "images", split)


def take(data: ImageTextData, images: int) -> ImageTextData:
    """The first `images` images with their captions."""
    keep = [i for i, image in enumerate(data.caption_image) if image < images]
    return ImageTextData(
        [data.captions[i] for i in keep], [data.caption_image[i] for i in keep],
        None if data.image_paths is None else data.image_paths[:images],
        None if data.features is None else data.features[:images],
    )


@torch.no_grad()
def encode_all(model: Any, tower: str, values: list[Any], inputs: dict[str, Any], batch_size: int,
               device: Any) -> torch.Tensor:
    """One tower's embeddings of every value, `batch_size` at a time, on the CPU: [len(values), E]."""
    chunks = [values[i : i + batch_size] for i in range(0, len(values), batch_size)]
    return torch.cat([model.encode(tower, to_device(inputs[tower](c), device)).float().cpu() for c in chunks])


class RetrievalData:
    selection = "rsum"

    def __init__(self, spec: TrainSpec, data_root: Path, seed: int, modalities: dict[str, str]) -> None:
        root = data_root / (spec.path or spec.dataset)
        self.dataset = spec.dataset
        self.index = root / KARPATHY_FILES.get(spec.dataset, "") if data_format(spec) == "karpathy" else root / "precomp"
        self.splits = {split: load_split(spec, root, split) for split in ("train", "val", "test")}
        if spec.max_train:
            self.splits["train"] = take(self.splits["train"], spec.max_train)
        if spec.max_eval:
            for split in ("val", "test"):
                self.splits[split] = take(self.splits[split], spec.max_eval)
        image_kind = "features" if self.splits["train"].features is not None else "image"
        self.text = [n for n, m in modalities.items() if m == "text"]
        self.image = [n for n, m in modalities.items() if m == image_kind]
        if len(self.text) != 1 or len(self.image) != 1:
            raise UserError(f"retrieval training needs one text tower and one {image_kind} tower, got {modalities}")

    def size(self, split: str) -> int:
        return len(self.splits[split].captions)

    def task_options(self) -> dict[str, Any]:
        return {}

    def image_values(self, data: ImageTextData, images: list[int]) -> list[Any]:
        return [data.image_paths[i] for i in images] if data.features is None else [data.features[i] for i in images]

    def batch(self, split: str, rows: list[int], inputs: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        data = self.splits[split]
        images = [data.caption_image[i] for i in rows]
        return {
            self.text[0]: inputs[self.text[0]]([data.captions[i] for i in rows]),
            self.image[0]: inputs[self.image[0]](self.image_values(data, images)),
        }

    @torch.no_grad()
    def evaluate(self, model: Any, split: str, inputs: dict[str, Any], batch_size: int, device: Any) -> dict[str, float]:
        data = self.splits[split]
        (text,), (image,) = self.text, self.image
        images = encode_all(model, image, self.image_values(data, list(range(data.num_images))), inputs, batch_size,
                            device)  # [I, E]
        captions = encode_all(model, text, data.captions, inputs, batch_size, device)  # [T, E]
        similarity = images @ captions.t()
        caption_image = torch.tensor(data.caption_image)
        metrics = retrieval_metrics(similarity, caption_image)
        if self.dataset == "mscoco" and data.num_images >= 5000 and data.num_images % 1000 == 0:
            metrics |= {f"1k_{k}": v for k, v in five_fold(similarity, caption_image, data.num_images // 1000).items()}
        return metrics

    def baseline(self, split: str) -> dict[str, float]:
        """Chance: the expected R@K of a random ranking (5 captions per image are not assumed)."""
        data = self.splits[split]
        per_image = len(data.captions) / data.num_images
        i2t = {k: min(1.0, k * per_image / len(data.captions)) * 100 for k in (1, 5, 10)}
        t2i = {k: min(1.0, k / data.num_images) * 100 for k in (1, 5, 10)}
        return {"rsum": sum(i2t.values()) + sum(t2i.values())}

    def verify(self) -> None:
        """Every image of every split decodes (run once, before training starts, by `jobs.check_data`)."""
        for data in self.splits.values():
            if data.image_paths is not None:
                verify_images(data.image_paths, self.index)

    def describe(self) -> dict[str, Any]:
        return {"splits": {k: {"images": v.num_images, "captions": len(v.captions)} for k, v in self.splits.items()}}
