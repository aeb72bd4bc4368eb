"""Video-text retrieval training data: MSR-VTT and MSVD in CLIP4Clip's layout (data/video_datasets.py); batches
of (caption, its video's frames); evaluation by R@1/5/10, median and mean rank in both directions, and Rsum.

Model selection. CLIP4Clip evaluates the test split after every epoch and keeps the best epoch
(CLIP4Clip/main_task_retrieval.py:580-583); MSR-VTT's layout has no other held-out split. With
`train.val_size = 0` (the suites' recipe) the test split is also the validation split, as there. With
`val_size > 0`, MSR-VTT holds out that many training videos (one caption each, like its 1k-A test) and MSVD
validates on its val_list.txt.

Frames are cached on disk (data/video.py) under `<dataset folder>/.frame-cache/`, or under the folder named by
the environment variable UNIPT_BENCH_FRAME_CACHE.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..config import TrainSpec
from ..data.safe_pickle import load_captions
from ..data.video import VideoClip, verify_clips
from ..data.video_datasets import (
    FRAMES_FOLDER,
    MSVD_CAPTIONS,
    VIDEO_FOLDERS,
    VideoTextData,
    index_files,
    load_msrvtt,
    load_msvd,
    video_index,
)
from ..errors import UserError
from .metrics import KS, video_retrieval_metrics
from .retrieval_data import encode_all

DATASETS = ("msrvtt", "msvd")
CACHE_ENV = "UNIPT_BENCH_FRAME_CACHE"


def dataset_root(spec: TrainSpec, data_root: Path) -> Path:
    if spec.dataset not in DATASETS:
        raise UserError(f"the video-retrieval task reads {' or '.join(DATASETS)}, not {spec.dataset!r}")
    if spec.dataset == "msvd" and spec.format:
        raise UserError(f"train.format does not apply to msvd (CLIP4Clip's layout is the only one), got {spec.format!r}")
    return data_root / (spec.path or spec.dataset)


def missing(spec: TrainSpec, data_root: Path) -> str:
    """What the dataset lacks to train ("" when its index files and a video or frame folder are there). A broken
    index (a list naming a video that has no file, a captions pickle holding anything but strings) and a clip that
    does not decode are one-line errors when the data are loaded and verified, before any run starts."""
    root = dataset_root(spec, data_root)
    absent = [str(root / name) for name in index_files(spec.dataset, spec.format or "9k") if not (root / name).exists()]
    if not any((root / name).is_dir() for name in (*VIDEO_FOLDERS, FRAMES_FOLDER)):
        absent.append(f"{root / 'videos'} (or {', '.join(VIDEO_FOLDERS[1:])}, {FRAMES_FOLDER}/<video id>/)")
    return f"missing {', '.join(absent)}" if absent else ""


def hold_out(data: VideoTextData, videos: int, seed: int) -> tuple[VideoTextData, VideoTextData]:
    """(train, val): `videos` training videos, chosen by the seed, validate with their first caption each."""
    if not 0 < videos < data.num_videos:
        raise UserError(f"train.val_size {videos} must be between 1 and {data.num_videos - 1} (training videos) "
                        "for msrvtt, or 0 to validate on the test split as CLIP4Clip does")
    order = torch.randperm(data.num_videos, generator=torch.Generator().manual_seed(seed)).tolist()
    return data.select(sorted(order[videos:])), data.select(sorted(order[:videos]), first_caption_only=True)


def load_splits(spec: TrainSpec, root: Path, seed: int) -> dict[str, VideoTextData]:
    index = video_index(root)
    if spec.dataset == "msrvtt":
        train = load_msrvtt(root, "train", spec.format or "9k", index)
        test = load_msrvtt(root, "test", index=index)
        train, val = hold_out(train, spec.val_size, seed) if spec.val_size else (train, test)
    else:
        captions = load_captions(root / MSVD_CAPTIONS)
        train, test = load_msvd(root, "train", captions, index), load_msvd(root, "test", captions, index)
        val = load_msvd(root, "val", captions, index) if spec.val_size else test
    return {"train": train, "val": val, "test": test}


class VideoRetrievalData:
    selection = "rsum"
    test_splits = ("test",)

    def __init__(self, spec: TrainSpec, data_root: Path, seed: int, modalities: dict[str, str]) -> None:
        root = dataset_root(spec, data_root)
        self.splits = load_splits(spec, root, seed)
        self.validation = "the test split" if self.splits["val"] is self.splits["test"] else "a held-out split"
        if spec.max_train:
            self.splits["train"] = self.splits["train"].take(spec.max_train)
        if spec.max_eval:
            for split in ("val", "test"):
                self.splits[split] = self.splits[split].take(spec.max_eval)
        self.cache = Path(os.environ.get(CACHE_ENV) or root / ".frame-cache")
        self.text = [n for n, m in modalities.items() if m == "text"]
        self.video = [n for n, m in modalities.items() if m == "video"]
        if len(self.text) != 1 or len(self.video) != 1:
            raise UserError(f"video retrieval training needs one text tower and one video tower, got {modalities}")

    def size(self, split: str) -> int:
        return len(self.splits[split].captions)

    def task_options(self) -> dict[str, Any]:
        return {}

    def clips(self, data: VideoTextData, videos: list[int]) -> list[VideoClip]:
        return [VideoClip(data.sources[v], self.cache) for v in videos]

    def batch(self, split: str, rows: list[int], inputs: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        """Captions `rows` of the split with their videos (a video appears once per caption in the batch)."""
        data = self.splits[split]
        (text,), (video,) = self.text, self.video
        return {
            text: inputs[text]([data.captions[i] for i in rows]),
            video: inputs[video](self.clips(data, [data.caption_video[i] for i in rows])),
        }

    @torch.no_grad()
    def evaluate(self, model: Any, split: str, inputs: dict[str, Any], batch_size: int, device: Any) -> dict[str, float]:
        data = self.splits[split]
        (text,), (video,) = self.text, self.video
        videos = encode_all(model, video, self.clips(data, list(range(data.num_videos))), inputs, batch_size,
                            device)  # [V, E]
        captions = encode_all(model, text, data.captions, inputs, batch_size, device)  # [T, E]
        return video_retrieval_metrics(captions @ videos.t(), torch.tensor(data.caption_video))

    def baseline(self, split: str) -> dict[str, float]:
        """Chance: a random ranking of V videos gives R@K = K / V and a mean (and expected median) rank of
        (V + 1) / 2 in both directions (v2t exactly so with one caption per video)."""
        v = self.splits[split].num_videos
        recall = {f"r{k}": min(1.0, k / v) * 100 for k in KS}
        per_direction = recall | {"mdr": (v + 1) / 2, "mnr": (v + 1) / 2}
        out = {f"{d}_{k}": x for d in ("t2v", "v2t") for k, x in per_direction.items()}
        return out | {"rsum": 2 * sum(recall.values())}

    def verify(self) -> None:
        """Every clip of every split opens and its first frame decodes (once, before training: jobs.check_data)."""
        verify_clips([source for data in self.splits.values() for source in data.sources], self.cache)

    def describe(self) -> dict[str, Any]:
        return {"splits": {k: {"videos": v.num_videos, "captions": len(v.captions)} for k, v in self.splits.items()},
                "validation": self.validation,
                "frame_cache": str(self.cache)}
