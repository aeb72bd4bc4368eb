"""VQAv2 and GQA on the joint (CLIP-ViL) tower: images letterboxed as the reference does, grid features extracted
once and read back from the cache, a user's features folder read and checked, broken inputs refused in one line
before any run starts, a tiny joint model above the majority-answer baseline, a resumed run, and the command line
end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unipt_bench.backbones import create_backbone, weights_source
from unipt_bench.config import RunSpec, TowerSpec, TrainSpec
from unipt_bench.data import grid_features
from unipt_bench.data.grid_features import Extractor, GridStore, letterbox, letterbox_size
from unipt_bench.data.inputs import TowerInputs
from unipt_bench.errors import UserError
from unipt_bench.profile import RunOptions
from unipt_bench.suite_file import load_suite
from unipt_bench.tasks.vqa import VQA
from unipt_bench.tasks.vqa_data import VQAData
from unipt_bench.train import train_run

from .datasets_vqa import image_ids, write_features, write_gqa_grid, write_vqav2_grid

# test_efficientnet's first stage: 16 channels (tiny-joint's visual width) at stride 2, so a 4 x 6 canvas is a
# 2 x 3 grid: tiny-joint's 6 cells
TINY_EXTRACTOR = Extractor("test_efficientnet", stage=0, short=4, long=6)
TINY_TASK = {"num_answers": 16, "hidden_dim": 32, "min_answer_count": 1, "extractor": "test_efficientnet",
             "extractor_stage": 0, "image_min": 4, "image_max": 6}
JOINT = TowerSpec("joint", "tiny-joint")


@pytest.fixture(scope="module")
def vqav2(tmp_path_factory) -> Path:
    return write_vqav2_grid(tmp_path_factory.mktemp("data") / "vqav2")


@pytest.fixture(scope="module")
def gqa(tmp_path_factory) -> Path:
    return write_gqa_grid(tmp_path_factory.mktemp("data") / "gqa")


@pytest.mark.parametrize(("size", "expected"), [
    ((640, 480), (512, 384, 640, 384)),  # landscape: shorter side 384, on a 640 x 384 canvas
    ((480, 640), (384, 512, 384, 640)),  # portrait: on 384 x 640 (width x height)
    ((1000, 200), (640, 128, 640, 384)),  # very wide: the longer side caps at 640
    ((500, 500), (384, 384, 384, 640)),  # square: the portrait canvas, as the reference pads w <= h
])
def test_images_are_resized_and_padded_as_clip_vil_does(size, expected) -> None:
    assert letterbox_size(*size, 384, 640) == expected


def test_padding_is_black_before_normalisation_with_the_odd_pixel_first(tmp_path) -> None:
    path = tmp_path / "strip.png"
    from PIL import Image

    Image.new("RGB", (6, 1), (255, 0, 0)).save(path)  # resized to 6 x 1 on a 6 x 4 canvas: 1.5 rows each side
    mean, std = torch.tensor([0.5, 0.5, 0.5])[:, None, None], torch.tensor([0.25, 0.25, 0.25])[:, None, None]
    pixels = letterbox(path, 4, 6, mean, std)  # [3, 4, 6]
    assert pixels.shape == (3, 4, 6)
    assert torch.equal(pixels[:, 2], torch.tensor([[2.0] * 6, [-2.0] * 6, [-2.0] * 6]))  # red, normalised
    for row in (0, 1, 3):
        assert torch.equal(pixels[:, row], torch.full((3, 6), -2.0))  # black padding: (0 - 0.5) / 0.25


def test_the_t3_extractor_gives_the_towers_grid() -> None:
    """CLIP RN50x4 at 384 x 640 (built on the meta device): 2560 channels on a 12 x 20 grid, as clip-vil expects."""
    task = VQA.from_options(load_suite("vqa").specs[0].task_options)
    extractor = Extractor(task.extractor, task.extractor_weights, task.extractor_stage, task.image_min, task.image_max)
    with torch.device("meta"):
        (maps,) = extractor.build()(torch.zeros(1, 3, extractor.short, extractor.long))
        backbone = create_backbone("clip-vil")
    assert tuple(maps.shape) == (1, 2560, 12, 20)
    assert (12 * 20, 2560) == (backbone.shape_defaults["grid"], backbone.visual_dim)
    assert extractor.weights == "random" and extractor.tag() == "resnet50x4_clip-stage-1-384x640-random"


@pytest.mark.parametrize(("suite", "missing"), [("vqa", ["val_size"]), ("gqa", ["num_answers"])])
def test_every_recipe_value_cites_clip_vil_or_is_listed_as_missing(suite, missing) -> None:
    """Each key of t3's [configs.train] table, and its loss scale, has a CLIP-ViL/<file>:<line> citation on its line
    or in the comment right above it, unless not_in_reference names it."""
    import re
    import tomllib

    text = (Path(__file__).parents[1] / "suites" / f"{suite}.toml").read_text()
    table = text.split("[configs.task_options]", 1)[1].splitlines()
    cited = set()
    for n, line in enumerate(table):
        key = re.match(r"(\w+) = ", line)
        above = []
        for previous in reversed(table[:n]):
            if not previous.startswith("#"):
                break
            above.append(previous)
        if key and re.search(r"CLIP-ViL/[\w/.]+:\d+", " ".join([line, *above])):
            cited.add(key.group(1))
    train = tomllib.loads(text.split("[configs.train]", 1)[1])
    assert set(train) - {"dataset", "not_in_reference"} <= cited and "loss_scale" in cited
    assert train["not_in_reference"] == missing
    (spec,) = [s for s in load_suite(suite).specs if s.label == "unipt"]
    assert spec.batch * spec.gpus == 128 and spec.accumulate == 8 and spec.task_options["loss_scale"] == 500.0
    assert spec.train["lr"] == (5e-4 if suite == "vqa" else 1e-4) and spec.train["epochs"] == 5.0


def refuse(*args, **kwargs):
    raise AssertionError("features were extracted again")


def test_grid_features_are_extracted_once_and_read_back_from_the_cache(tmp_path, vqav2, monkeypatch) -> None:
    paths = sorted((vqav2 / "images" / "train2014").glob("*.jpg"))
    folder = tmp_path / "cache"
    first = GridStore(paths[:4], folder, TINY_EXTRACTOR)
    rows = np.stack([first.row(p) for p in paths[:4]])
    assert rows.shape == (4, 6, 16) and rows.dtype == np.float16
    index = json.loads((folder / "train2014.json").read_text())
    assert index["image_ids"] == [p.stem for p in paths[:4]] and (index["grid"], index["dim"]) == (6, 16)
    assert index["extractor"]["model"] == "test_efficientnet" and index["extractor"]["pretrained"] is False
    assert np.load(folder / "train2014.npy").shape == (4, 6, 16)
    with monkeypatch.context() as patch:
        patch.setattr(grid_features, "Extraction", refuse)  # a second load reads the cache
        again = GridStore(paths[:4], folder, TINY_EXTRACTOR)
        assert np.array_equal(np.stack([again.row(p) for p in paths[:4]]), rows)
    more = GridStore(paths[:6], folder, TINY_EXTRACTOR)  # two more images are appended, the cached rows kept
    assert json.loads((folder / "train2014.json").read_text())["image_ids"] == [p.stem for p in paths[:6]]
    assert np.array_equal(np.stack([more.row(p) for p in paths[:4]]), rows)
    GridStore(paths[:4], tmp_path / "fresh", TINY_EXTRACTOR)  # the same steps elsewhere give the same bytes
    fresh = GridStore(paths[:6], tmp_path / "fresh", TINY_EXTRACTOR)
    assert (tmp_path / "fresh" / "train2014.npy").read_bytes() == (folder / "train2014.npy").read_bytes()
    at_once = GridStore(paths[:6], tmp_path / "at-once", TINY_EXTRACTOR)  # other batches: float rounding apart
    assert all(np.allclose(at_once.row(p), fresh.row(p), atol=1e-3) for p in paths[:6])


def test_a_checkpoint_given_is_loaded_and_names_the_cache(tmp_path) -> None:
    import timm

    torch.manual_seed(1)
    trained = timm.create_model("test_efficientnet")
    torch.save(trained.state_dict(), tmp_path / "weights.pth")
    extractor = Extractor("test_efficientnet", str(tmp_path / "weights.pth"), 0, 4, 6)
    assert torch.equal(extractor.build().conv_stem.weight, trained.conv_stem.weight)
    assert not torch.equal(TINY_EXTRACTOR.build().conv_stem.weight, trained.conv_stem.weight)
    assert extractor.tag().startswith("test_efficientnet-stage0-4x6-ckpt-") and extractor.describe()["pretrained"]
    with pytest.raises(UserError, match=r"missing .*absent.pth \(task option extractor_weights"):
        Extractor("test_efficientnet", str(tmp_path / "absent.pth")).tag()
    (tmp_path / "broken.pth").write_bytes(b"no checkpoint")
    with pytest.raises(UserError, match=r"broken.pth: cannot build the grid extractor .*; expected .* a checkpoint"):
        Extractor("test_efficientnet", str(tmp_path / "broken.pth"), 0).build()


def joint_data(root: Path, task: VQA, dataset: str = "vqav2") -> VQAData:
    return VQAData(TrainSpec.from_options({"dataset": dataset, "val_size": 8}), root.parent, 0, {"joint": "text+grid"},
                   task)


def test_a_features_folder_is_used_as_given_without_the_images(tmp_path, vqav2) -> None:
    root = tmp_path / "vqav2"
    shutil.copytree(vqav2, root, ignore=shutil.ignore_patterns("grid_features", "images"))
    for part in ("train2014", "val2014"):
        write_features(root / "feats", part, image_ids(vqav2, part), grid=6, dim=16)
    task = VQA.from_options({**TINY_TASK, "features": "feats"})
    assert task.data_missing(TrainSpec.from_options({"dataset": "vqav2", "val_size": 8}), tmp_path) == ""
    data = joint_data(root, task)
    assert not (root / "grid_features").exists()  # nothing extracted
    assert data.describe()["grid_features"]["extractor"] == "features given by the user"
    inputs = {"joint": TowerInputs(JOINT, create_backbone("tiny-joint"), "random")}
    batch = data.batch("train", [0, 1], inputs)
    stored = np.load(root / "feats" / "train2014.npy")
    first = image_ids(vqav2, "train2014").index(data.splits["train"].image_paths[0].stem)
    assert batch["joint"]["grid"].shape == (2, 6, 16) and batch["joint"]["input_ids"].shape == (2, 8)
    assert torch.equal(batch["joint"]["grid"][0], torch.from_numpy(stored[first].astype(np.float32)))
    assert batch["targets"]["scores"].shape == (2, len(data.answers))


def features_not_matching_the_tower(root: Path) -> None:
    for part in ("train2014", "val2014"):
        write_features(root / "feats", part, image_ids(root, part), grid=5, dim=16)


def test_features_that_do_not_fit_the_tower_are_refused_naming_their_file(tmp_path, vqav2) -> None:
    root = tmp_path / "vqav2"
    shutil.copytree(vqav2, root, ignore=shutil.ignore_patterns("grid_features"))
    features_not_matching_the_tower(root)
    data = joint_data(root, VQA.from_options({**TINY_TASK, "features": "feats"}))
    inputs = {"joint": TowerInputs(JOINT, create_backbone("tiny-joint"), "random")}
    with pytest.raises(UserError, match=r"feats/train2014.npy: grid features of shape \[5, 16\] per image; the joint "
                                        r"tower expects \[6, 16\]"):
        data.batch("train", [0, 1], inputs)


def test_the_paper_suites_t3_reads_real_format_data(tmp_path) -> None:
    """suites/vqa.toml's t3 as written (recipe, task options, clip-vil tower) on VQAv2 files and a features folder
    of CLIP RN50x4's shape; only the held-out size is shrunk to the fixture."""
    (spec,) = [s for s in load_suite("vqa").specs if s.config == "t3" and s.label == "unipt"]
    root = write_vqav2_grid(tmp_path / "vqav2", per_color=3)
    for part in ("train2014", "val2014"):
        write_features(root / "feats", part, image_ids(root, part), grid=240, dim=2560)
    task = VQA.from_options({**spec.task_options, "features": "feats"})
    assert task.min_answer_count == 9 and task.loss_scale == 500.0
    train = TrainSpec.from_options({**spec.train, "val_size": 4})
    data = VQAData(train, tmp_path, spec.seed, {"joint": "text+grid"}, task)
    assert data.answers == ["no"]  # the only answer that labels 9 or more training questions
    (tower,) = spec.towers
    with torch.device("meta"):
        backbone = create_backbone(tower.backbone)
    inputs = {"joint": TowerInputs(tower, backbone, weights_source(tower.backbone, tower.weights), train.padding)}
    batch = data.batch("train", [0, 1, 2], inputs)
    assert batch["joint"]["input_ids"].shape == (3, 20) and batch["joint"]["grid"].shape == (3, 240, 2560)
    assert batch["targets"]["scores"].shape == (3, 1)


def bad_features_shape(root: Path) -> Path:
    ids = image_ids(root, "train2014")
    write_features(root / "feats", "train2014", ids, grid=6, dim=16, shape=(len(ids), 6, 12))
    write_features(root / "feats", "val2014", image_ids(root, "val2014"), grid=6, dim=16)
    return root / "feats" / "train2014.npy"


def truncated_json(root: Path) -> Path:
    path = root / "v2_mscoco_val2014_annotations.json"
    path.write_text(path.read_text()[:100])
    return path


def undecodable_image(root: Path) -> Path:
    path = sorted((root / "images" / "val2014").glob("*.jpg"))[3]
    path.write_bytes(b"these bytes are no JPEG")
    return path


def missing_file(root: Path) -> Path:
    path = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    path.unlink()
    return path


TINY_SUITE = """
name = "vqa-tiny"
task = "vqa"
task_options = {{ num_answers = 16, hidden_dim = 32, min_answer_count = 1, extractor = "test_efficientnet", \
extractor_stage = 0, image_min = 4, image_max = 6{features} }}

[[configs]]
name = "t3"
batch = 16
towers = [{{ name = "joint", backbone = "tiny-joint" }}]
train = {{ dataset = "vqav2", steps = 40, eval_every = 20, val_size = 8, lr = 3e-3 }}
methods = ["full", "unipt", "adapter"]
"""


def tiny_suite(folder: Path, features: str = "") -> Path:
    path = folder / "vqa-tiny.toml"
    path.write_text(TINY_SUITE.format(features=f', features = "{features}"' if features else ""))
    return path


def run_args(suite: Path, data_root: Path, out: Path) -> list[str]:
    return ["run", "--suite", str(suite), "--job", "train", "--configs", "t3", "--methods", "unipt,adapter",
            "--max-steps", "4", "--batch", "8", "--data-root", str(data_root), "--mode", "cpu", "--out", str(out)]


@pytest.mark.parametrize(("corrupt", "features", "expected"), [
    (missing_file, "", "cannot train: missing {path}"),
    (truncated_json, "", "{path}: VQAv2 annotations is not valid JSON"),
    (undecodable_image, "", "{path}: not a readable image .*; expected a JPEG, PNG or other format PIL reads"),
    (bad_features_shape, "feats", r"{path}: grid features of shape \[24, 6, 12\] \(float16\); expected float "
                                  r"\[24, 6, 16\] \(the 24 images of train2014.json, 6 grid cells, 16 channels\)"),
], ids=["missing-file", "truncated-json", "undecodable-image", "features-wrong-shape"])
def test_broken_inputs_stop_the_command_in_one_line_before_anything_is_written(tmp_path, vqav2, corrupt, features,
                                                                             expected) -> None:
    from unipt_bench.cli.app import cli

    root = tmp_path / "data" / "vqav2"
    shutil.copytree(vqav2, root, ignore=shutil.ignore_patterns("grid_features"))
    path = corrupt(root)
    out = tmp_path / "out"
    with pytest.raises(UserError) as raised:
        cli.main(run_args(tiny_suite(tmp_path, features), root.parent, out), standalone_mode=False)
    message = str(raised.value)
    assert "\n" not in message
    import re

    assert re.search(expected.format(path=re.escape(str(path))), message), message
    assert not [p for p in out.rglob("*") if p.is_file()]  # no result, no checkpoint
    assert not (root / "grid_features").exists()  # nothing extracted either


def test_a_question_and_image_tower_pair_verifies_its_images(tmp_path, vqav2) -> None:
    """Late fusion reads the image files themselves: verify() (run before any run starts) decodes each one."""
    root = tmp_path / "vqav2"
    shutil.copytree(vqav2, root, ignore=shutil.ignore_patterns("grid_features"))
    path = undecodable_image(root)
    data = VQAData(TrainSpec.from_options({"dataset": "vqav2", "val_size": 8}), tmp_path, 0,
                   {"q": "text", "v": "image"}, VQA.from_options({"min_answer_count": 1}))
    assert data.grids is None and not (root / "grid_features").exists()
    with pytest.raises(UserError, match=f"{path}: not a readable image"):
        data.verify()


def run_spec(dataset: str, method: str, steps: int, task: str = "vqa", lr: float = 3e-3) -> RunSpec:
    train = {"dataset": dataset, "steps": steps, "eval_every": 20, "val_size": 8, "lr": lr}
    return RunSpec(suite="t", config="c", label=method, method=method, method_options={}, task=task,
                   task_options=TINY_TASK, towers=[JOINT], batch=8, gpus=1, steps=2, seed=0, mode="cpu", train=train)


@pytest.mark.parametrize(("dataset", "task", "majority"), [("vqav2", "vqa", 100 * 20 / 48), ("gqa", "gqa", 100 * 20 / 48)])
def test_a_tiny_joint_model_answers_from_the_grid_above_the_majority_baseline(tmp_path, vqav2, gqa, dataset, task,
                                                                            majority) -> None:
    """Majority ("no"): 20 of the 48 test questions. The question type alone reaches 50% (24 of 48: "no" to every
    "is it red?", the colour questions at 1 in 6), and the red images too 58.3%: above 60% needs other colours."""
    root = vqav2 if dataset == "vqav2" else gqa
    spec = run_spec(dataset, "full", 150, task, lr=5e-3)
    out = train_run(spec, RunOptions(data_root=str(root.parent), checkpoints=str(tmp_path / "ckpt")))
    metrics = out["metrics"]
    assert metrics["baseline"] == {"accuracy": pytest.approx(majority), "answer": "no"}
    assert metrics["test"]["accuracy"] > 60
    assert metrics["data"]["metric"] == ("VQA accuracy (soft scores)" if dataset == "vqav2" else "exact match")
    assert metrics["data"]["answers"] == 8  # six colours, yes and no ("gray" never labels a question)
    assert metrics["data"]["grid_features"]["extractor_weights"].startswith("random")


class Killed(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path, vqav2) -> None:
    spec = run_spec("vqav2", "unipt", 40)

    def kill_after_25(info: dict) -> None:
        if info["event"] == "step" and info["step"] == 25:  # the checkpoint of step 20 is on disk
            raise Killed

    options = RunOptions(data_root=str(vqav2.parent), checkpoints=str(tmp_path / "interrupted"))
    with pytest.raises(Killed):
        train_run(spec, options, kill_after_25)
    resumed = train_run(spec, options)["metrics"]
    whole = train_run(spec, RunOptions(data_root=str(vqav2.parent), checkpoints=str(tmp_path / "whole")))["metrics"]
    assert resumed["resumed_from_step"] == 20 and whole["resumed_from_step"] is None
    assert resumed["history"] == whole["history"] and resumed["test"] == whole["test"]


@pytest.mark.slow
def test_the_command_trains_unipt_and_adapter_on_vqav2_end_to_end(tmp_path, vqav2) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "unipt_bench.cli", *run_args(tiny_suite(tmp_path), vqav2.parent, out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    results = {json.loads(p.read_text())["spec"]["label"]: json.loads(p.read_text())
               for p in out.glob("vqa-tiny/t3/*.json")}
    assert set(results) == {"unipt", "adapter"}
    for result in results.values():
        assert result["status"] == "ok"
        assert result["spec"]["overrides"] == {"max_steps": 4, "batch": 8} and result["spec"]["batch"] == 8
        assert 0 <= result["metrics"]["test"]["accuracy"] <= 100 and result["metrics"]["baseline"]["answer"] == "no"
        assert [h["step"] for h in result["metrics"]["history"]] == [4]
        assert result["metrics"]["data"]["grid_features"]["extractor"]["model"] == "test_efficientnet"


@pytest.mark.slow
def test_a_broken_input_exits_2_with_one_line(tmp_path, vqav2) -> None:
    root = tmp_path / "data" / "vqav2"
    shutil.copytree(vqav2, root, ignore=shutil.ignore_patterns("grid_features"))
    path = truncated_json(root)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "unipt_bench.cli",
                           *run_args(tiny_suite(tmp_path), root.parent, tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"error: {path}: VQAv2 annotations is not valid JSON") and done.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists() or not any(p.is_file() for p in (tmp_path / "out").rglob("*"))
