"""Dataset loaders on small files in the real formats: Karpathy JSON + images, precomp features, VQAv2,
GQA, easy-vqa; targets and clear errors for missing or malformed data."""

from __future__ import annotations

import json

import pytest
import torch

from unipt_bench.config import TrainSpec
from unipt_bench.data.retrieval import load_karpathy, load_precomp
from unipt_bench.data.vqa import counted_vocabulary, load_easy_vqa, load_gqa, load_vqav2
from unipt_bench.errors import UserError
from unipt_bench.tasks.vqa_data import VQAData, soft_targets

from .datasets import COLORS, write_gqa, write_karpathy, write_precomp, write_vqav2


def test_karpathy_splits_captions_and_images(tmp_path) -> None:
    root = write_karpathy(tmp_path, train_per_color=2)
    train = load_karpathy(root / "dataset_flickr30k.json", root / "images", "train")
    assert train.num_images == 12 and len(train.captions) == 24
    assert train.caption_image[:4] == [0, 0, 1, 1]
    assert train.captions[0] == "a red square" and train.image_paths[0].name == "train_red_0.png"
    test = load_karpathy(root / "dataset_flickr30k.json", root / "images", "test")
    assert test.num_images == len(COLORS)


def test_karpathy_errors_name_what_is_wrong(tmp_path) -> None:
    root = write_karpathy(tmp_path, train_per_color=1)
    (root / "images" / "train_red_0.png").unlink()
    with pytest.raises(UserError, match="train_red_0.png.*missing"):
        load_karpathy(root / "dataset_flickr30k.json", root / "images", "train")
    (root / "bad.json").write_text("{\"pictures\": []}")
    with pytest.raises(UserError, match="not a Karpathy-split file"):
        load_karpathy(root / "bad.json", root / "images", "train")
    with pytest.raises(UserError, match="no images in split 'restval'"):
        load_karpathy(root / "dataset_flickr30k.json", root / "images", "restval")


def test_precomp_features_and_five_captions_per_image(tmp_path) -> None:
    root = write_precomp(tmp_path, train_per_class=2)
    train = load_precomp(root / "precomp", "train")
    assert train.features.shape == (12, 4, 16) and len(train.captions) == 60
    assert train.caption_image[:6] == [0, 0, 0, 0, 0, 1]
    with pytest.raises(UserError, match="val_ims.npy"):
        load_precomp(root / "precomp", "val")


def test_precomp_with_one_row_per_caption_keeps_one_copy(tmp_path) -> None:
    import numpy as np

    folder = tmp_path / "precomp"
    folder.mkdir()
    rows = np.repeat(np.arange(3, dtype=np.float32)[:, None, None] * np.ones((1, 2, 4), np.float32), 5, axis=0)
    np.save(folder / "test_ims.npy", rows)  # 15 rows: each image 5 times
    (folder / "test_caps.txt").write_text("\n".join(f"c{i}" for i in range(15)))
    data = load_precomp(folder, "test")
    assert data.num_images == 3 and data.features[2, 0, 0] == 2.0


def test_vqav2_questions_annotations_and_soft_scores(tmp_path) -> None:
    root = write_vqav2(tmp_path)
    data = load_vqav2(root, "train")
    assert len(data.questions) == 12 and len(data.answers[0]) == 10
    assert data.image_paths[0].name == "COCO_train2014_000000000001.jpg"
    vocab = {a: i for i, a in enumerate(sorted({a for answers in data.answers for a in answers}))}
    target = soft_targets(data.answers[0], vocab)  # 8 x "red", 2 x "gray"
    assert target[vocab["red"]] == 1.0 and target[vocab["gray"]] == pytest.approx(2 / 3)
    assert target.sum() == pytest.approx(1 + 2 / 3)


def test_gqa_and_single_answer_targets(tmp_path) -> None:
    data = load_gqa(write_gqa(tmp_path), "testdev")
    assert len(data.questions) == len(COLORS) and data.answers[0] == ["red"]
    vocab = {"red": 0, "blue": 1}
    assert soft_targets(["red"], vocab).tolist() == [1.0, 0.0]  # one annotator: the answer is fully right


def test_missing_or_malformed_vqa_files_are_clear(tmp_path) -> None:
    with pytest.raises(UserError, match="missing .*v2_OpenEnded_mscoco_train2014_questions.json"):
        load_vqav2(tmp_path, "train")
    (tmp_path / "questions").mkdir()
    (tmp_path / "questions" / "train_balanced_questions.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_gqa(tmp_path, "train")


def test_easy_vqa_is_the_real_dataset() -> None:
    train, test = load_easy_vqa("train"), load_easy_vqa("test")
    assert (len(train.questions), len(test.questions)) == (38575, 9673)
    assert len(counted_vocabulary(train.labels, 1)) == 13
    assert all(p.is_file() for p in test.image_paths[:10])


def test_vqa_data_holds_out_validation_and_scores_the_majority_baseline(tmp_path) -> None:
    spec = TrainSpec.from_options({"dataset": "vqav2", "val_size": 4})
    write_vqav2(tmp_path / "vqav2")
    data = VQAData(spec, tmp_path, 0, {"q": "text", "v": "image"})
    assert (data.size("train"), data.size("val"), data.size("test")) == (8, 4, 12)
    assert data.task_options() == {"num_answers": len(data.answers)}
    assert data.soft and data.describe()["metric"].startswith("VQA accuracy")
    # val2014 has 6 "is it red?" questions: 5 "no" (10 annotators each) and 1 "yes"
    base = data.baseline("test")
    expected = 100 * sum(1.0 for q in data.splits["test"].answers if base["answer"] in q) / 12
    assert base["accuracy"] == pytest.approx(expected)


def test_missing_dataset_folder_is_a_clear_error(tmp_path) -> None:
    from unipt_bench.tasks.retrieval_data import RetrievalData

    spec = TrainSpec.from_options({"dataset": "flickr30k"})
    with pytest.raises(UserError, match="dataset_flickr30k.json"):
        RetrievalData(spec, tmp_path, 0, {"text": "text", "image": "image"})
    spec = TrainSpec.from_options({"dataset": "flickr30k", "format": "precomp"})
    with pytest.raises(UserError, match="train_ims.npy"):
        RetrievalData(spec, tmp_path, 0, {"text": "text", "image": "features"})


def test_tower_inputs_pad_to_a_fixed_length_and_key_equal_rows_equally(tmp_path) -> None:
    from unipt_bench.backbones import create_backbone
    from unipt_bench.config import TowerSpec
    from unipt_bench.data.inputs import TowerInputs

    text = TowerInputs(TowerSpec("q", "tiny-bert", shape={"seq_len": 6}), create_backbone("tiny-bert"), "random")
    out = text(["a red square", "a red square", "blue"])
    assert out["input_ids"].shape == (3, 6)
    keys = out["cache_keys"].tolist()
    assert keys[0] == keys[1] != keys[2]
    root = write_karpathy(tmp_path, train_per_color=1)
    image = TowerInputs(TowerSpec("v", "tiny-resnext", shape={"image_size": 32}), create_backbone("tiny-resnext"), "random")
    pixels = image([root / "images" / "train_red_0.png"])["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32) and pixels.dtype == torch.float32
    json.dumps(keys)  # keys are plain integers
