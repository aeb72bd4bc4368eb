"""The one sentence each report table opens with, computed from its rows: for training tables, which methods
are on the measured accuracy-memory front and their memory ratios beside the paper's; for profile tables, the
lowest and highest peak."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from .figures import pareto_front

if TYPE_CHECKING:
    from .views import RowView, TableView


def headline(view: TableView) -> str:
    ok = [r for r in view.rows if r.ok and r.peak is not None]
    if not ok:
        counts = Counter(r.status.replace("_", " ") for r in view.rows)
        return "No run of this table finished: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + "."
    scored = [r for r in ok if r.test]
    if view.trained and scored:
        return accuracy_headline(view, scored)
    return memory_headline(view, ok)


def ratio_words(row: RowView, reference: str | None, first: bool) -> str:
    """"0.47x adapter's memory (paper: 0.35x)"; the reference is named in the first mention only."""
    if row.ratio is None or reference is None:
        return f"{row.peak_gib:.2f} GiB"
    paper = f" (paper: {row.paper_ratio:.2f}x)" if row.paper_ratio is not None else ""
    return f"{row.ratio:.2f}x {reference}'s memory{paper}" if first else f"{row.ratio:.2f}x{paper}"


def memory_headline(view: TableView, ok: list[RowView]) -> str:
    """"unipt has the lowest peak, 0.47x adapter's memory (paper: 0.35x); prompt the highest, 1.08x (paper: 1.07x)."""
    low = min(ok, key=lambda r: r.peak)
    what = "training peak" if view.trained else "peak"
    if len(ok) == 1:
        return f"{low.label}: {what} {low.peak_gib:.2f} GiB, {view.mode_words}."
    high = max(ok, key=lambda r: r.peak)
    if low.label == view.reference:  # ratios to itself say nothing: name it as the reference
        return f"{low.label} (the reference) has the lowest {what}; {high.label} the highest, " \
               f"{ratio_words(high, view.reference, True)}."
    return (f"{low.label} has the lowest {what}, {ratio_words(low, view.reference, True)}; "
            f"{high.label} the highest, {ratio_words(high, view.reference, low.ratio is None)}.")


def accuracy_headline(view: TableView, scored: list[RowView]) -> str:
    """"On the measured accuracy-memory front (test rsum vs training peak): unipt at 0.47x adapter's memory
    (paper: 0.35x), rsum 80.50 (paper Rsum: 510.5); full at 1.30x, rsum 95.00."""
    metric = scored[0].test[0]
    if len(scored) == 1:
        row = scored[0]
        chance = f" (chance {row.baseline:.2f})" if row.baseline is not None else ""
        return (f"Only {row.label} finished training: test {metric} {row.test[1]:.2f}{chance} at a "
                f"{row.peak_gib:.2f} GiB training peak.")
    front = [scored[i] for i in pareto_front([(r.peak, r.test[1]) for r in scored])]
    parts = []
    for i, row in enumerate(front):
        paper = row.paper_metric(view.paper_column)
        paper_words = f" (paper {view.paper_column}: {paper:g})" if paper is not None else ""
        parts.append(f"{row.label} at {ratio_words(row, view.reference, i == 0)}, {metric} {row.test[1]:.2f}"
                     f"{paper_words}")
    return f"On the measured accuracy-memory front (test {metric} vs training peak): {'; '.join(parts)}."
