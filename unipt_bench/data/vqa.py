"""Question answering data: VQAv2 and GQA in their published formats, and easy-vqa (installed from PyPI).

- VQAv2: `v2_OpenEnded_mscoco_<split>2014_questions.json` ({"questions": [{question_id, image_id,
  question}]}), `v2_mscoco_<split>2014_annotations.json` ({"annotations": [{question_id, answers:
  [{answer}] x 10}]}), images `images/<split>2014/COCO_<split>2014_<image_id:012d>.jpg`.
- GQA: `questions/<split>_balanced_questions.json` ({qid: {imageId, question, answer}}), images
  `images/<imageId>.jpg`.
- easy-vqa: 64 x 64 images of one shape; the package's own files.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .files import check_images, expect, field, read_json, typed


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


def load_vqav2(root: Path, split: str) -> QAData:
    questions_path = root / f"v2_OpenEnded_mscoco_{split}2014_questions.json"
    annotations_path = root / f"v2_mscoco_{split}2014_annotations.json"
    questions = field(read_json(questions_path, "VQAv2 questions"), "questions", list, questions_path)
    annotations = field(read_json(annotations_path, "VQAv2 annotations"), "annotations", list, annotations_path)
    answers = {}
    for n, annotation in enumerate(annotations):
        where = f"annotations[{n}]"
        entries = field(annotation, "answers", list, annotations_path, where)
        answers[field(annotation, "question_id", int, annotations_path, where)] = [
            field(a, "answer", str, annotations_path, f"{where}.answers[{k}]") for k, a in enumerate(entries)
        ]
    data = QAData([], [], [])
    image = root / "images" / f"{split}2014"
    for n, question in enumerate(questions):
        where = f"questions[{n}]"
        qid = field(question, "question_id", int, questions_path, where)
        expect(qid in answers, annotations_path, f"no annotation for question_id {qid} (of {questions_path.name})")
        image_id = field(question, "image_id", int, questions_path, where)
        data.questions.append(field(question, "question", str, questions_path, where))
        data.image_paths.append(image / f"COCO_{split}2014_{image_id:012d}.jpg")
        data.answers.append(answers[qid])
    check_images(data.image_paths, questions_path)
    return data


def load_gqa(root: Path, split: str) -> QAData:
    path = root / "questions" / f"{split}_balanced_questions.json"
    questions = typed(read_json(path, "GQA questions"), dict, path, "")
    expect(questions, path, "no questions; expected {qid: {imageId, question, answer}}")
    data = QAData([], [], [])
    for qid, question in questions.items():
        where = f'"{qid}"'
        data.questions.append(field(question, "question", str, path, where))
        data.image_paths.append(root / "images" / f"{field(question, 'imageId', str, path, where)}.jpg")
        data.answers.append([field(question, "answer", str, path, where)])
    check_images(data.image_paths, path)
    return data


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
