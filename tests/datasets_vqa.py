"""VQAv2, GQA and grid-feature folders in their real formats, large enough for a tiny joint model to learn.

Each image is one colour with a little noise, in three shapes (landscape, portrait, square) so both padded
canvases occur. Questions ask its colour, and whether it is red.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from unipt_bench.data.grid_features import FORMAT, VERSION

from .datasets import COLORS

SHAPES = ((48, 32), (32, 48), (32, 32))  # (width, height)


def shaped_image(path: Path, rgb: tuple[int, int, int], n: int, seed: int) -> None:
    """Image `n` of a split: its shape cycles over every colour's images, so shape says nothing of colour."""
    width, height = SHAPES[n // len(COLORS) % len(SHAPES)]
    noise = np.random.default_rng(seed).integers(-20, 21, (height, width, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.array(rgb)[None, None, :] + noise, 0, 255).astype(np.uint8)).save(path)


def questions_about(color: str) -> list[tuple[str, list[str]]]:
    """(question, 10 annotators' answers): its colour (8 agree, 2 say gray), and whether it is red."""
    return [("what color is it?", [color] * 8 + ["gray"] * 2), ("is it red?", ["yes" if color == "red" else "no"] * 10)]


def write_vqav2_grid(root: Path, per_color: int = 4) -> Path:
    """train2014 and val2014: `per_color` images of each colour, two questions each (VQAv2 files and COCO names)."""
    qid = 0
    for split in ("train", "val"):
        questions, annotations = [], []
        for n in range(per_color * len(COLORS)):
            color = list(COLORS)[n % len(COLORS)]
            image_id = n + 1 if split == "train" else 1000 + n
            shaped_image(root / "images" / f"{split}2014" / f"COCO_{split}2014_{image_id:012d}.jpg", COLORS[color],
                         n, seed=image_id)
            for question, answers in questions_about(color):
                questions.append({"question_id": qid, "image_id": image_id, "question": question})
                annotations.append({"question_id": qid, "image_id": image_id, "multiple_choice_answer": answers[0],
                                    "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(answers)]})
                qid += 1
        (root / f"v2_OpenEnded_mscoco_{split}2014_questions.json").write_text(json.dumps({"questions": questions}))
        (root / f"v2_mscoco_{split}2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    return root


def write_gqa_grid(root: Path, per_color: int = 4) -> Path:
    """GQA balanced questions for train, val and testdev: `per_color` images of each colour, two questions each."""
    (root / "questions").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "testdev"):
        questions = {}
        for n in range(per_color * len(COLORS)):
            color = list(COLORS)[n % len(COLORS)]
            image_id = f"{split}{n}"
            shaped_image(root / "images" / f"{image_id}.jpg", COLORS[color], n, seed=n + 100 * len(split))
            for k, (question, answers) in enumerate(questions_about(color)):
                questions[f"{split}-{n}-{k}"] = {"imageId": image_id, "question": question, "answer": answers[0]}
        (root / "questions" / f"{split}_balanced_questions.json").write_text(json.dumps(questions))
    return root


def write_features(folder: Path, part: str, image_ids: list[str], grid: int, dim: int,
                   shape: tuple[int, ...] | None = None) -> Path:
    """A features folder part (docs/recipes/vqa.md): <part>.npy float16 [N, G, C] and its <part>.json index.
    `shape` writes an array of another shape than the index states (a broken folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = np.random.default_rng(0).normal(size=shape or (len(image_ids), grid, dim)).astype(np.float16)
    np.save(folder / f"{part}.npy", rows)
    index = {"format": FORMAT, "version": VERSION, "image_ids": image_ids, "grid": grid, "dim": dim}
    (folder / f"{part}.json").write_text(json.dumps(index))
    return folder


def image_ids(root: Path, part: str) -> list[str]:
    """The file stems of a fixture's image folder (the ids a features folder lists)."""
    return sorted(p.stem for p in (root / "images" / part).glob("*.jpg")) if part != "images" else \
        sorted(p.stem for p in (root / "images").glob("*.jpg"))
