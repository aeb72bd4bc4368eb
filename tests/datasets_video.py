"""Small MSR-VTT and MSVD datasets in CLIP4Clip's layout, with real encoded videos written with PyAV."""

from __future__ import annotations

import csv
import json
import os
import pickle
from pathlib import Path

import numpy as np

from .datasets import COLORS

WORDS = ("clip", "video", "scene", "footage")  # caption words that name no colour


def write_video(path: Path, rgb: tuple[int, int, int], seed: int, frames: int = 8, size: tuple[int, int] = (40, 30),
                codec: str = "mpeg4") -> Path:
    """A short clip (10 fps) of one colour with noise and a bright square moving across it, encoded with PyAV."""
    import av

    rng = np.random.default_rng(seed)
    width, height = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            pixels = np.clip(np.array(rgb)[None, None, :] + rng.integers(-20, 21, (height, width, 3)), 0, 255)
            x = (i * 4) % (width - 8)
            pixels[4:12, x : x + 8] = 255
            frame = av.VideoFrame.from_ndarray(pixels.astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def captions_for(color: str, count: int) -> list[str]:
    return [f"a {color} {WORDS[k % len(WORDS)]}" for k in range(count)]


def write_msrvtt(root: Path, train_per_color: int = 3, captions_per_video: int = 2) -> Path:
    """MSRVTT_data.json, MSRVTT_train.9k.csv, MSRVTT_JSFUSION_test.csv and videos/<id>.mp4: every video one
    colour, its captions naming it; the test split one video per colour, one caption each."""
    videos, sentences, train_ids, test_rows = [], [], [], []
    n = 0
    for split, count in (("train", train_per_color), ("test", 1)):
        for color, rgb in COLORS.items():
            for _ in range(count):
                vid = f"video{n}"
                write_video(root / "videos" / f"{vid}.mp4", rgb, seed=n)
                videos.append({"video_id": vid, "category": 0, "url": f"https://www.youtube.com/watch?v=x{n}",
                               "start time": 0.0, "end time": 1.0, "split": "train" if split == "train" else "test",
                               "id": n})
                for k, caption in enumerate(captions_for(color, captions_per_video)):
                    sentences.append({"caption": caption, "video_id": vid, "sen_id": len(sentences)})
                    if split == "test" and k == 0:
                        test_rows.append([f"ret{len(test_rows)}", f"msr{n}", vid, caption])
                if split == "train":
                    train_ids.append(vid)
                n += 1
    root.mkdir(parents=True, exist_ok=True)
    (root / "MSRVTT_data.json").write_text(json.dumps({"info": {}, "videos": videos, "sentences": sentences}))
    (root / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in train_ids))
    with (root / "MSRVTT_JSFUSION_test.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        writer.writerows(test_rows)
    return root


def write_msvd(root: Path, train_per_color: int = 3, captions_per_video: int = 3) -> Path:
    """raw-captions.pkl ({id: [[word, ...], ...]}, as CLIP4Clip's copy stores captions), train/val/test_list.txt
    and YouTubeClips/<id>.avi: one colour per video; val and test one video per colour."""
    captions: dict[str, list[list[str]]] = {}
    n = 0
    for split, count in (("train", train_per_color), ("val", 1), ("test", 1)):
        ids = []
        for color, rgb in COLORS.items():
            for _ in range(count):
                vid = f"{color}Clip{n}_{n}_{n + 5}"
                write_video(root / "YouTubeClips" / f"{vid}.avi", rgb, seed=100 + n)
                captions[vid] = [c.split() for c in captions_for(color, captions_per_video)]
                ids.append(vid)
                n += 1
        (root / f"{split}_list.txt").write_text("\n".join(ids))  # no final newline, as the published lists
    (root / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    return root


class RunsACommand:
    """Pickles as a call of os.system: what a malicious raw-captions.pkl would hold."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def malicious_captions(path: Path, marker: Path) -> Path:
    """A raw-captions.pkl whose loading with pickle.load would create `marker` (through os.system)."""
    path.write_bytes(pickle.dumps({"vid": [["a", "clip"]], "x": RunsACommand(f"touch {marker}")}))
    return path
