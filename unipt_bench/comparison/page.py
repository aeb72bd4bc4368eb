"""A comparison as one self-contained HTML page: peak against the batch and against each length per method
(the budget drawn as a line), the memory/parameter front, and the table (Jinja2, autoescaped; inline SVG)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from .. import __version__
from ..cli.format import human_bytes, human_count
from ..report.figures import GIB, _pyplot, literal, to_svg
from ..report.render import TEMPLATES
from .analysis import UNITS
from .run import Comparison
from .table import columns

FULL_COLOR = "#e15759"


def peak_lines(series: dict[str, list[tuple[int, int]]], budget: int, xlabel: str, title: str) -> str:
    """Peak (GiB) against one axis, one line per method, full fine-tuning in red, the budget dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, points in series.items():
        drawn = [(x, y / GIB) for x, y in points if y is not None]
        if not drawn:
            continue
        xs, ys = zip(*drawn, strict=True)
        style = {"color": FULL_COLOR, "linewidth": 2.2} if label == "full" else {"linewidth": 1.2}
        ax.plot(xs, ys, marker="o", markersize=2.5, label=literal(label), **style)
    ax.axhline(budget / GIB, color="#333333", linestyle="--", linewidth=1, label="budget")
    ax.set_xlabel(literal(xlabel))
    ax.set_ylabel("peak (GiB)")
    ax.set_title(literal(title), loc="left")
    ax.legend(fontsize=7, frameon=False, ncol=2, loc="upper left")
    return to_svg(fig)


def front_figure(rows: list[dict[str, Any]], budget: int) -> str:
    """Peak against trainable parameters; the front (no method has both fewer parameters and less memory)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    scored = [r for r in rows if r.get("peak_bytes") is not None and r.get("trainable_params")]
    front = sorted((r for r in scored if r.get("on_front")), key=lambda r: r["trainable_params"])
    ax.scatter([r["trainable_params"] for r in scored], [r["peak_bytes"] / GIB for r in scored], color="#4e79a7",
               zorder=3)
    ax.plot([r["trainable_params"] for r in front], [r["peak_bytes"] / GIB for r in front], color=FULL_COLOR,
            drawstyle="steps-post", zorder=2, label="front")
    for r in scored:
        ax.annotate(literal(r["method"]), (r["trainable_params"], r["peak_bytes"] / GIB), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.axhline(budget / GIB, color="#333333", linestyle="--", linewidth=1, label="budget")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("peak at the asked shape (GiB)")
    ax.set_title("Memory against trainable parameters", loc="left")
    ax.legend(fontsize=8, frameon=False)
    return to_svg(fig)


def figures(comparison: Comparison) -> list[tuple[str, str, str]]:
    """(id, caption, svg) of every figure of the page."""
    budget = comparison.request.budget_bytes
    out = [("batch", "Peak against the per-GPU batch, at the asked lengths; the dashed line is the budget.",
            peak_lines({r.values["method"]: r.batch_points for r in comparison.rows}, budget, "batch per GPU",
                       "Peak against the batch"))]
    keys = [k for k in UNITS if any(k in r.length_points for r in comparison.rows)]
    for key in keys:
        out.append((f"length-{key}", f"Peak against {key} at the asked batch: where a method's line meets full "
                                     "fine-tuning's (red), its saving is gone.",
                    peak_lines({r.values["method"]: r.length_points.get(key, []) for r in comparison.rows}, budget,
                               key, f"Peak against {key}")))
    rows = comparison.table()
    if any(r.get("on_front") for r in rows):
        out.append(("front", "Peak memory at the asked shape against trainable parameters; the red steps join the "
                             "front.", front_figure(rows, budget)))
    return out


def cell(key: str, value: Any) -> str:
    """A table cell: bytes in human units, parameters in millions, the rest as is."""
    if value is None or value != value:  # None or NaN
        return "\u2013"
    if key.endswith("_bytes") or key.startswith("bytes_per_"):
        return human_bytes(round(value))
    if key.endswith("_params"):
        return human_count(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def render_page(comparison: Comparison) -> str:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    rows = comparison.table()
    keys = [k for k in columns(rows) if k not in ("traces", "seconds")]
    return env.get_template("compare.html.j2").render(
        request=comparison.request, comparison=comparison, rows=rows, keys=keys, cell=cell, figures=figures(comparison),
        css=(TEMPLATES / "base.css").read_text(encoding="utf-8"), version=__version__,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), budget=human_bytes(comparison.request.budget_bytes),
        floor=human_bytes(comparison.request.floor_bytes))
