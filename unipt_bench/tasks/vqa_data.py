"""VQA training data: splits, answer vocabulary, soft-score targets, batches and accuracy.

Towers are fed by modality: a text tower gets the question, an image tower the image. Splits:
easy-vqa has train and test, so the model is selected on `val_size` questions held out from train;
VQAv2's public val split is the test set (test annotations are not public), with held-out train
questions for selection; GQA uses val for selection and testdev for the test.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..config import TrainSpec
from ..data.vqa import QAData, answer_vocabulary, load_easy_vqa, load_gqa, load_vqav2
from ..errors import UserError
from .metrics import exact_match, normalize_answer, vqa_accuracy


def subset(data: QAData, rows: list[int]) -> QAData:
    return QAData([data.questions[i] for i in rows], [data.image_paths[i] for i in rows],
                  [data.answers[i] for i in rows])


def hold_out(data: QAData, size: int, seed: int) -> tuple[QAData, QAData]:
    """(rest, held-out) with `size` questions drawn by a seeded permutation."""
    if not 0 < size < len(data.questions):
        raise UserError(f"val_size {size} must be between 1 and {len(data.questions) - 1}")
    order = torch.randperm(len(data.questions), generator=torch.Generator().manual_seed(seed)).tolist()
    return subset(data, sorted(order[size:])), subset(data, sorted(order[:size]))


def missing(spec: TrainSpec, data_root: Path) -> str:
    """What the dataset lacks to train ("" when its question files are there)."""
    root = data_root / (spec.path or spec.dataset)
    if spec.dataset == "easy-vqa":
        try:
            import easy_vqa  # noqa: F401
        except ImportError:
            return "the easy-vqa package is not installed (pip install easy-vqa)"
        return ""
    if spec.dataset == "vqav2":
        needed = [root / "v2_OpenEnded_mscoco_train2014_questions.json", root / "v2_mscoco_train2014_annotations.json"]
    elif spec.dataset == "gqa":
        needed = [root / "questions" / "train_balanced_questions.json"]
    else:
        return f"the vqa task reads easy-vqa, vqav2 or gqa, not {spec.dataset!r}"
    absent = [str(p) for p in needed if not p.exists()]
    return f"missing {', '.join(absent)}" if absent else ""


def load_splits(spec: TrainSpec, data_root: Path, seed: int) -> dict[str, QAData]:
    root = data_root / (spec.path or spec.dataset)
    if spec.dataset == "easy-vqa":
        train, val = hold_out(load_easy_vqa("train"), spec.val_size, seed)
        return {"train": train, "val": val, "test": load_easy_vqa("test")}
    if spec.dataset == "vqav2":
        train, val = hold_out(load_vqav2(root, "train"), spec.val_size, seed)
        return {"train": train, "val": val, "test": load_vqav2(root, "val")}
    if spec.dataset == "gqa":
        return {"train": load_gqa(root, "train"), "val": load_gqa(root, "val"), "test": load_gqa(root, "testdev")}
    raise UserError(f"the vqa task reads easy-vqa, vqav2 or gqa, not {spec.dataset!r}")


def soft_targets(answers: list[str], vocab: dict[str, int]) -> torch.Tensor:
    """min(#annotators / 3, 1) per answer when several annotators answered (VQAv2); else 1 for the answer."""
    target = torch.zeros(len(vocab))
    counts = Counter(normalize_answer(a) for a in answers)
    for answer, count in counts.items():
        if answer in vocab:
            target[vocab[answer]] = min(count / 3.0, 1.0) if len(answers) >= 3 else 1.0
    return target


class VQAData:
    selection = "accuracy"

    def __init__(self, spec: TrainSpec, data_root: Path, seed: int, modalities: dict[str, str]) -> None:
        self.splits = load_splits(spec, data_root, seed)
        if spec.max_train:
            self.splits["train"] = subset(self.splits["train"], list(range(min(spec.max_train, len(self.splits["train"].questions)))))
        if spec.max_eval:
            for name in ("val", "test"):
                data = self.splits[name]
                self.splits[name] = subset(data, list(range(min(spec.max_eval, len(data.questions)))))
        train = self.splits["train"]
        normalised = QAData(train.questions, train.image_paths, [[normalize_answer(a) for a in x] for x in train.answers])
        self.answers = answer_vocabulary(normalised, spec.num_answers or None)
        self.vocab = {a: i for i, a in enumerate(self.answers)}
        self.soft = any(len(a) >= 3 for a in train.answers[:100])  # VQAv2-style: several annotators
        self.fields = {}
        for name, modality in modalities.items():
            if modality not in ("text", "image"):
                raise UserError(f"vqa training feeds text and image towers; tower {name!r} is {modality}")
            self.fields[name] = "questions" if modality == "text" else "image_paths"

    def size(self, split: str) -> int:
        return len(self.splits[split].questions)

    def task_options(self) -> dict[str, Any]:
        """The answer head's size comes from the data's answer vocabulary."""
        return {"num_answers": len(self.answers)}

    def batch(self, split: str, rows: list[int], inputs: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        data = self.splits[split]
        batch = {name: inputs[name]([getattr(data, f)[i] for i in rows]) for name, f in self.fields.items()}
        batch["targets"] = {"scores": torch.stack([soft_targets(data.answers[i], self.vocab) for i in rows])}
        return batch

    def accuracy(self, predictions: list[str], split: str) -> float:
        answers = self.splits[split].answers
        if self.soft:
            return vqa_accuracy(predictions, answers)
        return exact_match(predictions, [a[0] for a in answers])

    @torch.no_grad()
    def evaluate(self, model: Any, split: str, inputs: dict[str, Any], batch_size: int, device: Any) -> dict[str, float]:
        predictions: list[str] = []
        for start in range(0, self.size(split), batch_size):
            rows = list(range(start, min(start + batch_size, self.size(split))))
            batch = to_device(self.batch(split, rows, inputs), device)
            predictions += [self.answers[i] for i in model.logits(batch).argmax(dim=1).tolist()]
        return {"accuracy": self.accuracy(predictions, split)}

    def baseline(self, split: str) -> dict[str, float]:
        """The majority-answer baseline: always the training set's most frequent answer."""
        return {"accuracy": self.accuracy([self.answers[0]] * self.size(split), split), "answer": self.answers[0]}

    def describe(self) -> dict[str, Any]:
        return {"splits": {k: self.size(k) for k in self.splits}, "answers": len(self.answers),
                "metric": "VQA accuracy (soft scores)" if self.soft else "exact match"}


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """Move a batch's tensors to `device`; cache keys stay on the CPU, where the cache lives."""
    return {
        k: to_device(v, device) if isinstance(v, dict) else (v if k == "cache_keys" else v.to(device))
        for k, v in batch.items()
    }
