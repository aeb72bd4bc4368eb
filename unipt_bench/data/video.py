"""Video clips -> F frames sampled uniformly, resized and centre-cropped to S x S as CLIP preprocesses images:
uint8 [F, 3, S, S], decoded with PyAV or read from a folder of pre-extracted frames, and cached on disk.

Sampling: frame indices linspace(0, n - 1, F) rounded down over the clip's n frames, as CLIP4Clip picks its
frames (CLIP4Clip/dataloaders/dataloader_msrvtt_retrieval.py:273, slice_framepos 2). A clip with fewer than F
frames repeats some, so every clip gives exactly F. CLIP4Clip first keeps one frame per second
(dataloaders/rawvideo_util.py:43-65, feature_framerate 1) and masks the missing frames of clips shorter than F
seconds; here every frame is a candidate and no frame is masked (docs/recipes/video.md).

Frame cache (one file per clip and shape, written atomically, read with allow_pickle=False):
    <cache folder>/<F>x<S>/<clip name>.<digest>.npy    a NumPy array, uint8 [F, 3, S, S] (RGB, channels first)
The digest (16 hex digits of a SHA-256) covers the format version, F, S, the source's absolute path and its
size and modification time (for a frame folder: each image file's name, size and time), so an edited video is
decoded again. A cache file of the wrong shape or dtype, or one that does not load, is decoded again and
replaced. A cache folder that cannot be written is skipped with one warning. Before training, every clip is
checked once (it opens and its first frame decodes: verify_clips), leaving an empty marker under
<cache folder>/checked/.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..atomic import atomic_file
from ..errors import UserError

# CLIP's image statistics, as CLIP4Clip normalises frames (CLIP4Clip/dataloaders/rawvideo_util.py:22)
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CACHE_VERSION = 1  # part of every cache digest: bump it when the decoded frames would change


def uniform_indices(total: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over [0, total - 1], rounded down (repeats when total < count)."""
    return np.linspace(0, total - 1, num=count).astype(int).tolist()


def fit_square(image: Image.Image, size: int) -> np.ndarray:
    """Shorter side resized to `size` (bicubic), centre crop `size` x `size`: uint8 [3, size, size].

    CLIP's preprocessing, as CLIP4Clip applies it to each frame (rawvideo_util.py:17-23): torchvision's
    Resize(size, BICUBIC) then CenterCrop(size), whose sizes and offsets are computed the same way here.
    """
    width, height = image.size
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    resized = image.convert("RGB").resize(new, Image.BICUBIC)
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    crop = resized.crop((left, top, left + size, top + size))
    return np.asarray(crop, dtype=np.uint8).transpose(2, 0, 1)  # [3, S, S]


def decode_video(path: Path, frames: int, size: int) -> np.ndarray:
    """`frames` frames of the video file at `path`, sampled uniformly: uint8 [F, 3, S, S].

    The frames are counted from the demuxed packets (no decoding), then one decoding pass keeps the chosen ones;
    when fewer frames decode than packets were counted, a second pass samples from those that did.
    """
    try:
        import av
    except ImportError:
        raise UserError(f"{path}: decoding videos needs PyAV (pip install 'unipt-bench[video]'), or give "
                        "pre-extracted frames in frames/<video id>/") from None

    def broken(reason: object) -> UserError:
        return UserError(f"{path}: not a decodable video ({reason}); expected a video file FFmpeg reads "
                         f"({', '.join(VIDEO_SUFFIXES)})")

    def read(total: int) -> tuple[list[np.ndarray], int]:
        wanted = uniform_indices(total, frames)
        picked: dict[int, np.ndarray] = {}
        decoded = 0
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for decoded, frame in enumerate(container.decode(stream), start=1):  # noqa: B007
                if decoded - 1 in wanted:
                    picked[decoded - 1] = fit_square(frame.to_image(), size)
                if decoded > wanted[-1]:
                    break
        return [picked[i] for i in wanted if i in picked], decoded

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise broken("no video stream")
            stream = container.streams.video[0]
            total = sum(1 for packet in container.demux(stream) if packet.size)
        if total == 0:
            raise broken("no frames")
        chosen, decoded = read(total)
        if len(chosen) < frames:  # fewer frames decode than packets were counted
            if decoded == 0:
                raise broken("no frame decodes")
            chosen, _ = read(decoded)
    except UserError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError, RuntimeError) as exc:
        raise broken(f"{type(exc).__name__}: {exc}") from None
    return np.stack(chosen)


def probe_video(path: Path) -> None:
    """Check that `path` opens as a video and its first frame decodes (a fast check before training starts: a
    clip broken further on still fails, in one line, when it is first read)."""
    try:
        import av
    except ImportError:
        raise UserError(f"{path}: decoding videos needs PyAV (pip install 'unipt-bench[video]'), or give "
                        "pre-extracted frames in frames/<video id>/") from None
    reason = ""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                reason = "no video stream"
            elif next(container.decode(video=0), None) is None:
                reason = "no frame decodes"
    except (av.FFmpegError, OSError, ValueError, IndexError, RuntimeError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    if reason:
        raise UserError(f"{path}: not a decodable video ({reason}); expected a video file FFmpeg reads "
                        f"({', '.join(VIDEO_SUFFIXES)})")


def natural_key(name: str) -> list[object]:
    """Sort key that orders frame_2.jpg before frame_10.jpg."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def frame_files(folder: Path) -> list[Path]:
    """The image files of a pre-extracted frame folder, in natural name order."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: natural_key(p.name))


def read_frame_folder(folder: Path, frames: int, size: int) -> np.ndarray:
    """`frames` images of a folder of pre-extracted frames (in name order), sampled uniformly: uint8 [F, 3, S, S]."""
    files = frame_files(folder)
    if not files:
        raise UserError(f"{folder}: no frames; expected image files ({', '.join(FRAME_SUFFIXES)}) of one clip")
    out = []
    for i in uniform_indices(len(files), frames):
        try:
            with Image.open(files[i]) as image:
                out.append(fit_square(image, size))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise UserError(f"{files[i]}: not a readable frame image ({exc})") from None
    return np.stack(out)


def source_digest(source: Path, frames: int, size: int) -> str:
    """What a cached copy of `source` at F x S depends on (see the module docstring)."""
    parts = [f"v{CACHE_VERSION}", str(frames), str(size), str(source.resolve())]
    entries = frame_files(source) if source.is_dir() else [source]
    for entry in entries:
        stat = entry.stat()
        parts += [entry.name, str(stat.st_size), str(stat.st_mtime_ns)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def check_source(source: Path) -> None:
    """A frame folder holds frames; a video file opens and its first frame decodes."""
    if source.is_dir():
        if not frame_files(source):
            raise UserError(f"{source}: no frames; expected image files ({', '.join(FRAME_SUFFIXES)}) of one clip")
    elif not source.is_file():
        raise UserError(f"missing video {source}")
    else:
        probe_video(source)


def verify_clips(sources: list[Path], cache: Path | None, workers: int = 4) -> int:
    """Check every clip (check_source) that was not checked before; returns how many were checked now.

    A clip that passes leaves an empty marker `<cache>/checked/<clip name>.<digest>` (the digest of the frame cache,
    without a shape), so later runs skip it until the file changes.
    """
    def marker(source: Path) -> Path | None:
        return None if cache is None else cache / "checked" / f"{source.stem}.{source_digest(source, 0, 0)}"

    todo = [s for s in dict.fromkeys(sources) if not ((m := marker(s)) is not None and m.exists())]

    def check(source: Path) -> None:
        check_source(source)
        mark = marker(source)
        if mark is not None:
            try:
                mark.parent.mkdir(parents=True, exist_ok=True)
                mark.touch()
            except OSError:
                pass  # an unwritable cache only means checking again next time

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(check, todo))  # the first failure, in clip order, is raised
    return len(todo)


@dataclass(frozen=True)
class VideoClip:
    """One clip to encode: a video file or a folder of its frames, and the frame cache folder (None: no cache)."""

    source: Path
    cache: Path | None = None


class VideoFrames:
    """Clips -> uint8 [F, 3, S, S] each (decoded once, then read from the frame cache); counts both."""

    def __init__(self, frames: int, size: int) -> None:
        self.frames, self.size = frames, size
        self.stats = {"decoded": 0, "cached": 0}
        self.unwritable: set[Path] = set()

    def cache_path(self, clip: VideoClip) -> Path | None:
        if clip.cache is None or clip.cache in self.unwritable:
            return None
        digest = source_digest(clip.source, self.frames, self.size)
        return clip.cache / f"{self.frames}x{self.size}" / f"{clip.source.stem}.{digest}.npy"

    def read_cached(self, path: Path) -> np.ndarray | None:
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, OverflowError, TypeError, MemoryError):
            return None  # absent or unreadable: decode again
        if array.dtype != np.uint8 or array.shape != (self.frames, 3, self.size, self.size):
            return None
        return array

    def write_cached(self, path: Path, array: np.ndarray, folder: Path) -> None:
        try:
            with atomic_file(path, "wb") as f:
                np.save(f, array, allow_pickle=False)
        except OSError as exc:
            self.unwritable.add(folder)
            warnings.warn(f"frame cache {folder} cannot be written ({exc.strerror or exc}); clips are decoded "
                          "every time they are read", stacklevel=3)

    def decode(self, clip: VideoClip) -> np.ndarray:
        if clip.source.is_dir():
            return read_frame_folder(clip.source, self.frames, self.size)
        return decode_video(clip.source, self.frames, self.size)

    def __call__(self, clip: VideoClip) -> torch.Tensor:
        """One clip's frames, uint8 [F, 3, S, S]."""
        if not clip.source.exists():
            raise UserError(f"missing video {clip.source}")
        path = self.cache_path(clip)
        array = self.read_cached(path) if path is not None else None
        if array is not None:
            self.stats["cached"] += 1
        else:
            array = self.decode(clip)
            self.stats["decoded"] += 1
            if path is not None:
                self.write_cached(path, array, clip.cache)
        return torch.from_numpy(np.ascontiguousarray(array))

    def batch(self, clips: list[VideoClip]) -> torch.Tensor:
        """uint8 [B, F, 3, S, S]."""
        return torch.stack([self(clip) for clip in clips])
