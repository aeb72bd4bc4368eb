"""Inline SVG figures (matplotlib): memory breakdowns, accuracy trade-offs with their Pareto front, traces.

Text stays text in the SVG (svg.fonttype = none), so figures are small, searchable and scale; every
string is escaped by matplotlib's SVG writer.
"""

from __future__ import annotations

import io
import re
from typing import Any

GIB = 2**30
CATEGORY_COLORS = {
    "params": "#4e79a7", "buffers": "#a0cbe8", "grads": "#f28e2b", "optimizer_state": "#ffbe7d",
    "activations": "#59a14f", "temporaries": "#8cd17d", "inputs": "#bab0ac",
}
OWNER_COLORS = {"backbone": "#4e79a7", "method": "#e15759", "head": "#f28e2b", "other": "#bab0ac"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


def to_svg(fig: Any) -> str:
    """The figure as an inline <svg> element (no XML prolog, no fixed size: it scales with the page)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    _pyplot().close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 class="figure"', svg, count=1)


def stacked_bars(labels: list[str], parts: dict[str, list[int]], colors: dict[str, str], title: str) -> str:
    """Horizontal stacked bars, one per label, in GiB."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(labels) + 1.2))
    left = [0.0] * len(labels)
    for part, values in parts.items():
        widths = [v / GIB for v in values]
        ax.barh(labels, widths, left=left, color=colors.get(part, "#999999"), label=part.replace("_", " "))
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("GiB at the peak")
    ax.set_title(title, loc="left")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    return to_svg(fig)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both axes (less x, more y), sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def tradeoff(labels: list[str], xs: list[float], ys: list[float], xlabel: str, ylabel: str, title: str,
             log_x: bool = False) -> str:
    """A scatter of methods with the Pareto front (lower x, higher y) drawn and marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    front = pareto_front(list(zip(xs, ys, strict=True)))
    ax.scatter(xs, ys, color="#4e79a7", zorder=3)
    ax.plot([xs[i] for i in front], [ys[i] for i in front], color="#e15759", drawstyle="steps-post", zorder=2,
            label="Pareto front")
    ax.scatter([xs[i] for i in front], [ys[i] for i in front], facecolors="none", edgecolors="#e15759", s=120,
               zorder=4)
    for label, x, y in zip(labels, xs, ys, strict=True):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    return to_svg(fig)


def step_traces(traces: dict[str, list[dict[str, Any]]], title: str) -> str:
    """max_memory_allocated per (step, phase) for each method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for label, trace in traces.items():
        ax.plot(range(len(trace)), [t["max_memory_allocated"] / GIB for t in trace], marker="o", ms=3, label=label)
    ax.set_xlabel("phase index (forward, backward, optimizer per step)")
    ax.set_ylabel("max_memory_allocated, GiB")
    ax.set_title(title, loc="left")
    ax.legend(fontsize=8, frameon=False)
    return to_svg(fig)
