"""Small datasets in the real published formats, written by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
          "black": (10, 10, 10), "white": (245, 245, 245)}


def color_image(path: Path, rgb: tuple[int, int, int], seed: int, size: int = 32) -> None:
    """A square of one colour with a little noise."""
    noise = np.random.default_rng(seed).integers(-20, 21, (size, size, 3))
    pixels = np.clip(np.array(rgb)[None, None, :] + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_karpathy(root: Path, train_per_color: int = 6, name: str = "dataset_flickr30k.json") -> Path:
    """Karpathy-split JSON + images/: each image one colour, two captions naming it; val and test one image per colour."""
    images = []
    index = 0
    for split, count in (("train", train_per_color), ("val", 1), ("test", 1)):
        for color, rgb in COLORS.items():
            for k in range(count):
                filename = f"{split}_{color}_{k}.png"
                color_image(root / "images" / filename, rgb, seed=index)
                images.append({"filename": filename, "split": split, "imgid": index,
                               "sentences": [{"raw": f"a {color} square"}, {"raw": f"something {color} here"}]})
                index += 1
    (root / name).write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return root


def write_precomp(root: Path, train_per_class: int = 8, regions: int = 4, dim: int = 16) -> Path:
    """precomp/<split>_ims.npy region features + <split>_caps.txt, 5 captions per image, the class in both."""
    rng = np.random.default_rng(0)
    folder = root / "precomp"
    folder.mkdir(parents=True, exist_ok=True)
    classes = list(COLORS)
    for split, count in (("train", train_per_class), ("dev", 1), ("test", 1)):
        features, captions = [], []
        for c, color in enumerate(classes):
            for _ in range(count):
                base = np.zeros((regions, dim), dtype=np.float32)
                base[:, c] = 3.0  # the class signal in every region
                features.append(base + rng.normal(0, 0.3, (regions, dim)).astype(np.float32))
                captions += [f"a {color} thing", f"{color}", f"the {color} one", f"look {color}", f"{color} again"]
        np.save(folder / f"{split}_ims.npy", np.stack(features))
        (folder / f"{split}_caps.txt").write_text("\n".join(captions) + "\n")
    return root


def write_vqav2(root: Path) -> Path:
    """VQAv2 questions + annotations (10 answers each) for train2014 and val2014, with COCO-named images."""
    qid = 0
    for split in ("train", "val"):
        questions, annotations = [], []
        for image_id, (color, rgb) in enumerate(COLORS.items(), start=1):
            color_image(root / "images" / f"{split}2014" / f"COCO_{split}2014_{image_id:012d}.jpg", rgb, seed=image_id)
            for question, answers in (("what color is it?", [color] * 8 + ["gray"] * 2),
                                      ("is it red?", ["yes" if color == "red" else "no"] * 10)):
                questions.append({"question_id": qid, "image_id": image_id, "question": question})
                annotations.append({"question_id": qid, "image_id": image_id,
                                    "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)],
                                    "multiple_choice_answer": answers[0]})
                qid += 1
        (root / f"v2_OpenEnded_mscoco_{split}2014_questions.json").write_text(json.dumps({"questions": questions}))
        (root / f"v2_mscoco_{split}2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    return root


def write_gqa(root: Path) -> Path:
    """GQA balanced questions ({qid: {imageId, question, answer}}) for train, val and testdev, with images."""
    for split in ("train", "val", "testdev"):
        questions = {}
        for n, (color, rgb) in enumerate(COLORS.items()):
            image_id = f"{split}{n}"
            color_image(root / "images" / f"{image_id}.jpg", rgb, seed=n)
            questions[f"{split}-{n}"] = {"imageId": image_id, "question": "which color?", "answer": color}
        (root / "questions").mkdir(parents=True, exist_ok=True)
        (root / "questions" / f"{split}_balanced_questions.json").write_text(json.dumps(questions))
    return root
