"""The realistic-length Flickr30K fixture: it loads with the project's readers, its captions have Flickr30K's
WordPiece length distribution (as documented in docs/recipes/retrieval.md), and its captions name what its
images carry, so training on it beats chance."""

from __future__ import annotations

import json

import numpy as np

from unipt_bench.backbones.bert import minilm_path
from unipt_bench.config import RunSpec, TowerSpec
from unipt_bench.data.retrieval import load_karpathy, load_precomp
from unipt_bench.data.text import WordHashTokenizer
from unipt_bench.profile import RunOptions
from unipt_bench.train import train_run

from .datasets import COLORS
from .datasets_flickr import (
    FLICKR30K_LENGTHS,
    NOUNS,
    stratified_lengths,
    write_flickr_karpathy,
    write_flickr_precomp,
)

# docs/recipes/retrieval.md, "Caption lengths": Flickr30K, WordPiece tokens incl. [CLS]/[SEP]
DOCUMENTED = {"captions": 10070, "mean": 16.11, "p5": 9, "p10": 10, "p25": 12, "p50": 15, "p75": 19, "p90": 23,
              "p95": 27, "p99": 36, "max": 88}
QUANTILES = (5, 10, 25, 50, 75, 90, 95, 99)


def summary(lengths: list[int]) -> dict[str, float]:
    a = np.array(lengths)
    return {"mean": round(float(a.mean()), 2), **{f"p{q}": float(np.percentile(a, q, method="lower")) for q in QUANTILES}}


def wordpiece_lengths(captions: list[str]) -> list[int]:
    """Tokens per caption with BERT's uncased WordPiece vocabulary, [CLS] and [SEP] included."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    return [len(ids) for ids in tokenizer(captions)["input_ids"]]


def test_the_stored_histogram_has_the_documented_statistics() -> None:
    lengths = [n for n, count in FLICKR30K_LENGTHS.items() for _ in range(count)]
    assert len(lengths) == DOCUMENTED["captions"] and max(lengths) == DOCUMENTED["max"]
    assert summary(lengths) == {k: v for k, v in DOCUMENTED.items() if k not in ("captions", "max")}


def test_precomp_fixture_loads_with_flickr30k_caption_lengths(tmp_path) -> None:
    root = write_flickr_precomp(tmp_path, images=60, eval_images=20, regions=4, dim=16, seed=3)
    splits = {s: load_precomp(root / "precomp", s) for s in ("train", "dev", "test")}
    assert {s: (d.num_images, len(d.captions)) for s, d in splits.items()} == {
        "train": (60, 300), "dev": (20, 100), "test": (20, 100)}
    assert splits["train"].features.shape == (60, 4, 16) and splits["train"].caption_image[:6] == [0] * 5 + [1]
    train = splits["train"].captions
    lengths = wordpiece_lengths(train)
    # every caption has exactly its assigned length: the stratified quantiles of 300 captions, in seeded order
    assert sorted(lengths) == sorted(stratified_lengths(300, np.random.default_rng(0)))
    # the word-hashing tokenizer (random-weight towers) sees the same number of tokens
    assert [len(WordHashTokenizer(1000).ids(c)) for c in train] == lengths
    got = summary(lengths)
    assert abs(got["mean"] - DOCUMENTED["mean"]) < 0.2
    assert {q: got[f"p{q}"] for q in (10, 25, 50, 75, 90)} == {q: DOCUMENTED[f"p{q}"] for q in (10, 25, 50, 75, 90)}


def test_captions_name_the_class_their_image_features_carry(tmp_path) -> None:
    data = load_precomp(write_flickr_precomp(tmp_path, images=24, eval_images=24, regions=4, dim=16) / "precomp", "test")
    colors = list(COLORS)
    for text, image in zip(data.captions, data.caption_image, strict=True):
        mean = np.asarray(data.features[image]).mean(axis=0)  # [D]
        words = text.split()
        assert colors[int(mean[: len(colors)].argmax())] in words
        assert NOUNS[int(mean[len(colors) : len(colors) + len(NOUNS)].argmax())] in words


def test_fixture_is_deterministic_per_seed(tmp_path) -> None:
    def captions(seed: int, name: str) -> str:
        return (write_flickr_precomp(tmp_path / name, images=10, eval_images=5, regions=2, dim=10, seed=seed)
                / "precomp" / "train_caps.txt").read_text()

    assert captions(1, "a") == captions(1, "b") != captions(2, "c")


def test_karpathy_variant_has_the_same_captions_and_loads(tmp_path) -> None:
    root = write_flickr_karpathy(tmp_path, images=12, eval_images=6, size=8, seed=5)
    train = load_karpathy(root / "dataset_flickr30k.json", root / "images", "train")
    val = load_karpathy(root / "dataset_flickr30k.json", root / "images", "val")
    assert (train.num_images, len(train.captions), val.num_images) == (12, 60, 6)
    precomp = write_flickr_precomp(tmp_path / "p", images=12, eval_images=6, regions=2, dim=10, seed=5)
    assert train.captions == load_precomp(precomp / "precomp", "train").captions
    entry = json.loads((root / "dataset_flickr30k.json").read_text())["images"][0]
    assert entry["sentences"][0]["tokens"] == entry["sentences"][0]["raw"].split()


def test_a_tiny_model_trained_on_it_beats_chance(tmp_path) -> None:
    write_flickr_precomp(tmp_path / "flickr30k", images=48, eval_images=24, regions=4, dim=16)
    towers = [TowerSpec("image", "tiny-regions", tuned=False), TowerSpec("text", "tiny-bert", shape={"seq_len": 8})]
    train = {"dataset": "flickr30k", "format": "precomp", "steps": 40, "eval_every": 20}
    spec = RunSpec(suite="t", config="c", label="full", method="full", method_options={}, task="retrieval",
                   task_options={"embed_dim": 32, "pooling": "mean", "hardest_negatives": False},
                   towers=towers, batch=16, gpus=1, steps=2, seed=0, mode="cpu", train=train)
    metrics = train_run(spec, RunOptions(data_root=str(tmp_path), checkpoints=str(tmp_path / "ckpt")))["metrics"]
    assert metrics["test"]["rsum"] > 2 * metrics["baseline"]["rsum"]
