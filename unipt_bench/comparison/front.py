"""The memory/parameter front: methods no other method beats on both trainable parameters and peak memory."""

from __future__ import annotations

from typing import Any

from ..report.figures import pareto_front


def front_members(rows: list[dict[str, Any]]) -> set[str]:
    """Methods (rows with a peak and a parameter count) on the front of fewer parameters and less memory."""
    scored = [r for r in rows if r.get("peak_bytes") is not None and r.get("trainable_params") is not None]
    points = [(r["trainable_params"], -r["peak_bytes"]) for r in scored]  # fewer parameters, less memory
    return {scored[i]["method"] for i in pareto_front(points)}
