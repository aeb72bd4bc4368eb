"""Render reports: one self-contained HTML file per suite, and a leaderboard across suites (Jinja2,
autoescaped: every string from a suite file or a result is escaped; figures are inline SVG)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from .. import __version__
from ..memory.base import PHASES
from ..results import RunResult
from .runs import job_of, overrides_of, overrides_text
from .views import table_views

TEMPLATES = Path(__file__).parent / "templates"
CAPTIONS = {
    "breakdown": "Live bytes at each method's peak, by category: what the peak is made of.",
    "owners": "The same peak split by owner: the backbone, the modules the method adds, the task head, and "
              "the rest (loss, optimizer step, the batch).",
    "tradeoff_memory": "Accuracy against peak memory; the red line joins the Pareto front (no method is both "
                       "smaller and more accurate).",
    "tradeoff_params": "Accuracy against trainable parameters, with the Pareto front.",
    "tradeoff_memory_trained": "Measured test accuracy against each run's training peak (blue; the red line joins "
                               "their Pareto front), and the paper's accuracy against its memory per GPU (squares), "
                               "a second series: compare the shapes, not the absolute values.",
    "tradeoff_params_trained": "Measured test accuracy against trainable parameters (blue, with the Pareto front), "
                               "and the paper's (squares).",
    "traces": "The allocator's peak in each phase of each tracked step.",
}


def fmt(value: float | None, pattern: str) -> str:
    return "\u2013" if value is None else pattern % value


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.globals.update(fmt=fmt, captions=CAPTIONS, run_kind=run_kind, phases=PHASES,
                       # the package's own stylesheet, inserted unescaped (templates mark it safe): no user text
                       css=(TEMPLATES / "base.css").read_text(encoding="utf-8"), version=__version__)
    return env


def run_kind(result: RunResult) -> str:
    """"train", "profile", or either with its overrides: "train (shortened: max_steps 4)"."""
    badge = overrides_text(overrides_of(result))
    return job_of(result) + (f" ({badge})" if badge else "")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def render_report(suite: str, results: list[RunResult], store: str, description: str = "",
                  with_figures: bool = True, claims: list[dict[str, Any]] | None = None) -> str:
    """`claims`: the rows of claims.stored_claims whose setting is in this suite (a section when any)."""
    views = table_views(results, with_figures)
    ordered = sorted(results, key=lambda r: r.display_order)
    return environment().get_template("report.html.j2").render(
        suite=suite, description=description, results=ordered, views=views, store=store, generated=now(),
        claims=claims or [],
    )


def render_leaderboard(rows: list[dict[str, Any]], suites: list[str], store: str,
                       claims: list[dict[str, Any]] | None = None) -> str:
    """`claims`: claims.stored_claims rows, shown when at least one claim was measured from the store."""
    shown = claims if claims and any(c["measured"] is not None for c in claims) else []
    return environment().get_template("leaderboard.html.j2").render(
        rows=rows, suites=suites, store=store, generated=now(), claims=shown,
    )


def suite_description(results: list[RunResult]) -> str:
    from ..suite_file import builtin_suites, suite_description_of

    suite = results[0].spec["suite"] if results else ""
    path = builtin_suites().get(suite)
    return suite_description_of(path) if path else ""
