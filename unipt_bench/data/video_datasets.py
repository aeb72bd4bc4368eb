"""Video-text retrieval data as CLIP4Clip distributes it: MSR-VTT and MSVD.

MSR-VTT (folder `msrvtt/`):
    MSRVTT_data.json          {"sentences": [{"video_id": "video0", "caption": "..."}, ...], "videos": [...]}
    MSRVTT_train.9k.csv       column video_id: the 9,000 training videos (`train.format = "7k"`: MSRVTT_train.7k.csv)
    MSRVTT_JSFUSION_test.csv  columns key, vid_key, video_id, sentence: the 1,000 test pairs (the "1k-A" split)
MSVD (folder `msvd/`):
    raw-captions.pkl          {video_id: [caption, ...]}, each caption a list of words (read without unpickling code)
    train_list.txt, val_list.txt, test_list.txt   one video id per line
Videos: `<id>.<mp4|webm|avi|...>` anywhere under one of VIDEO_FOLDERS, or pre-extracted frames in `frames/<id>/`
(preferred when both exist). Training pairs every caption of a training video with it, as CLIP4Clip does
(CLIP4Clip/dataloaders/dataloader_msrvtt_retrieval.py:172-178 with --expand_msrvtt_sentences;
dataloader_msvd_retrieval.py:68-73).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .files import expect, field, read_json, read_text
from .safe_pickle import load_captions
from .video import VIDEO_SUFFIXES

# where the videos may be, under the dataset folder: CLIP4Clip's scripts read Compress_Videos/
# (train_msrvtt_tuning.sh:12); the original archives unpack to TrainValVideo/, TestVideo/ and YouTubeClips/
VIDEO_FOLDERS = ("videos", "Compress_Videos", "MSRVTT_Videos", "MSVD_Videos", "TrainValVideo", "TestVideo",
                 "YouTubeClips")
FRAMES_FOLDER = "frames"
MSRVTT_JSON, MSRVTT_TEST = "MSRVTT_data.json", "MSRVTT_JSFUSION_test.csv"
MSRVTT_TRAIN = {"9k": "MSRVTT_train.9k.csv", "7k": "MSRVTT_train.7k.csv"}
MSVD_CAPTIONS = "raw-captions.pkl"
MSVD_LISTS = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}


@dataclass
class VideoTextData:
    """Captions with the index of their video; each video a file or a folder of its frames."""

    captions: list[str]
    caption_video: list[int]
    video_ids: list[str]
    sources: list[Path]

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    def take(self, videos: int) -> VideoTextData:
        """The first `videos` videos with their captions."""
        keep = [i for i, v in enumerate(self.caption_video) if v < videos]
        return VideoTextData([self.captions[i] for i in keep], [self.caption_video[i] for i in keep],
                             self.video_ids[:videos], self.sources[:videos])

    def select(self, videos: list[int], first_caption_only: bool = False) -> VideoTextData:
        """The given videos (in that order) with their captions, or with their first caption only."""
        position = {v: k for k, v in enumerate(videos)}
        captions, caption_video, seen = [], [], set()
        for text, v in zip(self.captions, self.caption_video, strict=True):
            if v in position and not (first_caption_only and v in seen):
                captions.append(text)
                caption_video.append(position[v])
                seen.add(v)
        return VideoTextData(captions, caption_video, [self.video_ids[v] for v in videos],
                             [self.sources[v] for v in videos])


def video_index(root: Path) -> dict[str, Path]:
    """video id -> its source under `root`: a frames/<id>/ folder, else a video file in one of VIDEO_FOLDERS."""
    found: dict[str, Path] = {}
    for name in VIDEO_FOLDERS:
        folder = root / name
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in VIDEO_SUFFIXES and path.stem not in found:
                    found[path.stem] = path
    frames = root / FRAMES_FOLDER
    if frames.is_dir():
        found |= {p.name: p for p in frames.iterdir() if p.is_dir()}
    return found


def looked_in(root: Path) -> str:
    folders = [n for n in VIDEO_FOLDERS if (root / n).is_dir()]
    where = f"under {', '.join(str(root / n) for n in folders)}" if folders else f"(no video folder in {root})"
    return f"no <id>{'|'.join(VIDEO_SUFFIXES[:3])}|... {where} nor {root / FRAMES_FOLDER}/<id>/"


def with_sources(captions: list[str], caption_video: list[int], video_ids: list[str], index: dict[str, Path],
                 root: Path, listed_in: Path) -> VideoTextData:
    """Attach each video's source; a listed video without one is a one-line error naming the list."""
    sources = []
    for vid in video_ids:
        if vid not in index:
            raise UserError(f"{listed_in}: video {vid!r} is missing: {looked_in(root)}")
        sources.append(index[vid])
    expect(video_ids, listed_in, "lists no videos")
    return VideoTextData(captions, caption_video, video_ids, sources)


def read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV file with a header naming at least `columns`; every listed cell must be non-empty."""
    rows = list(csv.DictReader(io.StringIO(read_text(path, f"CSV with columns {', '.join(columns)}"))))
    header = list(rows[0]) if rows else []
    missing = [c for c in columns if c not in header]
    expect(not missing, path, f"expected a header with columns {', '.join(columns)}, got {header or 'no rows'}")
    for n, row in enumerate(rows, start=2):
        empty = next((c for c in columns if not (row.get(c) or "").strip()), None)
        expect(empty is None, path, f"line {n}: empty {empty}")
    return rows


def msrvtt_captions(path: Path) -> dict[str, list[str]]:
    """video id -> its captions, from MSRVTT_data.json's "sentences"."""
    data = read_json(path, "MSR-VTT annotations")
    sentences = field(data, "sentences", list, path)
    captions: dict[str, list[str]] = {}
    for n, sentence in enumerate(sentences):
        where = f"sentences[{n}]"
        vid = field(sentence, "video_id", str, path, where)
        captions.setdefault(vid, []).append(field(sentence, "caption", str, path, where))
    return captions


def load_msrvtt(root: Path, split: str, train_list: str = "9k", index: dict[str, Path] | None = None
                ) -> VideoTextData:
    """MSR-VTT's training videos with all their captions, or the 1k-A test pairs (one caption per video)."""
    index = video_index(root) if index is None else index
    if split == "test":
        path = root / MSRVTT_TEST
        rows = read_csv(path, ("video_id", "sentence"))
        ids = [row["video_id"].strip() for row in rows]
        expect(len(set(ids)) == len(ids), path, "a video is listed twice; expected one caption per video")
        return with_sources([row["sentence"] for row in rows], list(range(len(rows))), ids, index, root, path)
    if train_list not in MSRVTT_TRAIN:
        raise UserError(f"train.format for msrvtt must be one of {', '.join(MSRVTT_TRAIN)}, got {train_list!r}")
    path = root / MSRVTT_TRAIN[train_list]
    ids = list(dict.fromkeys(row["video_id"].strip() for row in read_csv(path, ("video_id",))))
    annotations = root / MSRVTT_JSON
    captions = msrvtt_captions(annotations)
    texts, caption_video = [], []
    for v, vid in enumerate(ids):
        expect(vid in captions, annotations, f"video {vid!r} listed in {path.name} has no sentences")
        texts += captions[vid]
        caption_video += [v] * len(captions[vid])
    return with_sources(texts, caption_video, ids, index, root, path)


def read_id_list(path: Path) -> list[str]:
    ids = [line.strip() for line in read_text(path, "video ids, one per line").splitlines() if line.strip()]
    expect(ids, path, "lists no videos; expected one video id per line")
    expect(len(set(ids)) == len(ids), path, "a video id is listed twice")
    return ids


def load_msvd(root: Path, split: str, captions: dict[str, list[str]] | None = None,
              index: dict[str, Path] | None = None) -> VideoTextData:
    """One MSVD split: its videos (from <split>_list.txt) with all their captions."""
    path = root / MSVD_LISTS[split]
    ids = read_id_list(path)
    captions = captions if captions is not None else load_captions(root / MSVD_CAPTIONS)
    texts, caption_video = [], []
    for v, vid in enumerate(ids):
        expect(vid in captions, path, f"video {vid!r} has no captions in {MSVD_CAPTIONS}")
        texts += captions[vid]
        caption_video += [v] * len(captions[vid])
    return with_sources(texts, caption_video, ids, video_index(root) if index is None else index, root, path)


def index_files(dataset: str, train_list: str = "9k") -> list[str]:
    """The index files a dataset needs (videos are checked when the index is read)."""
    if dataset == "msrvtt":
        return [MSRVTT_JSON, MSRVTT_TRAIN.get(train_list, MSRVTT_TRAIN["9k"]), MSRVTT_TEST]
    return [MSVD_CAPTIONS, *MSVD_LISTS.values()]
