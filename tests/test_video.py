"""Video-text retrieval on MSR-VTT and MSVD in CLIP4Clip's layout: metrics against hand-computed values, the
restricted unpickler, PyAV decoding of real encoded videos, the frame cache, one-line errors for bad input, tiny
models that beat chance, and the command line end to end."""

from __future__ import annotations

import copyreg
import json
import math
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unipt_bench.config import RunSpec, TowerSpec
from unipt_bench.data import video as video_module
from unipt_bench.data.safe_pickle import load_captions, load_plain
from unipt_bench.data.video import VideoClip, VideoFrames, decode_video, read_frame_folder, uniform_indices
from unipt_bench.data.video_datasets import load_msrvtt, load_msvd
from unipt_bench.errors import UserError
from unipt_bench.profile import RunOptions
from unipt_bench.tasks.metrics import video_retrieval_metrics
from unipt_bench.tasks.retrieval import LogitScale
from unipt_bench.tasks.video_data import VideoRetrievalData, missing
from unipt_bench.train import train_run

from .datasets import COLORS
from .datasets_video import malicious_captions, write_msrvtt, write_msvd, write_video

pytest.importorskip("av")

TOWERS = [TowerSpec("video", "tiny-clip-frames", pooling="cls"),
          TowerSpec("text", "tiny-clip-text", shape={"seq_len": 8}, pooling="eot")]
MODALITIES = {"video": "video", "text": "text"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("video-data")
    write_msrvtt(root / "msrvtt")
    write_msvd(root / "msvd")
    return root


def copy_dataset(data_root: Path, name: str, tmp_path: Path) -> Path:
    """A private copy of one fixture dataset, to break."""
    shutil.copytree(data_root / name, tmp_path / name, ignore=shutil.ignore_patterns(".frame-cache"))
    return tmp_path / name


def train_spec(dataset: str, **train) -> RunSpec:
    return RunSpec(suite="t", config="c", label="full", method="full", method_options={}, task="video-retrieval",
                   task_options={"embed_dim": 32}, towers=TOWERS, batch=8, gpus=1, steps=2, seed=0, mode="cpu",
                   train={"dataset": dataset, "val_size": 0, **train})


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# -- metrics -----------------------------------------------------------------------------------------


def test_video_metrics_by_hand_one_caption_per_video() -> None:
    sim = torch.tensor([[0.9, 0.1, 0.2, 0.3],  # caption 0: its video first: rank 1
                        [0.8, 0.7, 0.1, 0.2],  # caption 1: one wrong above: rank 2
                        [0.5, 0.6, 0.4, 0.1],  # caption 2: two wrong above: rank 3
                        [0.9, 0.8, 0.7, 0.6]])  # caption 3: three wrong above: rank 4
    m = video_retrieval_metrics(sim, torch.arange(4))
    assert (m["t2v_r1"], m["t2v_r5"], m["t2v_r10"]) == (25.0, 100.0, 100.0)
    assert m["t2v_mdr"] == 2.5  # median of 1, 2, 3, 4: the mean of the middle two
    assert m["t2v_mnr"] == 2.5
    # videos (columns) ranking the captions: video 0 -> 0.9 vs 0.8, 0.5, 0.9: a tie counts against: rank 2;
    # video 1 -> 0.7 vs 0.1, 0.6, 0.8: rank 2; video 2 -> 0.4 vs 0.2, 0.1, 0.7: rank 2; video 3 -> 0.6: rank 1
    assert (m["v2t_r1"], m["v2t_r5"]) == (25.0, 100.0)
    assert (m["v2t_mdr"], m["v2t_mnr"]) == (2.0, 1.75)
    assert m["rsum"] == 25 + 100 + 100 + 25 + 100 + 100


def test_video_to_text_scores_each_video_by_its_best_caption() -> None:
    # 3 videos; captions 0, 1 of video 0, caption 2 of video 1, captions 3, 4 of video 2
    sim = torch.tensor([[0.2, 0.1, 0.0],
                        [0.9, 0.5, 0.3],
                        [0.4, 0.6, 0.7],
                        [0.1, 0.2, 0.8],
                        [0.3, 0.9, 0.2]])
    caption_video = torch.tensor([0, 0, 1, 2, 2])
    m = video_retrieval_metrics(sim, caption_video)
    # t2v ranks: 1, 1, 2 (caption 2: 0.7 above its 0.6), 1, 3 (caption 4: 0.3 and 0.9 above its 0.2)
    assert m["t2v_r1"] == pytest.approx(60.0) and m["t2v_mdr"] == 1.0 and m["t2v_mnr"] == pytest.approx(8 / 5)
    # groups (rows: videos; columns: caption groups, each its best caption):
    # video 0: [max(.2,.9)=.9, .4, max(.1,.3)=.3] -> rank 1; video 1: [.5, .6, .9] -> rank 2;
    # video 2: [.3, .7, .8] -> rank 1
    assert m["v2t_r1"] == pytest.approx(200 / 3) and (m["v2t_mdr"], m["v2t_mnr"]) == (1.0, pytest.approx(4 / 3))


def test_all_equal_scores_rank_last() -> None:
    m = video_retrieval_metrics(torch.zeros(3, 3), torch.arange(3))
    assert m["t2v_r1"] == m["v2t_r1"] == 0.0 and m["t2v_mdr"] == m["v2t_mnr"] == 3.0


# -- the captions pickle -----------------------------------------------------------------------------


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path) -> None:
    marker = tmp_path / "ran"
    path = malicious_captions(tmp_path / "raw-captions.pkl", marker)
    with pytest.raises(UserError) as exc:
        load_captions(path)
    assert str(path) in one_line(exc) and "system" in str(exc.value) and "refused" in str(exc.value)
    assert not marker.exists()


def test_a_pickle_naming_a_class_through_the_extension_registry_is_refused(tmp_path) -> None:
    code = 0x7FFFFFF0
    copyreg.add_extension("os", "system", code)
    try:
        path = tmp_path / "ext.pkl"
        path.write_bytes(b"\x80\x02\x84" + code.to_bytes(4, "little") + b".")  # EXT4 <code>, STOP
        with pytest.raises(UserError, match="refused.*system"):
            load_plain(path, "plain data")
    finally:
        copyreg.remove_extension("os", "system", code)


@pytest.mark.parametrize("content, problem", [
    ({"vid": [["a", 3]]}, "entry 'vid'[0]: words must be strings, got a int"),
    ({"vid": "a clip"}, "entry 'vid' must be a list of captions, got a str"),
    ({"vid": [b"bytes"]}, "entry 'vid'[0] must be a string or a list of word strings, got a bytes"),
    ({7: ["a clip"]}, "video ids must be strings"),
    (["a clip"], "got a list"),
    ({"vid": []}, "has no captions"),
])
def test_a_pickle_holding_anything_but_strings_is_one_line(tmp_path, content, problem) -> None:
    path = tmp_path / "raw-captions.pkl"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(UserError) as exc:
        load_captions(path)
    assert one_line(exc).startswith(f"{path}: ") and problem in str(exc.value)


def test_captions_as_word_lists_or_strings(tmp_path) -> None:
    path = tmp_path / "raw-captions.pkl"
    path.write_bytes(pickle.dumps({"a": [["a", "red", "clip"], "two words"], "b": (["x"],)}, protocol=0))
    assert load_captions(path) == {"a": ["a red clip", "two words"], "b": ["x"]}
    path.write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="not a readable pickle"):
        load_captions(path)


# -- decoding ----------------------------------------------------------------------------------------


def ramp_video(path: Path, frames: int, codec: str = "mpeg4") -> Path:
    """Frame i is a flat grey of level 10 * i."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for i in range(frames):
            pixels = np.full((32, 48, 3), 10 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_uniform_indices_by_hand() -> None:
    assert uniform_indices(20, 4) == [0, 6, 12, 19]  # linspace 0, 6.33, 12.67, 19 rounded down
    assert uniform_indices(12, 12) == list(range(12))
    assert uniform_indices(3, 5) == [0, 0, 1, 1, 2]  # a short clip repeats frames


@pytest.mark.parametrize("suffix, codec", [(".mp4", "mpeg4"), (".avi", "mpeg4"), (".mkv", "libx264")])
def test_decoding_a_real_video_samples_frames_uniformly(tmp_path, suffix, codec) -> None:
    path = ramp_video(tmp_path / f"ramp{suffix}", 20, codec)
    frames = decode_video(path, 4, 16)
    assert frames.shape == (4, 3, 16, 16) and frames.dtype == np.uint8
    levels = frames.reshape(4, -1).astype(float).mean(axis=1)
    np.testing.assert_allclose(levels, [0, 60, 120, 190], atol=6)  # frames 0, 6, 12, 19 (lossy codec)


def test_frames_are_resized_and_centre_cropped(tmp_path) -> None:
    """A 48 x 32 clip: the shorter side becomes 16, the centre 16 x 16 stays; a wide clip loses its sides."""
    import av

    path = tmp_path / "wide.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 32, "yuv420p"
        pixels = np.zeros((32, 96, 3), dtype=np.uint8)
        pixels[:, 32:64] = 200  # the middle third bright, the sides dark
        for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames = decode_video(path, 1, 16)
    assert frames.shape == (1, 3, 16, 16)
    assert frames[0, :, :, 3:13].mean() > 180  # the crop is the bright middle (its edges blur a little)


def test_a_folder_of_frames_is_read_in_natural_order(tmp_path) -> None:
    folder = tmp_path / "frames" / "clip"
    folder.mkdir(parents=True)
    for i in range(1, 11):  # frame_1 ... frame_10: frame_10 sorts last, not after frame_1
        Image.fromarray(np.full((20, 20, 3), 20 * i, dtype=np.uint8)).save(folder / f"frame_{i}.png")
    frames = read_frame_folder(folder, 4, 8)
    assert frames.shape == (4, 3, 8, 8)
    assert frames[:, 0, 0, 0].tolist() == [20, 80, 140, 200]  # files 1, 4, 7, 10


def test_decoded_frames_are_cached_and_reused(tmp_path, monkeypatch) -> None:
    source = write_video(tmp_path / "clip.mp4", COLORS["red"], seed=0)
    clip = VideoClip(source, tmp_path / "cache")
    first = VideoFrames(3, 16)
    frames = first(clip)
    assert first.stats == {"decoded": 1, "cached": 0}
    (cached,) = (tmp_path / "cache" / "3x16").glob("clip.*.npy")
    assert len(cached.name.split(".")[1]) == 16
    stored = np.load(cached, allow_pickle=False)
    assert stored.dtype == np.uint8 and stored.shape == (3, 3, 16, 16)
    assert torch.equal(frames, torch.from_numpy(stored))

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(video_module, "decode_video", no_decoding)
    again = VideoFrames(3, 16)  # a later epoch or run: nothing is decoded
    assert torch.equal(again(clip), frames) and again.stats == {"decoded": 0, "cached": 1}
    monkeypatch.undo()

    cached.write_bytes(b"torn")  # an unreadable cache file is decoded again and replaced
    repaired = VideoFrames(3, 16)
    assert torch.equal(repaired(clip), frames) and repaired.stats["decoded"] == 1
    write_video(source, COLORS["blue"], seed=1)  # an edited video has a new digest: decoded again
    os.utime(source, ns=(1, 1))
    edited = VideoFrames(3, 16)
    assert not torch.equal(edited(clip), frames) and edited.stats["decoded"] == 1
    assert len(list((tmp_path / "cache" / "3x16").glob("clip.*.npy"))) == 2


# -- datasets and bad input --------------------------------------------------------------------------


def test_loaders_read_the_published_layouts(data_root) -> None:
    train = load_msrvtt(data_root / "msrvtt", "train")
    test = load_msrvtt(data_root / "msrvtt", "test")
    assert (train.num_videos, len(train.captions)) == (18, 36)  # every caption of a training video is a pair
    assert (test.num_videos, len(test.captions)) == (6, 6) and test.caption_video == list(range(6))
    assert train.sources[0].name == "video0.mp4"
    msvd = load_msvd(data_root / "msvd", "test")
    assert (msvd.num_videos, len(msvd.captions)) == (6, 18) and msvd.captions[0] == "a red clip"
    assert msvd.sources[0].suffix == ".avi"


def test_a_folder_of_frames_takes_the_place_of_a_video_file(data_root, tmp_path) -> None:
    root = copy_dataset(data_root, "msrvtt", tmp_path)
    folder = root / "frames" / "video18"  # the first test video
    folder.mkdir(parents=True)
    for i in range(5):
        Image.fromarray(np.full((30, 40, 3), 50 * i, dtype=np.uint8)).save(folder / f"{i:04d}.jpg")
    (root / "videos" / "video18.mp4").unlink()
    test = load_msrvtt(root, "test")
    assert test.sources[0] == folder and test.sources[1].name == "video19.mp4"
    frames = VideoFrames(3, 8)(VideoClip(folder))
    assert frames.shape == (3, 3, 8, 8) and frames[:, 0, 4, 4].tolist() == pytest.approx([0, 100, 200], abs=3)


def test_validation_is_the_test_split_unless_videos_are_held_out(data_root) -> None:
    from unipt_bench.config import TrainSpec

    same = VideoRetrievalData(TrainSpec(dataset="msrvtt", val_size=0), data_root, 0, MODALITIES)
    assert same.splits["val"] is same.splits["test"] and same.describe()["validation"] == "the test split"
    held = VideoRetrievalData(TrainSpec(dataset="msrvtt", val_size=4), data_root, 0, MODALITIES)
    assert held.splits["train"].num_videos == 14 and len(held.splits["val"].captions) == 4
    assert not set(held.splits["val"].video_ids) & set(held.splits["train"].video_ids)
    msvd = VideoRetrievalData(TrainSpec(dataset="msvd", val_size=1), data_root, 0, MODALITIES)
    assert msvd.splits["val"].video_ids[0].startswith("redClip18")  # val_list.txt
    baseline = same.baseline("test")
    assert baseline["t2v_r1"] == pytest.approx(100 / 6) and baseline["t2v_mnr"] == 3.5
    assert baseline["rsum"] == pytest.approx(2 * (100 / 6 + 500 / 6 + 100))


def test_a_csv_naming_a_missing_video_is_one_line(data_root, tmp_path) -> None:
    from unipt_bench.config import TrainSpec

    root = copy_dataset(data_root, "msrvtt", tmp_path)
    (root / "videos" / "video20.mp4").unlink()  # a test video
    assert missing(TrainSpec(dataset="msrvtt"), tmp_path) == ""  # the files are there: loading them finds it
    with pytest.raises(UserError) as exc:
        VideoRetrievalData(TrainSpec(dataset="msrvtt"), tmp_path, 0, MODALITIES)
    message = one_line(exc)
    assert message.startswith(f"{root / 'MSRVTT_JSFUSION_test.csv'}: video 'video20' is missing")


def test_an_absent_dataset_is_missing_not_an_error(tmp_path) -> None:
    from unipt_bench.config import TrainSpec

    (tmp_path / "msvd").mkdir()
    reason = missing(TrainSpec(dataset="msvd"), tmp_path)
    assert reason.startswith("missing ") and "raw-captions.pkl" in reason and "YouTubeClips" in reason


def test_an_undecodable_video_is_one_line_naming_it(data_root, tmp_path) -> None:
    root = copy_dataset(data_root, "msrvtt", tmp_path)
    broken = root / "videos" / "video0.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))  # an MP4 header and nothing decodable
    with pytest.raises(UserError) as exc:
        train_run(train_spec("msrvtt", steps=1, max_train=4), RunOptions(data_root=str(tmp_path),
                                                                          checkpoints=str(tmp_path / "ck")))
    assert one_line(exc).startswith(f"{broken}: not a decodable video")


def test_every_clip_is_checked_once_before_training(data_root, tmp_path) -> None:
    from unipt_bench.config import TrainSpec
    from unipt_bench.data.video import verify_clips

    root = copy_dataset(data_root, "msvd", tmp_path)
    data = VideoRetrievalData(TrainSpec(dataset="msvd", val_size=1), tmp_path, 0, MODALITIES)
    sources = [s for split in data.splits.values() for s in split.sources]
    assert verify_clips(sources, data.cache) == 30  # 18 train, 6 val, 6 test clips
    assert len(list((root / ".frame-cache" / "checked").iterdir())) == 30
    assert verify_clips(sources, data.cache) == 0  # checked before: skipped
    broken = data.splits["test"].sources[2]
    broken.write_bytes(b"RIFF" + bytes(100))  # changed, so checked again, and no longer a video
    with pytest.raises(UserError) as exc:
        data.verify()
    assert one_line(exc).startswith(f"{broken}: not a decodable video")


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The command line's exit code and standard error, run in this process (its runs in a worker process)."""
    from unipt_bench.cli import main

    monkeypatch.setattr(sys, "argv", ["unipt-bench", *args])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


SUITE = """
name = "tinyvideo"
description = "tiny towers on a tiny {dataset} in CLIP4Clip's layout"
task = "video-retrieval"
task_options = {{ embed_dim = 32 }}

[[configs]]
name = "c"
batch = 8
towers = [
    {{ name = "video", backbone = "tiny-clip-frames", pooling = "cls" }},
    {{ name = "text", backbone = "tiny-clip-text", seq_len = 8, pooling = "eot" }},
]
methods = ["full"]

[configs.train]
dataset = "{dataset}"
steps = 20
val_size = 0
"""


def test_bad_datasets_stop_the_command_line_with_one_line(data_root, tmp_path, monkeypatch, capsys) -> None:
    msvd = copy_dataset(data_root, "msvd", tmp_path)
    suite = tmp_path / "tiny.toml"
    suite.write_text(SUITE.format(dataset="msvd"))
    args = ("run", "--suite", str(suite), "--job", "train", "--mode", "cpu", "--data-root", str(tmp_path),
            "--out", str(tmp_path / "store"))
    marker = tmp_path / "ran"
    malicious_captions(msvd / "raw-captions.pkl", marker)
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and err.count("\n") == 1 and f"{msvd / 'raw-captions.pkl'}: refused" in err
    assert not marker.exists()
    write_msvd(msvd)  # whole again, then one listed clip removed
    next((msvd / "YouTubeClips").glob("blackClip*.avi")).unlink()
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and err.count("\n") == 1 and f"{msvd / 'train_list.txt'}: video 'blackClip" in err
    write_msvd(msvd)
    first = (msvd / "train_list.txt").read_text().split()[0]
    broken = msvd / "YouTubeClips" / f"{first}.avi"
    broken.write_bytes(b"RIFF" + bytes(100))  # a training clip that does not decode
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and err.startswith(f"error: {broken}: not a decodable video (") and err.count("\n") == 1
    assert not (tmp_path / "store" / "tinyvideo").exists()  # nothing ran


# -- training ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["msrvtt", "msvd"])
def test_a_tiny_model_beats_chance(data_root, tmp_path, dataset) -> None:
    spec = train_spec(dataset, steps=30, eval_every=15, lr=1e-3)
    out = train_run(spec, RunOptions(data_root=str(data_root), checkpoints=str(tmp_path / "ck")))
    metrics = out["metrics"]
    assert metrics["baseline"]["t2v_r1"] == pytest.approx(100 / 6)  # 6 test videos
    assert metrics["test"]["t2v_r1"] > 2 * 100 / 6 and metrics["test"]["v2t_r1"] > 2 * 100 / 6
    assert metrics["test"]["rsum"] > metrics["baseline"]["rsum"]
    assert metrics["test"]["t2v_mnr"] < metrics["baseline"]["t2v_mnr"]
    assert [h["step"] for h in metrics["history"]] == [15, 30]
    assert out["params"]["trainable_head_params"] == 1  # the logit scale (the projections are identities: E = 32)
    assert out["memory"]["memtracker_real"]["peak_bytes"] > 0


def test_the_logit_scale_starts_at_clip_s_and_is_clamped() -> None:
    scale = LogitScale(temperature=0.01, learnable=True)
    assert scale().item() == pytest.approx(100.0)
    with torch.no_grad():
        scale.log_scale.fill_(math.log(250))
    scale.train()
    assert scale().item() == pytest.approx(100.0) and scale.log_scale.item() == pytest.approx(math.log(100))
    frozen = LogitScale(temperature=1 / 20, learnable=False)
    assert frozen().item() == pytest.approx(20.0) and not frozen.log_scale.requires_grad


@pytest.mark.parametrize(("learnable", "mode"), [(False, "train"), (True, "eval")])
def test_a_loaded_logit_scale_above_the_cap_is_clamped_where_it_is_used(learnable: bool, mode: str) -> None:
    """A frozen scale, or any scale outside training, is never clamped in place: the value a checkpoint loaded
    stays as it is, and each use caps it at 100."""
    scale = LogitScale(temperature=0.01, learnable=learnable)
    scale.load_state_dict({"log_scale": torch.tensor(math.log(250))})
    scale.train(mode == "train")
    assert scale().item() == pytest.approx(100.0)
    assert scale.log_scale.item() == pytest.approx(math.log(250))  # left as loaded


@pytest.mark.slow
def test_the_command_line_trains_and_reports(data_root, tmp_path, monkeypatch, capsys) -> None:
    suite = tmp_path / "tiny.toml"
    suite.write_text(SUITE.format(dataset="msrvtt"))
    store = tmp_path / "store"
    code, err = run_cli(monkeypatch, capsys, "run", "--suite", str(suite), "--job", "train", "--max-steps", "4",
                        "--batch", "4", "--data-root", str(data_root), "--mode", "cpu", "--out", str(store))
    assert code == 0, err
    (result,) = store.glob("tinyvideo/c/full.cpu.*.json")
    stored = json.loads(result.read_text())
    assert stored["status"] == "ok" and stored["spec"]["batch"] == 4
    test = stored["metrics"]["test"]
    assert set(test) == {f"{d}_{k}" for d in ("t2v", "v2t") for k in ("r1", "r5", "r10", "mdr", "mnr")} | {"rsum"}
    assert stored["metrics"]["baseline"]["t2v_r1"] == pytest.approx(100 / 6)
    code, err = run_cli(monkeypatch, capsys, "report", "--suite", str(suite), "--results", str(store),
                        "--out", str(tmp_path / "report.html"))
    assert code == 0, err
    html = (tmp_path / "report.html").read_text()
    assert "t2v R@1" in html and "v2t MnR" in html


@pytest.mark.parametrize("suite", ["msrvtt", "msvd"])
def test_every_recipe_value_cites_the_reference_or_is_listed_as_missing(suite) -> None:
    """Each key of the suite's [configs.train] table has a CLIP4Clip/<file>:<line> citation on its line or in the
    comment right above it, unless not_in_reference names it."""
    import re
    import tomllib

    from unipt_bench.suite_file import load_suite

    text = (Path(__file__).parents[1] / "suites" / f"{suite}.toml").read_text()
    table = text.split("[configs.train]", 1)[1].splitlines()
    train = tomllib.loads("\n".join(table))
    cited = set()
    for n, line in enumerate(table):
        key = re.match(r"(\w+) = ", line)
        if key:
            above = []
            for previous in reversed(table[:n]):
                if not previous.startswith("#"):
                    break
                above.append(previous)
            if re.search(r"CLIP4Clip/[\w/.]+:\d+", " ".join([line, *above])):
                cited.add(key.group(1))
    assert set(train) - {"dataset", "not_in_reference"} <= cited
    assert train["not_in_reference"] == (["eval_every"] if suite == "msvd" else [])
    assert "eval_every" not in train or suite == "msrvtt"
    (spec,) = [s for s in load_suite(suite).specs if s.label == "unipt"]
    assert spec.train["select_on"] == "t2v_r1" and spec.batch * spec.gpus == 128
    assert {t.name: t.shape for t in spec.towers} == {"video": {"frames": 12, "image_size": 224}, "text": {"seq_len": 32}}


@pytest.mark.parametrize("shared", ["word list", "long string"])
def test_captions_that_share_one_value_by_reference_are_bounded_by_what_they_expand_to(tmp_path, shared) -> None:
    """A few-MiB pickle whose million captions are references to one value of 100,000 words (or characters)."""
    value = [f"w{k}" for k in range(100_000)] if shared == "word list" else "x" * 1_000_000
    entries = [value] * 1000  # one list of references, shared by every video below
    path = tmp_path / "raw-captions.pkl"
    path.write_bytes(pickle.dumps({f"video{k}": entries for k in range(1000)}))
    assert path.stat().st_size < 4 << 20
    with pytest.raises(UserError) as exc:
        load_captions(path)
    assert one_line(exc).startswith(f"{path}: the captions expand to more than ")
