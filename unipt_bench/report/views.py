"""Pivot stored results into what a report shows: per configuration and mode, one row per method beside
the paper's row, memory ratios, breakdowns, trade-offs and provenance."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..memory.base import CATEGORIES, PHASES
from ..memory.estimate import OWNERS
from ..results import RunResult
from . import figures
from .paper import TABLES, PaperRow, PaperTable, paper_g

# protocol fields that must match for figures to share a table (per-method batch and shapes may differ)
SIDE_BY_SIDE = ("dtype", "amp", "optimizer", "zero_grad", "attention", "cudnn_benchmark", "tf32_matmul",
                "allocator_conf", "empty_cache")
MODE_WORDS = {"estimate": "estimated (fake tensors)", "cpu": "measured on CPU tensors",
              "cuda": "measured on the GPU (max_memory_allocated)"}


@dataclass
class RowView:
    result: RunResult
    paper: PaperRow | None
    ratio: float | None = None  # peak / the reference method's peak, same table
    paper_ratio: float | None = None

    @property
    def label(self) -> str:
        return self.result.spec["label"]

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def ok(self) -> bool:
        return self.result.status == "ok"

    @property
    def memory(self) -> dict[str, Any]:
        return self.result.primary_memory() or {}

    @property
    def peak(self) -> int | None:
        return self.memory.get("peak_bytes")

    @property
    def peak_g(self) -> float | None:
        return paper_g(self.peak)

    @property
    def peak_gib(self) -> float | None:
        return None if self.peak is None else self.peak / 2**30

    @property
    def difference_g(self) -> float | None:
        if self.peak_g is None or self.paper is None or self.paper.memory_g is None:
            return None
        return self.peak_g - self.paper.memory_g

    @property
    def params(self) -> dict[str, int]:
        return self.result.params or {}

    @property
    def test(self) -> tuple[str, float] | None:
        metrics = self.result.metrics or {}
        name = metrics.get("selection")
        score = (metrics.get("test") or {}).get(name) if name else None
        return None if score is None else (name, score)

    @property
    def baseline(self) -> float | None:
        metrics = self.result.metrics or {}
        return (metrics.get("baseline") or {}).get(metrics.get("selection"))

    @property
    def phases(self) -> dict[str, int | None]:
        by_phase = self.memory.get("by_phase", {})
        return {p: (by_phase.get(p) or {}).get("peak_bytes") or (by_phase.get(p) or {}).get("max_memory_allocated")
                for p in PHASES}

    @property
    def calibration(self) -> dict[str, Any] | None:
        return self.result.calibration


@dataclass
class TableView:
    config: str
    title: str
    mode: str
    rows: list[RowView]
    paper: PaperTable | None
    figures: dict[str, str] = field(default_factory=dict)
    protocol_note: str = ""  # set when this configuration's results were split by differing protocols
    part: int = 0  # which of those splits

    @property
    def mode_words(self) -> str:
        return MODE_WORDS.get(self.mode, self.mode)

    @property
    def counters(self) -> list[str]:
        return sorted({r.memory.get("counter") for r in self.rows if r.memory.get("counter")})

    @property
    def anchor(self) -> str:
        return f"{self.config}-{self.mode}" + (f"-{self.part}" if self.part else "")


def protocol_key(result: RunResult) -> str | None:
    """The SIDE_BY_SIDE part of a result's protocol; None for results that measured nothing."""
    if not result.protocol:
        return None
    return json.dumps({f: result.protocol.get(f) for f in SIDE_BY_SIDE}, sort_keys=True)


def split_by_protocol(members: list[RunResult]) -> list[tuple[list[RunResult], str]]:
    """Results of one configuration and mode, split so that each part's protocols match; each part
    with a note naming the fields that differ. Results without a protocol (failures) join the first."""
    keyed = [(protocol_key(r), r) for r in members]
    parts: dict[str, list[RunResult]] = {}
    for key, r in keyed:
        if key is not None:
            parts.setdefault(key, []).append(r)
    if len(parts) <= 1:
        return [(members, "")]
    keys = list(parts)
    protocols = [json.loads(k) for k in keys]
    differing = [f for f in SIDE_BY_SIDE if len({json.dumps(p[f]) for p in protocols}) > 1]
    parts[keys[0]] = [r for key, r in keyed if key in (None, keys[0])]
    return [(parts[k], "protocol: " + ", ".join(f"{f} = {p[f]}" for f in differing))
            for k, p in zip(keys, protocols, strict=True)]


def table_views(results: list[RunResult], with_figures: bool = True) -> list[TableView]:
    """One view per (configuration, mode, protocol), in suite order: estimates and measurements never
    share a table, nor do figures measured under different protocols."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in sorted(results, key=lambda r: r.display_order):
        groups.setdefault((r.spec["config"], r.spec["mode"]), []).append(r)
    views = []
    for (config, mode), grouped in groups.items():
        for part, (members, note) in enumerate(split_by_protocol(grouped)):
            paper = TABLES.get(members[0].spec.get("paper") or "")
            rows = [RowView(r, paper.rows.get(r.spec["method"]) if paper and r.spec["label"] == r.spec["method"]
                            else None) for r in members]
            add_ratios(rows, paper)
            view = TableView(config, members[0].spec.get("title") or config, mode, rows, paper, protocol_note=note,
                             part=part)
            if with_figures:
                view.figures = table_figures(view)
            views.append(view)
    return views


def add_ratios(rows: list[RowView], paper: PaperTable | None) -> None:
    """Memory ratios to the reference method (the paper's, else adapter, else lst) in this table and the paper's."""
    labels = {r.label: r for r in rows}
    reference = next((m for m in ([paper.reference] if paper else []) + ["adapter", "lst"] if m in labels), None)
    ref = labels.get(reference) if reference else None
    for r in rows:
        if ref is not None and ref.peak and r.peak is not None:
            r.ratio = r.peak / ref.peak
        if paper and r.paper and r.paper.memory_g and reference in paper.rows and paper.rows[reference].memory_g:
            r.paper_ratio = r.paper.memory_g / paper.rows[reference].memory_g


def table_figures(view: TableView) -> dict[str, str]:
    ok = [r for r in view.rows if r.ok and r.peak is not None]
    if not ok:
        return {}
    labels = [r.label for r in ok]
    out = {}
    if all("by_category" in r.memory for r in ok):
        parts = {c: [r.memory["by_category"].get(c, 0) for r in ok] for c in CATEGORIES}
        out["breakdown"] = figures.stacked_bars(labels, parts, figures.CATEGORY_COLORS,
                                                f"{view.config}: peak memory by category ({view.mode})")
    if all("by_owner" in r.memory for r in ok):
        parts = {o: [sum(r.memory["by_owner"][o].values()) for r in ok] for o in OWNERS}
        out["owners"] = figures.stacked_bars(labels, parts, figures.OWNER_COLORS,
                                             f"{view.config}: peak memory by owner ({view.mode})")
    points = tradeoff_points(view, ok)
    if points is not None:
        rows, ys, ylabel = points
        names = [r.label for r in rows]
        out["tradeoff_memory"] = figures.tradeoff(names, [r.peak_gib for r in rows], ys,
                                                  f"peak memory, GiB ({view.mode_words})", ylabel,
                                                  f"{view.config}: accuracy vs peak memory")
        params = [max(r.params.get("trainable_params", 1), 1) / 1e6 for r in rows]
        out["tradeoff_params"] = figures.tradeoff(names, params, ys, "trainable parameters, M (log scale)", ylabel,
                                                  f"{view.config}: accuracy vs trainable parameters", log_x=True)
    traces = {r.label: r.memory["trace"] for r in ok if r.memory.get("trace")}
    if traces:
        out["traces"] = figures.step_traces(traces, f"{view.config}: allocator peak per step and phase")
    return out


def tradeoff_points(view: TableView, ok: list[RowView]) -> tuple[list[RowView], list[float], str] | None:
    """Accuracy per method: measured test scores when the runs trained; else the paper's (for the methods
    the paper reports), and the axis says which."""
    trained = [r for r in ok if r.test]
    if len(trained) >= 2:
        return trained, [r.test[1] for r in trained], f"test {trained[0].test[0]} (measured)"
    if view.paper and view.paper.metric_columns:
        column = view.paper.metric_columns[-1]
        rows = [r for r in ok if r.paper and column in r.paper.metrics]
        if len(rows) >= 2:
            return rows, [r.paper.metrics[column] for r in rows], f"{column} (the paper's, not measured here)"
    return None
