"""Grid features for the joint VQA transformer: a frozen CNN's last feature map, extracted once per image and
kept on disk, or read from a features folder the user already has.

CLIP-ViL feeds its transformer the final stage of CLIP RN50x4 before the attention pool (CLIP-ViL
clip/model.py:212-214, src/lxrt/modeling.py:668): 2560 channels at stride 32. Images are resized so the
shorter side is 384 and the longer at most 640, zero-padded to 384 x 640 (landscape) or 640 x 384
(otherwise), and normalised with the model's mean and std (src/tasks/vision_helpers.py:16-36 and 46-70,
src/pretrain/lxmert_data.py:133-140; sizes src/param.py:184-185): a 12 x 20 grid, 240 cells per image.
The encoder is frozen in every PETL setting, so its output is an input here.

Features folder format (docs/recipes/vqa.md): for each image folder ("part": `train2014`, `val2014`, GQA's
`images`) two files,
  <part>.npy   float16 [N, G, C] (numpy .npy): row i is image i's G grid cells (row-major) of C channels;
  <part>.json  {"format": "unipt-bench grid features", "version": 1, "image_ids": [N file stems],
                "grid": G, "dim": C, "extractor": {...}}.
Both are written atomically, the array first: a part's JSON always describes a complete array.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..atomic import atomic_file, write_atomic
from ..errors import UserError
from .files import expect, field, load_npy, read_json, typed

FORMAT, VERSION = "unipt-bench grid features", 1
BATCH = 16  # images per extractor forward


@dataclass(frozen=True)
class Extractor:
    """A frozen timm CNN whose `stage` feature map is the grid, at the reference's letterboxed image size."""

    model: str = "resnet50x4_clip"
    weights: str = "random"  # a checkpoint file timm loads into `model`, or "random" (untrained, seed 0; reported)
    stage: int = -1  # timm feature_info index; -1: the last stage
    short: int = 384  # shorter image side after resizing
    long: int = 640  # longer side cap, and the padded canvas's long side

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "pretrained": self.weights != "random"}

    def tag(self) -> str:
        """A folder name that changes whenever the features would: model, stage, size, weights' content."""
        weights = "random" if self.weights == "random" else f"ckpt-{file_digest(Path(self.weights))}"
        return f"{self.model}-stage{self.stage}-{self.short}x{self.long}-{weights}"

    def build(self) -> torch.nn.Module:
        """The frozen network (eval mode) returning the one feature map [B, C, h, w]."""
        import timm

        if not timm.is_model(self.model):
            raise UserError(f"grid features: timm has no model {self.model!r} (task option extractor)")
        options: dict[str, Any] = {"features_only": True, "out_indices": (self.stage,)}
        if self.weights != "random":
            path = Path(self.weights).expanduser()
            if not path.is_file():
                raise UserError(f"missing {path} (task option extractor_weights: a checkpoint of {self.model})")
            options |= {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}
        try:
            with torch.random.fork_rng(devices=[]):  # "random" is one fixed draw: the cache stays reproducible
                torch.manual_seed(0)
                net = timm.create_model(self.model, **options)
        except (RuntimeError, OSError, KeyError, IndexError, ValueError) as exc:
            where = self.weights if self.weights != "random" else f"timm model {self.model}"
            raise UserError(f"{where}: cannot build the grid extractor at stage {self.stage} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); expected a stage of "
                            f"{self.model}'s feature_info and a checkpoint (state dict) timm loads into it") from None
        return net.eval().requires_grad_(False)


def file_digest(path: Path) -> str:
    """First 12 hex digits of a file's SHA-256 (names the cache of features a checkpoint gives)."""
    path = path.expanduser()
    if not path.is_file():
        raise UserError(f"missing {path} (task option extractor_weights)")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def letterbox_size(width: int, height: int, short: int, long: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, canvas width, canvas height): the shorter side becomes `short` unless the
    longer would pass `long`; the canvas is long x short for landscape images, short x long otherwise."""
    size = short
    if max(width, height) / min(width, height) * short > long:
        size = round(long * min(width, height) / max(width, height))
    if width < height:
        resized = (size, int(size * height / width))
    elif width > height:
        resized = (int(size * width / height), size)
    else:
        resized = (size, size)
    canvas = (long, short) if width > height else (short, long)
    return (*resized, *canvas)


def unreadable(path: Path, exc: Exception) -> UserError:
    return UserError(f"{path}: not a readable image ({exc}); expected a JPEG, PNG or other format PIL reads")


def check_images_open(paths: list[Path]) -> None:
    """Every image file opens (its header is read, not its pixels): a broken one is named before any run starts."""
    for path in paths:
        try:
            Image.open(path).close()
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise unreadable(path, exc) from None


def letterbox(path: Path, short: int, long: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """An image file as normalised float [3, H, W] on its zero-padded canvas (padding is black before
    normalisation, as the reference pads the PIL image)."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise unreadable(path, exc) from None
    ow, oh, cw, ch = letterbox_size(*rgb.size, short, long)
    resized = rgb.resize((ow, oh), Image.BILINEAR)
    pixels = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8).view(oh, ow, 3).permute(2, 0, 1)
    canvas = torch.zeros(3, ch, cw, dtype=torch.uint8)
    top, left = math.ceil((ch - oh) / 2), math.ceil((cw - ow) / 2)  # odd padding: the extra pixel goes first
    canvas[:, top : top + oh, left : left + ow] = pixels
    return (canvas.float() / 255.0 - mean) / std  # [3, H, W]


class Extraction:
    """The extractor network loaded once, turning image files into grids [B, G, C] (float16, on the CPU)."""

    def __init__(self, extractor: Extractor) -> None:
        self.extractor = extractor
        self.net = extractor.build()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.net.to(self.device)
        config = getattr(self.net, "pretrained_cfg", None) or {}
        self.mean = torch.tensor(config.get("mean", (0.485, 0.456, 0.406)))[:, None, None]
        self.std = torch.tensor(config.get("std", (0.229, 0.224, 0.225)))[:, None, None]

    @torch.no_grad()
    def __call__(self, paths: list[Path]) -> np.ndarray:
        images = [letterbox(p, self.extractor.short, self.extractor.long, self.mean, self.std) for p in paths]
        out: list[torch.Tensor | None] = [None] * len(images)
        for shape in {tuple(i.shape) for i in images}:  # landscape and portrait canvases run apart
            rows = [k for k, image in enumerate(images) if tuple(image.shape) == shape]
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
                (maps,) = self.net(torch.stack([images[k] for k in rows]).to(self.device))  # [b, C, h, w]
            for k, grid in zip(rows, maps.flatten(2).transpose(1, 2), strict=True):  # [h*w, C]
                out[k] = grid
        return torch.stack(out).to("cpu", torch.float16).numpy()  # [B, G, C]


@dataclass
class Part:
    """One image folder's features: the memory-mapped array [N, G, C] and each image id's row."""

    array: np.ndarray
    rows: dict[str, int]
    path: Path


def read_part(folder: Path, part: str) -> Part:
    """A part of a features folder, checked against its index: one line naming the file otherwise."""
    index_path, array_path = folder / f"{part}.json", folder / f"{part}.npy"
    index = read_json(index_path, "grid features index")
    expect(isinstance(index, dict) and index.get("format") == FORMAT, index_path,
           f'not a grid features index; expected {{"format": "{FORMAT}", "version": {VERSION}, "image_ids": '
           '[...], "grid": G, "dim": C}')
    ids = [typed(i, str, index_path, f"image_ids[{n}]") for n, i in
           enumerate(field(index, "image_ids", list, index_path))]
    grid, dim = field(index, "grid", int, index_path), field(index, "dim", int, index_path)
    if not array_path.is_file():
        raise UserError(f"missing {array_path} (grid features float16 [{len(ids)}, {grid}, {dim}], listed in "
                        f"{index_path.name})")
    array = load_npy(array_path, f"expected float16 [{len(ids)}, {grid}, {dim}]")
    expect(array.shape == (len(ids), grid, dim) and array.dtype.kind == "f", array_path,
           f"grid features of shape [{', '.join(map(str, array.shape))}] ({array.dtype}); expected float "
           f"[{len(ids)}, {grid}, {dim}] (the {len(ids)} images of {index_path.name}, {grid} grid cells, {dim} channels)")
    return Part(array, {image_id: row for row, image_id in enumerate(ids)}, array_path)


def write_part(folder: Path, part: str, old: Part | None, paths: list[Path], extraction: Extraction) -> None:
    """Extract `paths` and write the part again: the old rows first, then the new ones (atomically)."""
    def batches() -> Iterator[np.ndarray]:
        for start in range(0, len(paths), BATCH):
            yield extraction(paths[start : start + BATCH])

    stream = batches()
    first = next(stream)
    grid, dim = first.shape[1:]
    old_rows = 0 if old is None else old.array.shape[0]
    expect(old is None or old.array.shape[1:] == (grid, dim), folder / f"{part}.npy",
           f"cached grids are [{', '.join(map(str, old.array.shape[1:])) if old else ''}], the extractor now gives "
           f"[{grid}, {dim}]; expected the same extractor (remove the folder to extract again)")
    ids = ([] if old is None else sorted(old.rows, key=old.rows.get)) + [p.stem for p in paths]
    with atomic_file(folder / f"{part}.npy", "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
                  "shape": (old_rows + len(paths), grid, dim)}
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, old_rows, 1024):
            f.write(np.ascontiguousarray(old.array[start : start + 1024], dtype=np.float16).tobytes())
        f.write(first.tobytes())
        for features in stream:
            f.write(features.tobytes())
    index = {"format": FORMAT, "version": VERSION, "image_ids": ids, "grid": int(grid), "dim": int(dim),
             "extractor": {**extraction.extractor.describe(), "device": extraction.device.type}}
    write_atomic(folder / f"{part}.json", json.dumps(index))


class GridStore:
    """Grid features by image file: `row(path)` is that image's [G, C] (float16, memory-mapped).

    Parts come from a user's features folder (checked, never written), or from the cache folder, where
    images missing from a part are extracted and the part rewritten (a broken cache part is extracted anew).
    """

    def __init__(self, paths: list[Path], folder: Path, extractor: Extractor | None) -> None:
        self.folder = folder
        self.extractor = extractor
        self.parts: dict[str, Part] = {}
        by_part: dict[str, dict[str, Path]] = {}
        for path in paths:
            by_part.setdefault(path.parent.name, {})[path.stem] = path
        extraction = None
        stored = {part: self.existing(part) for part in by_part}
        if extractor is not None:  # every image to extract opens, before any part is written
            check_images_open([p for part, images in sorted(by_part.items()) for image_id, p in images.items()
                               if stored[part] is None or image_id not in stored[part].rows])
        for part, images in sorted(by_part.items()):
            old = stored[part]
            missing = [p for image_id, p in images.items() if old is None or image_id not in old.rows]
            if missing and extractor is None:
                where = folder / f"{part}.json"
                if old is None:
                    raise UserError(f"missing {where} (grid features of the images in {part}/; see docs/recipes/vqa.md)")
                raise UserError(f"{where}: no features for image {missing[0].stem} ({len(missing)} of the "
                                f"{len(images)} images the questions use are absent); expected one row per image id")
            if missing:
                folder.mkdir(parents=True, exist_ok=True)
                extraction = extraction or Extraction(extractor)
                write_part(folder, part, old, missing, extraction)
                old = read_part(folder, part)
            self.parts[part] = old

    def existing(self, part: str) -> Part | None:
        """The part as stored: None when absent; a user folder's broken part is an error, the cache's is redone."""
        if not (self.folder / f"{part}.json").exists():
            return None
        try:
            return read_part(self.folder, part)
        except UserError:
            if self.extractor is None:
                raise
            return None

    def row(self, path: Path) -> np.ndarray:
        part = self.parts[path.parent.name]
        return part.array[part.rows[path.stem]]  # [G, C]

    def source(self, path: Path) -> Path:
        """The file an image's features come from (named in shape errors)."""
        return self.parts[path.parent.name].path
