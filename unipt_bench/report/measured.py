"""Measured accuracy as report columns: which metrics a training table shows, in what order, and which of the
paper's columns each one sits beside.

A training result's metrics hold `test` (the first test split's metrics) and, optionally, `splits` (every test
split's, e.g. val / testA / testB for grounding). A column is one (split, metric) pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .paper import PaperTable

# the order columns appear in; keys not listed follow, sorted
ORDER = (
    "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum",
    "1k_i2t_r1", "1k_i2t_r5", "1k_i2t_r10", "1k_t2i_r1", "1k_t2i_r5", "1k_t2i_r10", "1k_rsum",
    "t2v_r1", "t2v_r5", "t2v_r10", "t2v_mdr", "t2v_mnr", "v2t_r1", "v2t_r5", "v2t_r10", "v2t_mdr", "v2t_mnr",
    "accuracy",
)
WORDS = {"r1": "R@1", "r5": "R@5", "r10": "R@10", "mdr": "MdR", "mnr": "MnR", "rsum": "Rsum", "accuracy": "accuracy"}
LOWER_IS_BETTER = ("_mdr", "_mnr")  # median and mean rank

# (paper table, dataset, split, metric) -> the paper's column it corresponds to. "test" is the first test
# split (metrics["test"]). The paper's "T-I" is sentence retrieval, an image query ranking captions (i2t here);
# "I-T" is image retrieval (t2i); Table 2's "T-V" is a text query ranking videos (t2v).
# VQAv2's answers are public for val only, which is the test split here; the paper's test-dev is the
# evaluation server's: the columns sit side by side, the split names say they differ.
F30K_TABLE5 = {("flickr30k", "test", "i2t_r1"): "T-I", ("flickr30k", "test", "t2i_r1"): "I-T",
               ("flickr30k", "test", "rsum"): "Rsum"}
PAIRS: dict[str, dict[tuple[str, str, str], str]] = {
    "table1": {
        ("flickr30k", "test", "i2t_r1"): "F30K T-I", ("flickr30k", "test", "t2i_r1"): "F30K I-T",
        ("flickr30k", "test", "rsum"): "F30K Rsum",
        ("mscoco", "test", "1k_i2t_r1"): "COCO1K T-I", ("mscoco", "test", "1k_t2i_r1"): "COCO1K I-T",
        ("mscoco", "test", "1k_rsum"): "COCO1K Rsum",
        ("mscoco", "test", "i2t_r1"): "COCO5K T-I", ("mscoco", "test", "t2i_r1"): "COCO5K I-T",
        ("mscoco", "test", "rsum"): "COCO5K Rsum",
    },
    "table2": {
        ("msrvtt", "test", "t2v_r1"): "MSR-VTT T-V", ("msrvtt", "test", "v2t_r1"): "MSR-VTT V-T",
        ("msrvtt", "test", "rsum"): "MSR-VTT Rsum",
        ("msvd", "test", "t2v_r1"): "MSVD T-V", ("msvd", "test", "v2t_r1"): "MSVD V-T", ("msvd", "test", "rsum"): "MSVD Rsum",
    },
    "table3": {
        ("vqav2", "test", "accuracy"): "VQAv2 test-dev",
        ("gqa", "test", "accuracy"): "GQA test-dev", ("gqa", "testdev", "accuracy"): "GQA test-dev",
    },
    "table4": {
        **{(data, split, "accuracy"): f"{name} {split}" for data, name in (("refcoco", "RefCOCO"), ("refcoco+", "RefCOCO+"))
           for split in ("val", "testA", "testB")},
        ("refcocog", "val", "accuracy"): "RefCOCOg val", ("refcocog", "test", "accuracy"): "RefCOCOg test",
    },
    "table5-bert": F30K_TABLE5,
    "table5-resnext": F30K_TABLE5,
}


@dataclass(frozen=True)
class MeasuredColumn:
    split: str  # "test" (the first test split) or a split name from metrics["splits"]
    metric: str
    label: str
    paper: str | None = None  # the paper's column shown beside it

    @property
    def key(self) -> str:
        return f"{self.split}/{self.metric}"


def splits_of(metrics: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    """A result's test metrics per split: `splits` when present, else {"test": metrics["test"]}."""
    metrics = metrics or {}
    splits = metrics.get("splits")
    if isinstance(splits, dict) and splits:
        return {k: v for k, v in splits.items() if isinstance(v, dict)}
    return {"test": metrics["test"]} if isinstance(metrics.get("test"), dict) else {}


def metric_value(metrics: dict[str, Any] | None, split: str, metric: str) -> float | None:
    """One column's value; "test" falls back to metrics["test"] when the splits are named otherwise."""
    value = splits_of(metrics).get(split, {}).get(metric)
    if value is None and split == "test":
        value = ((metrics or {}).get("test") or {}).get(metric)
    return value


def metric_label(metric: str) -> str:
    """"i2t_r1" -> "i2t R@1", "1k_rsum" -> "1K Rsum", "accuracy" -> "accuracy"."""
    words = []
    for part in metric.split("_"):
        words.append("1K" if part == "1k" else WORDS.get(part, part))
    return " ".join(words)


def column_order(metric: str) -> tuple[int, str]:
    return (ORDER.index(metric), "") if metric in ORDER else (len(ORDER), metric)


def measured_columns(metric_sets: list[dict[str, Any] | None], paper: PaperTable | None, dataset: str
                     ) -> list[MeasuredColumn]:
    """The columns a training table shows: every (split, metric) any of its results has, splits in the order
    the results give them, metrics in ORDER; each beside the paper's column it corresponds to, if any."""
    splits: dict[str, set[str]] = {}
    for metrics in metric_sets:
        for split, values in splits_of(metrics).items():
            splits.setdefault(split, set()).update(k for k, v in values.items() if isinstance(v, int | float))
    pairs = PAIRS.get(paper.key, {}) if paper else {}
    first = next(iter(splits), "test")
    columns = []
    for split, metrics in splits.items():
        for metric in sorted(metrics, key=column_order):
            label = metric_label(metric) if split == "test" else f"{split} {metric_label(metric)}"
            column = pairs.get((dataset, split, metric)) or (pairs.get((dataset, "test", metric)) if split == first
                                                              else None)
            columns.append(MeasuredColumn(split, metric, label, column if paper and column in paper.metric_columns
                                          else None))
    return columns


def lower_is_better(metric: str) -> bool:
    return metric.endswith(LOWER_IS_BETTER)
