"""The leaderboard's rows: every result of a suite, grouped as its report's tables group them, and ranked by
measured test accuracy within each training table (profile tables keep suite order: there is no accuracy
to rank by, and memory is a column to sort on)."""

from __future__ import annotations

from typing import Any

from ..results import RunResult
from .measured import lower_is_better
from .views import table_views


def leaderboard_rows(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per result (RunResult.row() plus where its table is, its job and overrides, the measured score,
    the paper's score beside it and its rank), tables in report order, training rows best first."""
    rows = []
    for view in table_views(results, with_figures=False):
        ranked = sorted(view.rows, key=lambda r: rank_key(r.test)) if view.trained else view.rows
        rank = 0
        for r in ranked:
            row = r.result.row()
            scored = view.trained and r.ok and r.test is not None
            rank += scored
            row.update(anchor=view.anchor, job=view.job, overrides=r.overrides, rank=rank if scored else None,
                       paper_score=r.paper_metric(view.paper_column) if scored else None,
                       paper_metric=view.paper_column if scored else None)
            rows.append(row)
    return rows


def rank_key(test: tuple[str, float] | None) -> tuple[int, float]:
    """Scored rows first, the best score first (lower first for rank metrics such as MdR)."""
    if test is None:
        return (1, 0.0)
    name, score = test
    return (0, score if lower_is_better(name) else -score)
