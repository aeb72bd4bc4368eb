"""VQA training data: splits, answer vocabulary, soft-score targets, batches and accuracy.

Towers are fed by modality: a text tower gets the question, an image tower the image, a joint
("text+grid") tower the question with its image's grid features (data/grid_features.py). Splits:
easy-vqa has train and test, so the model is selected on `val_size` questions held out from train;
VQAv2's public val split is the test set (test annotations are not public), with held-out train
questions for selection; GQA uses val for selection and testdev for the test.

Answer vocabulary: the answers that are the normalised label (VQAv2: multiple_choice_answer) of at least
`min_answer_count` training questions (data/vqa.py `counted_vocabulary`). Accuracy: VQAv2's soft score
min(#annotators who gave the answer / 3, 1); GQA and easy-vqa: exact match (docs/recipes/vqa.md).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..config import TrainSpec
from ..data.grid_features import Extractor, GridStore
from ..data.images import verify_images
from ..data.joint_inputs import JointValue
from ..data.vqa import QAData, counted_vocabulary, load_easy_vqa, load_gqa, load_vqav2
from ..errors import UserError
from .metrics import exact_match, normalize_answer, vqa_accuracy

SOFT = {"vqav2": True, "gqa": False, "easy-vqa": False}  # VQAv2's soft accuracy, or exact match


def subset(data: QAData, rows: list[int]) -> QAData:
    return QAData([data.questions[i] for i in rows], [data.image_paths[i] for i in rows],
                  [data.answers[i] for i in rows], [data.labels[i] for i in rows] if data.labels else [])


def hold_out(data: QAData, size: int, seed: int) -> tuple[QAData, QAData]:
    """(rest, held-out) with `size` questions drawn by a seeded permutation."""
    if not 0 < size < len(data.questions):
        raise UserError(f"val_size {size} must be between 1 and {len(data.questions) - 1}")
    order = torch.randperm(len(data.questions), generator=torch.Generator().manual_seed(seed)).tolist()
    return subset(data, sorted(order[size:])), subset(data, sorted(order[:size]))


def missing(spec: TrainSpec, data_root: Path, task: Any = None) -> str:
    """What the dataset lacks to train ("" when its question files, and its images or the features folder
    named by the task's `features` option, are there). Only files are looked for: loading the data (before any
    run starts, jobs.check_data) reports a broken one."""
    root = data_root / (spec.path or spec.dataset)
    if spec.dataset == "easy-vqa":
        try:
            import easy_vqa  # noqa: F401
        except ImportError:
            return "the easy-vqa package is not installed (pip install easy-vqa)"
        return ""
    if spec.dataset == "vqav2":
        needed = [root / f"v2_OpenEnded_mscoco_{s}2014_questions.json" for s in ("train", "val")]
        needed += [root / f"v2_mscoco_{s}2014_annotations.json" for s in ("train", "val")]
    elif spec.dataset == "gqa":
        needed = [root / "questions" / f"{s}_balanced_questions.json" for s in ("train", "val", "testdev")]
    else:
        return f"the vqa task reads easy-vqa, vqav2 or gqa, not {spec.dataset!r}"
    needed.append(features_folder(root, task.features) if getattr(task, "features", "") else root / "images")
    absent = [str(p) for p in needed if not p.exists()]
    return f"missing {', '.join(absent)}" if absent else ""


def load_splits(spec: TrainSpec, data_root: Path, seed: int, images: bool = True) -> dict[str, QAData]:
    """train, val and test; `images=False` when a features folder stands for the images."""
    root = data_root / (spec.path or spec.dataset)
    if spec.dataset == "easy-vqa":
        train, val = hold_out(load_easy_vqa("train"), spec.val_size, seed)
        return {"train": train, "val": val, "test": load_easy_vqa("test")}
    if spec.dataset == "vqav2":
        train, val = hold_out(load_vqav2(root, "train", images), spec.val_size, seed)
        return {"train": train, "val": val, "test": load_vqav2(root, "val", images)}
    if spec.dataset == "gqa":
        return {split: load_gqa(root, name, images) for split, name in (("train", "train"), ("val", "val"),
                                                                         ("test", "testdev"))}
    raise UserError(f"the vqa task reads easy-vqa, vqav2 or gqa, not {spec.dataset!r}")


def soft_targets(answers: list[str], vocab: dict[str, int]) -> torch.Tensor:
    """min(#annotators / 3, 1) per answer when several annotators answered (VQAv2); else 1 for the answer."""
    target = torch.zeros(len(vocab))
    counts = Counter(normalize_answer(a) for a in answers)
    for answer, count in counts.items():
        if answer in vocab:
            target[vocab[answer]] = min(count / 3.0, 1.0) if len(answers) >= 3 else 1.0
    return target


def features_folder(root: Path, features: str) -> Path:
    """A user's features folder: absolute, or under the dataset's folder."""
    path = Path(features).expanduser()
    return path if path.is_absolute() else root / path


def grid_store(data: dict[str, QAData], root: Path, task: Any) -> tuple[GridStore, dict[str, Any]]:
    """The grid features of every image the splits use, and how they were made (for the results)."""
    paths = sorted({p for split in data.values() for p in split.image_paths})
    if task.features:
        folder = features_folder(root, task.features)
        if not folder.is_dir():
            raise UserError(f"missing {folder} (task option features: a grid features folder, docs/recipes/vqa.md)")
        return GridStore(paths, folder, None), {"folder": str(folder), "extractor": "features given by the user"}
    extractor = Extractor(task.extractor, task.extractor_weights, task.extractor_stage, task.image_min, task.image_max)
    folder = root / "grid_features" / extractor.tag()
    weights = ("random: an untrained extractor, not CLIP's weights" if extractor.weights == "random"
               else f"checkpoint {extractor.weights}")
    return GridStore(paths, folder, extractor), {"folder": str(folder), "extractor": extractor.describe(),
                                                 "extractor_weights": weights}


class VQAData:
    selection = "accuracy"

    def __init__(self, spec: TrainSpec, data_root: Path, seed: int, modalities: dict[str, str], task: Any = None) -> None:
        root = self.root = data_root / (spec.path or spec.dataset)
        features_only = bool(getattr(task, "features", "")) and set(modalities.values()) == {"text+grid"}
        self.splits = load_splits(spec, data_root, seed, images=not features_only)
        if spec.max_train:
            self.splits["train"] = subset(self.splits["train"], list(range(min(spec.max_train, len(self.splits["train"].questions)))))
        if spec.max_eval:
            for name in ("val", "test"):
                data = self.splits[name]
                self.splits[name] = subset(data, list(range(min(spec.max_eval, len(data.questions)))))
        train = self.splits["train"]
        min_count = task.min_answer_count if task is not None else 1
        self.answers = counted_vocabulary([normalize_answer(a) for a in train.labels], min_count, spec.num_answers or None)
        if not self.answers:
            raise UserError(f"{spec.dataset}: no answer is the label of {min_count} or more of the {len(train.labels)} "
                            "training questions; expected a larger training split or a lower task option min_answer_count")
        self.vocab = {a: i for i, a in enumerate(self.answers)}
        self.soft = SOFT.get(spec.dataset, False)
        self.fields = {}
        for name, modality in modalities.items():
            if modality not in ("text", "image", "text+grid"):
                raise UserError(f"vqa training feeds text, image and joint (text+grid) towers; tower {name!r} is {modality}")
            self.fields[name] = {"text": "questions", "image": "image_paths", "text+grid": "joint"}[modality]
        self.grids, self.features = None, None
        if "joint" in self.fields.values():
            self.grids, self.features = grid_store(self.splits, root, task if task is not None else default_task())

    def verify(self) -> None:
        """Every image an image tower reads decodes (once, before any run starts: jobs.check_data). A joint tower's
        images were read when their grid features were extracted, or a features folder stands for them."""
        if "image_paths" in self.fields.values():
            verify_images([p for data in self.splits.values() for p in data.image_paths], self.root)

    def size(self, split: str) -> int:
        return len(self.splits[split].questions)

    def task_options(self) -> dict[str, Any]:
        """The answer head's size comes from the data's answer vocabulary."""
        return {"num_answers": len(self.answers)}

    def values(self, data: QAData, field: str, rows: list[int]) -> list[Any]:
        """One tower's raw inputs for `rows`: questions, image paths, or (question, grid features) pairs."""
        if field != "joint":
            return [getattr(data, field)[i] for i in rows]
        return [JointValue(data.questions[i], self.grids.row(data.image_paths[i]), self.grids.source(data.image_paths[i]))
                for i in rows]

    def batch(self, split: str, rows: list[int], inputs: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        data = self.splits[split]
        batch = {name: inputs[name](self.values(data, f, rows)) for name, f in self.fields.items()}
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
        described = {"splits": {k: self.size(k) for k in self.splits}, "answers": len(self.answers),
                     "metric": "VQA accuracy (soft scores)" if self.soft else "exact match"}
        return described | ({"grid_features": self.features} if self.features else {})


def default_task() -> Any:
    from .vqa import VQA

    return VQA()


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """Move a batch's tensors to `device`; cache keys stay on the CPU, where the cache lives."""
    return {
        k: to_device(v, device) if isinstance(v, dict) else (v if k == "cache_keys" else v.to(device))
        for k, v in batch.items()
    }
