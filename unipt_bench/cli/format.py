"""Human-readable sizes and result tables (rich in a terminal, Markdown for CI summaries)."""

from __future__ import annotations

import sys
from typing import Any


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def human_count(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 10_000 else str(n)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table of the main columns (sizes in human units)."""
    header = ["config", "method", "mode", "status", "batch", "trainable", "peak", "counter", "test"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        test = f"{r['metric']} {r['test_score']:.2f}" if r.get("test_score") is not None else ""
        cells = [r["config"], r["method"], r["mode"], r["status"], str(r["batch"]), human_count(r["trainable_params"]),
                 human_bytes(r["peak_bytes"]), r["counter"] or "", test]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_lines=False)
    columns = ["config", "method", "mode", "status", "batch", "trainable", "method params", "head params",
               "peak", "activations", "grads", "optimizer", "step s"]
    trained = any(r["test_score"] is not None for r in rows)
    if trained:
        columns += ["test", "baseline"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("config", "method", "mode", "status") else "right")
    for r in rows:
        step = r["step_seconds"]
        table.add_row(
            *(escape(str(r[key])) for key in ("config", "method", "mode", "status")), f"{r['batch']}x{r['gpus']}" if r["gpus"] > 1 else str(r["batch"]),
            human_count(r["trainable_params"]), human_count(r["trainable_method_params"]),
            human_count(r["trainable_head_params"]), human_bytes(r["peak_bytes"]), human_bytes(r["activations_bytes"]),
            human_bytes(r["grads_bytes"]), human_bytes(r["optimizer_state_bytes"]),
            "-" if step is None else f"{step:.3f}",
            *([f"{r['metric']} {r['test_score']:.2f}" if r["test_score"] is not None else "-",
               f"{r['baseline_score']:.2f}" if r["baseline_score"] is not None else "-"] if trained else []),
        )
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)
