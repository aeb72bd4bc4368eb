"""Inline SVG figures: memory breakdowns (stacked bars), accuracy trade-offs with their Pareto front and
per-step traces (matplotlib).

The stacked bars are written as SVG directly: a matplotlib figure costs 0.15-0.3 s to lay out, which
would dominate a report of hundreds of runs, while a bar is one rectangle. Text stays text (svg.fonttype
= none for matplotlib), so figures are small, searchable and scale; every string is XML-escaped.
"""

from __future__ import annotations

import html
import io
import math
import re
from typing import Any, NamedTuple

GIB = 2**30
CATEGORY_COLORS = {
    "params": "#4e79a7", "buffers": "#a0cbe8", "grads": "#f28e2b", "optimizer_state": "#ffbe7d",
    "activations": "#59a14f", "temporaries": "#8cd17d", "inputs": "#bab0ac", "ddp_buckets": "#b07aa1",
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


def nice_step(top: float) -> float:
    """A round tick step giving about five ticks up to `top`."""
    raw = top / 5 if top > 0 else 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def stacked_bars(labels: list[str], parts: dict[str, list[int]], colors: dict[str, str], title: str) -> str:
    """Horizontal stacked bars, one per label, in GiB, drawn as plain SVG."""
    e = html.escape
    row, left, width, top = 22, 130, 460, 28
    totals = [sum(values[i] for values in parts.values()) / GIB for i in range(len(labels))]
    scale_top = max(totals, default=0) or 1.0
    step = nice_step(scale_top)
    ticks = [step * k for k in range(int(scale_top / step) + 2) if step * k <= scale_top * 1.0001 + step]
    axis_max = ticks[-1] if ticks else scale_top
    height = top + row * len(labels) + 60
    out = [f'<text x="4" y="16" font-size="12">{e(title)}</text>']
    for i, label in enumerate(labels):
        y = top + i * row
        out.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{e(label)}</text>')
        x = float(left)
        for part, values in parts.items():
            w = values[i] / GIB / axis_max * width
            if w > 0:
                out.append(f'<rect x="{x:.2f}" y="{y + 3}" width="{w:.2f}" height="{row - 6}" '
                           f'fill="{colors.get(part, "#999999")}"><title>{e(label)}: {e(part)} '
                           f'{values[i] / GIB:.3f} GiB</title></rect>')
            x += w
    base = top + row * len(labels) + 4
    out.append(f'<line x1="{left}" y1="{base}" x2="{left + width}" y2="{base}" stroke="#57606a"/>')
    for t in ticks:
        x = left + t / axis_max * width
        out.append(f'<line x1="{x:.2f}" y1="{base}" x2="{x:.2f}" y2="{base + 4}" stroke="#57606a"/>'
                   f'<text x="{x:.2f}" y="{base + 16}" text-anchor="middle">{t:g}</text>')
    out.append(f'<text x="{left + width / 2}" y="{base + 30}" text-anchor="middle">GiB at the peak</text>')
    x = float(left)
    for part in parts:
        out.append(f'<rect x="{x:.1f}" y="{base + 38}" width="10" height="10" fill="{colors.get(part, "#999999")}"/>'
                   f'<text x="{x + 14:.1f}" y="{base + 47}">{e(part.replace("_", " "))}</text>')
        x += 14 + 7 * len(part) + 12
    header = (f'<svg class="figure" viewBox="0 0 {max(left + width + 30, x):.0f} {height}" '
              f'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11"><title>{e(title)}</title>')
    return header + "".join(out) + "</svg>"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both axes (less x, more y), sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def literal(text: str) -> str:
    """User text (labels, titles from suites) as matplotlib shows it literally: "$" starts no math."""
    return text.replace("$", r"\$")


class Series(NamedTuple):
    """A second set of points on a trade-off figure (e.g. the paper's values), named in the legend."""

    name: str
    labels: list[str]
    xs: list[float]
    ys: list[float]


def tradeoff(labels: list[str], xs: list[float], ys: list[float], xlabel: str, ylabel: str, title: str,
             log_x: bool = False, second: Series | None = None) -> str:
    """A scatter of methods with the Pareto front (lower x, higher y) drawn and marked; `second`, when given,
    is drawn beside them in its own colour and named in the legend (the first series is then "measured")."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    front = pareto_front(list(zip(xs, ys, strict=True)))
    ax.scatter(xs, ys, color="#4e79a7", zorder=3, label="measured" if second else None)
    if second:
        ax.scatter(second.xs, second.ys, marker="s", facecolors="none", edgecolors="#b07aa1", zorder=3,
                   label=literal(second.name))
        for label, x, y in zip(second.labels, second.xs, second.ys, strict=True):
            ax.annotate(literal(label), (x, y), textcoords="offset points", xytext=(5, -10), fontsize=8,
                        color="#8a5a80")
    ax.plot([xs[i] for i in front], [ys[i] for i in front], color="#e15759", drawstyle="steps-post", zorder=2,
            label="Pareto front")
    ax.scatter([xs[i] for i in front], [ys[i] for i in front], facecolors="none", edgecolors="#e15759", s=120,
               zorder=4)
    for label, x, y in zip(labels, xs, ys, strict=True):
        ax.annotate(literal(label), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(literal(xlabel))
    ax.set_ylabel(literal(ylabel))
    ax.set_title(literal(title), loc="left")
    ax.legend(loc="best" if second else "lower right", fontsize=8, frameon=False)
    return to_svg(fig)


def step_traces(traces: dict[str, list[dict[str, Any]]], title: str) -> str:
    """max_memory_allocated per (step, phase) for each method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for label, trace in traces.items():
        ax.plot(range(len(trace)), [t["max_memory_allocated"] / GIB for t in trace], marker="o", ms=3,
                label=literal(label))
    ax.set_xlabel("phase index (forward, backward, optimizer per step)")
    ax.set_ylabel("max_memory_allocated, GiB")
    ax.set_title(literal(title), loc="left")
    ax.legend(fontsize=8, frameon=False)
    return to_svg(fig)
