"""Question answering data: VQAv2 and GQA in their published formats, and easy-vqa (installed from PyPI).

- VQAv2: `v2_OpenEnded_mscoco_<split>2014_questions.json` ({"questions": [{question_id, image_id,
  question}]}), `v2_mscoco_<split>2014_annotations.json` ({"annotations": [{question_id,
  multiple_choice_answer, answers: [{answer}] x 10}]}), images `images/<split>2014/COCO_<split>2014_<image_id:012d>.jpg`.
- GQA: `questions/<split>_balanced_questions.json` ({qid: {imageId, question, answer}}), images
  `images/<imageId>.jpg`.
- easy-vqa: 64 x 64 images of one shape; the package's own files.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

from ..errors import UserError
from .files import check_images, expect, field, read_json, typed


@dataclass
class QAData:
    questions: list[str]
    image_paths: list[Path]
    answers: list[list[str]]  # every annotator's answer (VQAv2: 10; GQA and easy-vqa: 1)
    # the question's one answer that answer vocabularies count (VQAv2: multiple_choice_answer, the most
    # common of the 10; GQA and easy-vqa: the answer); empty when a loader does not give it
    labels: list[str] = dataclass_field(default_factory=list)


def counted_vocabulary(labels: list[str], min_count: int, size: int | None = None) -> list[str]:
    """Answers that are the label of at least `min_count` questions, most frequent first, ties alphabetical
    (all of them, or the top `size`).

    The rule behind LXMERT's and CLIP-ViL's VQAv2 `trainval_ans2label.json` (read at CLIP-ViL
    src/tasks/vqa_data.py:82): an answer enters when it is the normalised multiple_choice_answer of at least
    9 questions (bottom-up-attention-vqa tools/compute_softscore.py:140-146, :241).
    """
    counts = Counter(labels)
    ranked = sorted((a for a, n in counts.items() if n >= min_count), key=lambda a: (-counts[a], a))
    return ranked[:size] if size else ranked


def load_vqav2(root: Path, split: str, images: bool = True) -> QAData:
    """A VQAv2 split; `images=False` when features stand for the images (they need not be there)."""
    questions_path = root / f"v2_OpenEnded_mscoco_{split}2014_questions.json"
    annotations_path = root / f"v2_mscoco_{split}2014_annotations.json"
    questions = field(read_json(questions_path, "VQAv2 questions"), "questions", list, questions_path)
    annotations = field(read_json(annotations_path, "VQAv2 annotations"), "annotations", list, annotations_path)
    answers, labels = {}, {}
    for n, annotation in enumerate(annotations):
        where = f"annotations[{n}]"
        entries = field(annotation, "answers", list, annotations_path, where)
        qid = field(annotation, "question_id", int, annotations_path, where)
        answers[qid] = [field(a, "answer", str, annotations_path, f"{where}.answers[{k}]") for k, a in enumerate(entries)]
        labels[qid] = field(annotation, "multiple_choice_answer", str, annotations_path, where)
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
        data.labels.append(labels[qid])
    if images:
        check_images(data.image_paths, questions_path)
    return data


def load_gqa(root: Path, split: str, images: bool = True) -> QAData:
    """A GQA balanced split; `images=False` when features stand for the images (they need not be there)."""
    path = root / "questions" / f"{split}_balanced_questions.json"
    questions = typed(read_json(path, "GQA questions"), dict, path, "")
    expect(questions, path, "no questions; expected {qid: {imageId, question, answer}}")
    data = QAData([], [], [])
    for qid, question in questions.items():
        where = f'"{qid}"'
        data.questions.append(field(question, "question", str, path, where))
        data.image_paths.append(root / "images" / f"{field(question, 'imageId', str, path, where)}.jpg")
        data.answers.append([field(question, "answer", str, path, where)])
        data.labels.append(data.answers[-1][0])
    if images:
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
    return QAData(list(texts), [Path(paths[i]) for i in ids], [[a] for a in answers], list(answers))
