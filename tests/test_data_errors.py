"""A malformed dataset file is a UserError in one line that names the file and what was expected, never a
bare KeyError, TypeError, ValueError, UnicodeDecodeError or IndexError from deep inside a loader."""

from __future__ import annotations

import functools
import io
import json
import operator
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from unipt_bench.data.images import load_image
from unipt_bench.data.retrieval import load_karpathy, load_precomp
from unipt_bench.data.text import tokenizer_for
from unipt_bench.data.vqa import load_gqa, load_vqav2
from unipt_bench.errors import UserError

from .datasets import write_gqa, write_karpathy, write_precomp, write_vqav2

KARPATHY_JSON = "dataset_flickr30k.json"
IMS, CAPS = "precomp/train_ims.npy", "precomp/train_caps.txt"
QUESTIONS, ANNOTATIONS = "v2_OpenEnded_mscoco_train2014_questions.json", "v2_mscoco_train2014_annotations.json"
GQA_JSON = "questions/train_balanced_questions.json"


def write_tokenizer(root: Path) -> None:
    """The tokenizer files of the packaged MiniLM-L6 (no model weights)."""
    from unipt_bench.backbones.bert import minilm_path

    (root / "tokenizer").mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(Path(minilm_path()) / name, root / "tokenizer" / name)


# Each dataset: (write a valid copy under root, load it from root).
KARPATHY = (lambda root: write_karpathy(root, train_per_color=1),
            lambda root: load_karpathy(root / KARPATHY_JSON, root / "images", "train"))
PRECOMP = (lambda root: write_precomp(root, train_per_class=1), lambda root: load_precomp(root / "precomp", "train"))
VQAV2 = (write_vqav2, lambda root: load_vqav2(root, "train"))
GQA = (write_gqa, lambda root: load_gqa(root, "train"))
IMAGE = (KARPATHY[0], lambda root: load_image(root / "images" / "train_red_0.png", 32))
TOKENIZER = (write_tokenizer, lambda root: tokenizer_for(str(root / "tokenizer"), 30522))

DROP = object()
Corruption = Callable[[Path], Path]  # breaks a file under root, returns the path the error must name


def edit(relative: str, keys: tuple, value: object = DROP) -> Corruption:
    """Set (or drop) the value at `keys` in a JSON file; no keys replaces the whole document."""

    def corrupt(root: Path) -> Path:
        path = root / relative
        data = json.loads(path.read_text())
        if not keys:
            data = value
        else:
            parent = functools.reduce(operator.getitem, keys[:-1], data)
            if value is DROP:
                del parent[keys[-1]]
            else:
                parent[keys[-1]] = value
        path.write_text(json.dumps(data))
        return path

    return corrupt


def rewrite(relative: str, change: Callable[[bytes], bytes], named: str | None = None) -> Corruption:
    """Replace a file's bytes by change(bytes); the error must name `named` (default: the file itself)."""

    def corrupt(root: Path) -> Path:
        path = root / relative
        path.write_bytes(change(path.read_bytes()))
        return root / (named or relative)

    return corrupt


def npz(_: bytes) -> bytes:
    out = io.BytesIO()
    np.savez(out, features=np.zeros((6, 4, 16), np.float32))
    return out.getvalue()


def npy(array: np.ndarray) -> Callable[[bytes], bytes]:
    def change(_: bytes) -> bytes:
        out = io.BytesIO()
        np.save(out, array)
        return out.getvalue()

    return change


def npy_header_shape(shape: str) -> Callable[[bytes], bytes]:
    """A valid (6, 4, 16) .npy file whose header claims `shape` instead."""
    def change(data: bytes) -> bytes:
        end = data.index(b"\n") + 1  # the header, padded with spaces before its newline
        header = data[:end].replace(b"(6, 4, 16)", shape.encode())
        return header.replace(b" " * (len(header) - end) + b"\n", b"\n") + data[end:]

    return change


def remove(relative: str, named: str) -> Corruption:
    def corrupt(root: Path) -> Path:
        (root / relative).unlink()
        return root / named

    return corrupt


def latin1(data: bytes) -> bytes:
    return data.replace(b"red", b"r\xe9d", 1)  # "é" in Latin-1: not UTF-8


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


CASES = [
    # Karpathy-split JSON
    pytest.param(KARPATHY, edit(KARPATHY_JSON, (), [1, 2]), 'expected {"images": [...]}', id="karpathy-top-level-list"),
    pytest.param(KARPATHY, edit(KARPATHY_JSON, ("images",), 5), "images must be a list, got 5", id="karpathy-images-number"),
    pytest.param(KARPATHY, edit(KARPATHY_JSON, ("images", 0), "x"), 'images[0] must be an object, got "x"',
                 id="karpathy-entry-string"),
    pytest.param(KARPATHY, edit(KARPATHY_JSON, ("images", 0, "sentences")), 'images[0] has no "sentences"',
                 id="karpathy-no-sentences"),
    pytest.param(KARPATHY, edit(KARPATHY_JSON, ("images", 0, "split")), 'images[0] has no "split"',
                 id="karpathy-no-split"),
    pytest.param(KARPATHY, edit(KARPATHY_JSON, ("images", 0, "filename"), 7), "images[0].filename must be a string, got 7",
                 id="karpathy-filename-number"),
    pytest.param(KARPATHY, edit(KARPATHY_JSON, ("images", 0, "sentences", 1, "raw"), 5),
                 "images[0].sentences[1].raw must be a string, got 5", id="karpathy-raw-number"),
    pytest.param(KARPATHY, edit(KARPATHY_JSON, ("images", 0, "sentences", 1, "raw")),
                 'images[0].sentences[1] has no "raw"',
                 id="karpathy-no-raw"),
    pytest.param(KARPATHY, edit(KARPATHY_JSON, ("images", 0, "sentences"), []), "images[0].sentences is empty",
                 id="karpathy-no-captions"),
    pytest.param(KARPATHY, rewrite(KARPATHY_JSON, truncated), "not valid JSON", id="karpathy-truncated"),
    pytest.param(KARPATHY, rewrite(KARPATHY_JSON, latin1), "must be UTF-8 text", id="karpathy-not-utf8"),
    pytest.param(KARPATHY, rewrite(KARPATHY_JSON, lambda _: b"[" * 100_000 + b"]" * 100_000), "nested too deeply",
                 id="karpathy-nested-100000-deep"),
    # precomp features and captions
    pytest.param(PRECOMP, rewrite(IMS, lambda _: b""), "not a NumPy .npy array", id="precomp-empty-npy"),
    pytest.param(PRECOMP, rewrite(IMS, truncated), "not a NumPy .npy array", id="precomp-truncated-npy"),
    pytest.param(PRECOMP, rewrite(IMS, npz), "not a NumPy .npy array", id="precomp-npz-as-npy"),
    *(pytest.param(PRECOMP, rewrite(IMS, npy_header_shape(shape)), f"header gives shape {shape}",
                   id=f"precomp-npy-shape-{shape}")
      for shape in ("(-6, 4, 16)", "(6, 4, -16)", f"(-{'9' * 20}, 4, 16)", "(True, 4, 16)")),
    pytest.param(PRECOMP, rewrite(IMS, npy(np.zeros((6, 16), np.float32))),
                 "expected region features [images, regions, dims], got shape (6, 16)", id="precomp-2d"),
    pytest.param(PRECOMP, rewrite(IMS, npy(np.zeros((0, 4, 16), np.float32))),
                 "expected region features [images, regions, dims], got shape (0, 4, 16)", id="precomp-no-images"),
    pytest.param(PRECOMP, rewrite(IMS, npy(np.full((6, 4, 16), "x"))), "of numbers, got dtype <U1",
                 id="precomp-strings"),
    pytest.param(PRECOMP, rewrite(CAPS, lambda data: data.split(b"\n", 1)[1]),
                 "29 captions for 6 images in train_ims.npy; expected the same number for every image", id="precomp-caption-count"),
    pytest.param(PRECOMP, rewrite(CAPS, lambda _: b"\n"), "no captions", id="precomp-no-captions"),
    pytest.param(PRECOMP, rewrite(CAPS, latin1), "must be UTF-8 text", id="precomp-captions-not-utf8"),
    # VQAv2 questions and annotations
    pytest.param(VQAV2, edit(QUESTIONS, (), [1]), "the top level must be an object, got [1]", id="vqav2-top-level-list"),
    pytest.param(VQAV2, edit(QUESTIONS, ("questions", 0, "image_id"), "1"),
                 'questions[0].image_id must be an integer, got "1"', id="vqav2-image-id-string"),
    pytest.param(VQAV2, edit(ANNOTATIONS, ("annotations", 0, "answers"), "yes"),
                 'annotations[0].answers must be a list, got "yes"', id="vqav2-answers-string"),
    pytest.param(VQAV2, edit(ANNOTATIONS, ("annotations", 0, "answers", 3, "answer"), 5),
                 "annotations[0].answers[3].answer must be a string, got 5", id="vqav2-answer-number"),
    pytest.param(VQAV2, edit(ANNOTATIONS, ("annotations", 0, "answers"), []), "annotations[0].answers is empty",
                 id="vqav2-no-answers"),
    pytest.param(VQAV2, edit(ANNOTATIONS, ("annotations", 0)), "no annotation for question_id 0",
                 id="vqav2-question-without-annotation"),
    pytest.param(VQAV2, remove("images/train2014/COCO_train2014_000000000001.jpg", QUESTIONS), "is missing",
                 id="vqav2-missing-image"),
    # GQA questions
    pytest.param(GQA, edit(GQA_JSON, ("train-0", "answer"), 5), '"train-0".answer must be a string, got 5',
                 id="gqa-answer-number"),
    pytest.param(GQA, edit(GQA_JSON, ("train-0",), 3), '"train-0" must be an object, got 3', id="gqa-entry-number"),
    pytest.param(GQA, edit(GQA_JSON, (), ["q"]), 'the top level must be an object, got ["q"]', id="gqa-top-level-list"),
    pytest.param(GQA, edit(GQA_JSON, (), {}), "no questions", id="gqa-empty"),
    pytest.param(GQA, rewrite(GQA_JSON, latin1), "must be UTF-8 text", id="gqa-not-utf8"),
    # images and tokenizer files
    pytest.param(IMAGE, rewrite("images/train_red_0.png", truncated), "not a readable image", id="image-truncated"),
    pytest.param(IMAGE, rewrite("images/train_red_0.png", lambda _: b"GIF89a?"), "not a readable image",
                 id="image-garbage"),
    pytest.param(TOKENIZER, rewrite("tokenizer/tokenizer.json", truncated, named="tokenizer"),
                 "expected the tokenizer files transformers writes", id="tokenizer-truncated-json"),
]


@pytest.mark.parametrize(("dataset", "corrupt", "expected"), CASES)
def test_bad_dataset_file_is_a_user_error_naming_file_and_expectation(tmp_path, dataset, corrupt, expected) -> None:
    write, load = dataset
    write(tmp_path)
    named = corrupt(tmp_path)
    with pytest.raises(UserError) as info:
        load(tmp_path)
    message = str(info.value)
    assert str(named) in message and expected in message
    assert "\n" not in message  # the CLI prints it as one line


@pytest.mark.parametrize("dataset", [KARPATHY, PRECOMP, VQAV2, GQA, IMAGE])
def test_the_unbroken_datasets_load(tmp_path, dataset) -> None:
    write, load = dataset
    write(tmp_path)
    load(tmp_path)
