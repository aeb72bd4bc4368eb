"""Pivot stored results into what a report shows: per configuration, mode and kind of run (training or
profile, full or shortened), one row per method beside the paper's row, memory ratios, measured accuracy,
breakdowns, trade-offs and provenance."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..memory.base import CATEGORIES, OWNERS, PHASES, REPORTED_CATEGORIES, phase_peak
from ..results import RunResult
from . import figures, headline, measured, training
from .measured import MeasuredColumn
from .paper import TABLES, PaperRow, PaperTable, paper_g
from .runs import job_of, kind_key, overrides_of, overrides_slug, overrides_text

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
    profile: RunResult | None = None  # training rows: the profile of the same configuration and label

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
    def trained(self) -> bool:
        return job_of(self.result) == "train"

    @property
    def overrides(self) -> str:
        """The run's command-line overrides as a badge says them ("" for the suite's own recipe)."""
        return overrides_text(overrides_of(self.result))

    def measured(self, column: MeasuredColumn) -> float | None:
        return measured.metric_value(self.result.metrics, column.split, column.metric)

    def paper_metric(self, column: str | None) -> float | None:
        return self.paper.metrics.get(column) if self.paper and column else None

    @property
    def peak_at(self) -> str:
        return training.peak_at_text(self.memory.get("peak_at"))

    @property
    def batch_shapes(self) -> list[str]:
        return training.batch_shape_lines((self.result.metrics or {}).get("batch_shapes"))

    @property
    def notes(self) -> list[tuple[str, bool]]:
        return training.provenance_notes(self.result)

    @property
    def gaps(self) -> list[str] | None:
        return training.recipe_gaps(self.result)

    @property
    def best(self) -> dict[str, Any] | None:
        return (self.result.metrics or {}).get("best")

    @property
    def final_loss(self) -> float | None:
        return (self.result.metrics or {}).get("final_loss")

    @property
    def profile_peak_gib(self) -> float | None:
        peak = ((self.profile.primary_memory() or {}).get("peak_bytes")) if self.profile else None
        return None if peak is None else peak / 2**30

    @property
    def profile_note(self) -> str:
        """How the profile beside this training run differs from it (mode, batch), "" when it does not."""
        if self.profile is None:
            return ""
        spec, other = self.result.spec, self.profile.spec
        differs = [other["mode"]] if other["mode"] != spec["mode"] else []
        differs += [f"batch {other['batch']}"] if other["batch"] != spec["batch"] else []
        return ", ".join(differs)

    @property
    def training_over_profile(self) -> float | None:
        profile = self.profile_peak_gib
        return None if not profile or self.peak_gib is None else self.peak_gib / profile

    @property
    def phases(self) -> dict[str, int | None]:
        by_phase = self.memory.get("by_phase", {})
        return {p: phase_peak(by_phase.get(p)) for p in PHASES}

    @property
    def calibration(self) -> dict[str, Any] | None:
        return self.result.calibration

    @property
    def predicted(self) -> dict[str, Any] | None:
        """The replayed CUDA caching allocator's figures and predicted device memory (docs/allocator.md), in
        GiB; None where the run has none (cuda runs measure instead)."""
        replayed = self.memory.get("allocator_replay") or {}
        allocator, device = replayed.get("allocator") or {}, replayed.get("device_memory") or {}
        if not allocator or not device:
            return None
        gib = 2**30
        return {"allocated": allocator["max_allocated"] / gib, "reserved": allocator["max_reserved"] / gib,
                "fragmentation": allocator["fragmentation_at_peak"] / gib, "segments": allocator["peak_segments"],
                "context": device["cuda_context"] / gib, "cudnn": device["cudnn_workspace_bound"] / gib,
                "device": device["total"] / gib, "steps": self.step_lines(replayed),
                "evaluations": [f"after step {step}: {nbytes / gib:.3f}"
                                for step, nbytes in (replayed.get("evaluation_reserved") or {}).items()]}

    def step_lines(self, replayed: dict[str, Any]) -> list[str]:
        """Per tracked step, counted from 1 as logged: "k: reserved / allocated" in GiB, with the step's batch
        shapes where the run recorded them (a training run's padded batches differ from step to step)."""
        gib = 2**30
        allocated = replayed.get("step_allocated") or {}
        shapes = (self.result.metrics or {}).get("tracked_shapes") or {}
        lines = []
        for step, reserved in (replayed.get("step_reserved") or {}).items():
            line = f"{int(step) + 1}: {reserved / gib:.3f}"
            line += f" / {allocated[step] / gib:.3f}" if step in allocated else ""
            if step in shapes:
                line += " (" + ", ".join(f"{t} {'x'.join(map(str, s))}" for t, s in shapes[step].items()) + ")"
            lines.append(line)
        return lines


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
    job: str = "profile"  # "train": the rows trained on real data; "profile": two steps on the configured shapes
    overrides: dict[str, Any] = field(default_factory=dict)  # the command-line changes every row shares
    reference: str | None = None  # the method memory ratios are taken against
    measured: list[MeasuredColumn] = field(default_factory=list)  # training: the measured accuracy columns
    paper_only: list[str] = field(default_factory=list)  # the paper's accuracy columns no measured one pairs with
    paper_column: str | None = None  # training: the paper's column the selection metric compares with
    headline: str = ""

    @property
    def trained(self) -> bool:
        return self.job == "train"

    @property
    def badge(self) -> str:
        return overrides_text(self.overrides)

    @property
    def dataset(self) -> str:
        return next((str(r.result.spec["train"].get("dataset", "")) for r in self.rows if r.result.spec.get("train")),
                    "")

    @property
    def gaps(self) -> list[str] | None:
        """The recipe keys the reference code does not give, over every run of the table (None: no run says)."""
        said = [g for g in (r.gaps for r in self.rows) if g is not None]
        return sorted(set().union(*said)) if said else None

    @property
    def mode_words(self) -> str:
        return MODE_WORDS.get(self.mode, self.mode)

    @property
    def counters(self) -> list[str]:
        return sorted({r.memory.get("counter") for r in self.rows if r.memory.get("counter")})

    @property
    def anchor(self) -> str:
        """config-mode for a full profile (as before training results existed); -train, the overrides and the
        protocol split's number appended where they apply."""
        parts = [self.config, self.mode, "train" if self.trained else "",
                 f"short-{overrides_slug(self.overrides)}" if self.overrides else "", str(self.part) if self.part else ""]
        return "-".join(p for p in parts if p)


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


def group_results(results: list[RunResult]) -> list[list[RunResult]]:
    """Results per (configuration, mode, kind of run), in suite order: a configuration's training table first,
    then its profile, each full recipe before its shortened runs. Kinds never share a table."""
    ordered = sorted(results, key=lambda r: r.display_order)
    first: dict[tuple[str, str], int] = {}
    groups: dict[tuple[str, str, str], list[RunResult]] = {}
    for i, r in enumerate(ordered):
        first.setdefault((r.spec["config"], r.spec["mode"]), i)
        groups.setdefault((r.spec["config"], r.spec["mode"], kind_key(r)), []).append(r)

    def position(key: tuple[str, str, str]) -> tuple[int, int, int, str]:
        members = groups[key]
        return (first[key[:2]], job_of(members[0]) != "train", bool(overrides_of(members[0])), key[2])

    return [groups[k] for k in sorted(groups, key=position)]


def table_views(results: list[RunResult], with_figures: bool = True) -> list[TableView]:
    """One view per (configuration, mode, kind of run, protocol), in suite order: estimates and measurements
    never share a table, nor do training and profile runs, shortened and full ones, or figures measured under
    different protocols. A training row gets the profile of its configuration and label beside it."""
    profiles = [r for r in results if job_of(r) == "profile"]
    views = []
    for grouped in group_results(results):
        config, mode = grouped[0].spec["config"], grouped[0].spec["mode"]
        for part, (members, note) in enumerate(split_by_protocol(grouped)):
            paper = TABLES.get(members[0].spec.get("paper") or "")
            rows = [RowView(r, paper.rows.get(r.spec["method"]) if paper and r.spec["label"] == r.spec["method"]
                            else None) for r in members]
            view = TableView(config, members[0].spec.get("title") or config, mode, rows, paper, protocol_note=note,
                             part=part, job=job_of(members[0]), overrides=overrides_of(members[0]))
            view.reference = add_ratios(rows, paper)
            if view.trained:
                for row in rows:
                    row.profile = training.profile_for(row.result, profiles)
                view.measured = measured.measured_columns([r.result.metrics for r in rows if r.ok], paper, view.dataset)
                if paper and not any(c.paper for c in view.measured):
                    view.paper_only = list(paper.metric_columns)
                view.paper_column = paper_column(view)
            view.headline = headline.headline(view)
            if with_figures:
                view.figures = table_figures(view)
            views.append(view)
    return views


def add_ratios(rows: list[RowView], paper: PaperTable | None) -> str | None:
    """Memory ratios to the reference method (the paper's, else adapter, else lst) in this table and the paper's;
    returns the reference's label (None when the table has none of them)."""
    labels = {r.label: r for r in rows}
    reference = next((m for m in ([paper.reference] if paper else []) + ["adapter", "lst"] if m in labels), None)
    ref = labels.get(reference) if reference else None
    for r in rows:
        if ref is not None and ref.peak and r.peak is not None:
            r.ratio = r.peak / ref.peak
        if paper and r.paper and r.paper.memory_g and reference in paper.rows and paper.rows[reference].memory_g:
            r.paper_ratio = r.paper.memory_g / paper.rows[reference].memory_g
    return reference


def table_figures(view: TableView) -> dict[str, str]:
    ok = [r for r in view.rows if r.ok and r.peak is not None]
    if not ok:
        return {}
    labels = [r.label for r in ok]
    out = {}
    if all("by_category" in r.memory for r in ok):
        present = [c for c in REPORTED_CATEGORIES if c in CATEGORIES or any(r.memory["by_category"].get(c) for r in ok)]
        parts = {c: [r.memory["by_category"].get(c, 0) for r in ok] for c in present}
        out["breakdown"] = figures.stacked_bars(labels, parts, figures.CATEGORY_COLORS,
                                                f"{view.config}: peak memory by category ({view.mode})")
    if all("by_owner" in r.memory for r in ok):
        parts = {o: [sum(r.memory["by_owner"].get(o, {}).values()) for r in ok] for o in OWNERS}  # none: 0
        out["owners"] = figures.stacked_bars(labels, parts, figures.OWNER_COLORS,
                                             f"{view.config}: peak memory by owner ({view.mode})")
    points = tradeoff_points(view, ok)
    if points is not None:
        rows, ys, ylabel = points
        names = [r.label for r in rows]
        paper = paper_series(view) if view.trained else None
        what = "training peak" if view.trained else "peak memory"
        out["tradeoff_memory"] = figures.tradeoff(names, [r.peak_gib for r in rows], ys,
                                                  f"{what}, GiB ({view.mode_words})", ylabel,
                                                  f"{view.config}: accuracy vs {what}",
                                                  second=paper[0] if paper else None)
        params = [max(r.params.get("trainable_params", 1), 1) / 1e6 for r in rows]
        out["tradeoff_params"] = figures.tradeoff(names, params, ys, "trainable parameters, M (log scale)", ylabel,
                                                  f"{view.config}: accuracy vs trainable parameters", log_x=True,
                                                  second=paper[1] if paper else None)
    traces = {r.label: r.memory["trace"] for r in ok if r.memory.get("trace")}
    if traces:
        out["traces"] = figures.step_traces(traces, f"{view.config}: allocator peak per step and phase")
    return out


def tradeoff_points(view: TableView, ok: list[RowView]) -> tuple[list[RowView], list[float], str] | None:
    """Accuracy per method: measured test scores when the runs trained (one is enough beside the paper's
    series); else the paper's (for the methods the paper reports), and the axis says which."""
    trained = [r for r in ok if r.test]
    if len(trained) >= 2 or (trained and view.trained and view.paper_column):
        return trained, [r.test[1] for r in trained], f"test {trained[0].test[0]} (measured)"
    if view.paper and view.paper.metric_columns and not view.trained:
        column = view.paper.metric_columns[-1]
        rows = [r for r in ok if r.paper and column in r.paper.metrics]
        if len(rows) >= 2:
            return rows, [r.paper.metrics[column] for r in rows], f"{column} (the paper's, not measured here)"
    return None


def paper_column(view: TableView) -> str | None:
    """The paper's column that a training table's selection metric (on its first test split) corresponds to;
    the paper's last column when no measured column pairs with one."""
    if view.paper is None:
        return None
    selection = next((r.test[0] for r in view.rows if r.test), None)
    first = view.measured[0].split if view.measured else "test"
    paired = next((c.paper for c in view.measured if c.metric == selection and c.split == first and c.paper), None)
    return paired or (view.paper.metric_columns[-1] if view.paper_only else None)


def paper_series(view: TableView) -> tuple[figures.Series, figures.Series] | None:
    """The paper's accuracy against its memory (per GPU, in GiB) and against its trainable parameters: the
    second, labelled series of a training table's trade-off figures."""
    column = view.paper_column
    if view.paper is None or column is None:
        return None
    rows = {m: p for m, p in view.paper.rows.items() if column in p.metrics}
    memory = {m: p for m, p in rows.items() if p.memory_g is not None}
    params = {m: p for m, p in rows.items() if p.params_m is not None}
    if not memory and not params:
        return None
    name = f"paper, {column}"
    return (figures.Series(f"{name} (memory per GPU)", list(memory), [p.memory_g * 1000 / 1024 for p in memory.values()],
                           [p.metrics[column] for p in memory.values()]),
            figures.Series(name, list(params), [p.params_m for p in params.values()],
                           [p.metrics[column] for p in params.values()]))
