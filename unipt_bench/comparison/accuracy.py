"""Measured accuracy from the result store: a training run of the same method on the same model and task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import RunSpec
from ..results import ResultStore, RunResult


def same_model(trained: RunSpec, spec: RunSpec) -> bool:
    """The same task, method (and options) and towers (backbones and which are tuned); weights may differ."""
    towers = lambda s: sorted((t.name, t.backbone, t.tuned) for t in s.towers)  # noqa: E731
    return (trained.task == spec.task and trained.method == spec.method
            and trained.method_options == spec.method_options and towers(trained) == towers(spec))


def trained_scores(store_root: str | Path, specs: list[RunSpec]) -> dict[str, dict[str, Any]]:
    """label -> {accuracy, accuracy_metric, accuracy_run} of the newest finished training that matches each spec."""
    store = ResultStore(store_root)
    found: dict[str, tuple[str, RunResult]] = {}
    for suite in store.suites():
        for result in store.latest(suite).values():
            if result.status != "ok" or result.spec.get("train") is None or not result.metrics:
                continue
            trained = result.run_spec
            for spec in specs:
                if same_model(trained, spec) and (spec.label not in found or result.finished > found[spec.label][0]):
                    found[spec.label] = (result.finished, result)
    scores = {}
    for label, (_, result) in found.items():
        row = result.row()
        if row["test_score"] is not None:
            scores[label] = {"accuracy": row["test_score"], "accuracy_metric": row["metric"],
                             "accuracy_run": f"{row['suite']}/{result.key} ({result.spec['mode']})"}
    return scores
