"""Question answering data: VQAv2 and GQA in their published formats, and easy-vqa (installed from PyPI).

- VQAv2: `v2_OpenEnded_mscoco_<split>2014_questions.json` ({"questions": [{question_id, image_id,
  question}]}), `v2_mscoco_<split>2014_annotations.json` ({"annotations": [{question_id, answers:
  [{answer}] x 10}]}), images `images/<split>2014/COCO_<split>2014_<image_id:012d>.jpg`.
- GQA: `questions/<split>_balanced_questions.json` ({qid: {imageId, question, answer}}), images
  `images/<imageId>.jpg`.
- easy-vqa: 64 x 64 images of one shape; the package's own files.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError


@dataclass
class QAData:
    questions: list[str]
    image_paths: list[Path]
    answers: list[list[str]]  # every annotator's answer (VQAv2: 10; GQA and easy-vqa: 1)


def answer_vocabulary(data: QAData, size: int | None = None) -> list[str]:
    """The most frequent answers (all, or the top `size`), most frequent first, ties alphabetical."""
    counts = Counter(a for answers in data.answers for a in answers)
    ranked = sorted(counts, key=lambda a: (-counts[a], a))
    return ranked[:size] if size else ranked


def read_json(path: Path, what: str) -> object:
    if not path.is_file():
        raise UserError(f"missing {path} ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def load_vqav2(root: Path, split: str) -> QAData:
    questions = read_json(root / f"v2_OpenEnded_mscoco_{split}2014_questions.json", "VQAv2 questions")
    annotations = read_json(root / f"v2_mscoco_{split}2014_annotations.json", "VQAv2 annotations")
    try:
        answers = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in annotations["annotations"]}
        items = questions["questions"]
        image = root / "images" / f"{split}2014"
        return QAData(
            [q["question"] for q in items],
            [image / f"COCO_{split}2014_{q['image_id']:012d}.jpg" for q in items],
            [answers[q["question_id"]] for q in items],
        )
    except (KeyError, TypeError) as exc:
        raise UserError(f"{root}: VQAv2 files lack {exc} (see the question and annotation formats)") from None


def load_gqa(root: Path, split: str) -> QAData:
    questions = read_json(root / "questions" / f"{split}_balanced_questions.json", "GQA questions")
    try:
        items = list(questions.values())
        return QAData(
            [q["question"] for q in items],
            [root / "images" / f"{q['imageId']}.jpg" for q in items],
            [[q["answer"]] for q in items],
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{root}: GQA questions lack {exc} (expected {{qid: {{imageId, question, answer}}}})") from None


def load_easy_vqa(split: str) -> QAData:
    import easy_vqa

    if split == "train":
        texts, answers, ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    elif split == "test":
        texts, answers, ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    else:
        raise UserError(f"easy-vqa has the splits train and test, not {split!r}")
    return QAData(list(texts), [Path(paths[i]) for i in ids], [[a] for a in answers])
