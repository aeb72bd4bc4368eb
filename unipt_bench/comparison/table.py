"""A comparison as a table: the DataFrame `unipt_bench.compare` returns, the terminal table, CSV and JSON."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from ..cli.format import human_bytes, human_count
from ..memory.base import REPORTED_CATEGORIES
from .analysis import UNITS
from .run import Comparison

LEADING = ["method", "status", "applies", "reason", "mode", "trainable_params", "trainable_method_params",
           "trainable_head_params", "total_params", "peak_bytes", *[f"{c}_bytes" for c in REPORTED_CATEGORIES],
           "predicted_reserved_bytes", "predicted_device_bytes", "fits", "max_batch", "bytes_per_sample", *[f"bytes_per_{u}" for u in UNITS.values()],
           *[f"reaches_full_at_{k}" for k in UNITS], "on_front", "accuracy", "accuracy_metric", "accuracy_run",
           "curve_mode", "memory_options", "note", "traces", "seconds"]


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """The table's columns in a stable order: those any row has."""
    present = {key for row in rows for key in row}
    return [c for c in LEADING if c in present] + sorted(present - set(LEADING))


def data_frame(comparison: Comparison) -> Any:
    """One row per method; bytes as integers, the mode of each figure in `mode` (at the asked shape, the
    largest batch) and `curve_mode` (bytes per extra unit, crossings with full fine-tuning)."""
    import pandas as pd

    rows = comparison.table()
    frame = pd.DataFrame(rows, columns=columns(rows))
    frame.attrs.update(request_summary(comparison))
    return frame


def request_summary(comparison: Comparison) -> dict[str, Any]:
    request = comparison.request
    return {"model": request.model, "task": request.task, "batch": request.batch, "shape": request.axes(),
            "memory_options": dict(request.memory),
            "budget_bytes": request.budget_bytes, "budget": request.budget_label, "mode": request.mode,
            "floor_bytes": request.floor_bytes, "seconds": comparison.seconds, "traces": comparison.traces}


def clean(value: Any) -> Any:
    """JSON has no NaN: missing figures are null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def to_json(comparison: Comparison) -> str:
    rows = comparison.table()
    keys = columns(rows)
    return json.dumps({"request": request_summary(comparison),
                       "rows": [{k: clean(row.get(k)) for k in keys} for row in rows]}, indent=2)


def to_csv(comparison: Comparison) -> str:
    return data_frame(comparison).to_csv(index=False)


def per_unit(value: float | None) -> str:
    return "-" if value is None else human_bytes(round(value))


def split_notes(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """(the note parts every row has, each row's other parts): a model that cannot vary its image size says so
    once, not once per method."""
    parts = {r["method"]: [p for p in (r.get("note") or "").split("; ") if p] for r in rows}
    shared = [p for p in next(iter(parts.values()), []) if len(parts) > 1 and all(p in ps for ps in parts.values())]
    return shared, {m: "; ".join(p for p in ps if p not in shared) for m, ps in parts.items()
                    if any(p not in shared for p in ps)}


def print_comparison(comparison: Comparison) -> None:
    """The terminal table: applicable methods with their figures, then the refusals with their reasons."""
    from rich.console import Console
    from rich.table import Table

    rows = comparison.table()
    request = comparison.request
    units = [u for u in UNITS.values() if any(r.get(f"bytes_per_{u}") is not None for r in rows)]
    crossings = [k for k in UNITS if any(f"reaches_full_at_{k}" in r for r in rows)]
    shape = ", ".join(f"{k} {v}" for k, v in request.axes().items())
    table = Table(title=f"{request.model} on {request.task}, batch {request.batch}"
                        f"{', ' + shape if shape else ''}; budget {request.budget_label}"
                        f"{'; memory options: ' + rows[0]['memory_options'] if rows and rows[0].get('memory_options') else ''}",
                  title_justify="left")
    headers = ["method", "trainable", "peak", "activations", "grads+optim", "GPU device*", "fits", "max batch", "per sample",
               *[f"per {u.replace('_', ' ')}" for u in units], *[f"= full at {k}" for k in crossings], "front",
               "accuracy"]
    for header in headers:
        table.add_column(header, justify="left" if header == "method" else "right")
    refused = []
    for r in rows:
        if r.get("status") != "ok":
            refused.append(r)
            continue
        optimizer = (r.get("grads_bytes") or 0) + (r.get("optimizer_state_bytes") or 0)
        accuracy = f"{r['accuracy_metric']} {r['accuracy']:.2f}" if r.get("accuracy") is not None else "-"
        table.add_row(
            r["method"], human_count(r["trainable_params"]), human_bytes(r["peak_bytes"]),
            human_bytes(r.get("activations_bytes")), human_bytes(optimizer),
            human_bytes(r.get("predicted_device_bytes")), "yes" if r["fits"] else "no",
            "-" if r.get("max_batch") is None else str(r["max_batch"]), per_unit(r.get("bytes_per_sample")),
            *[per_unit(r.get(f"bytes_per_{u}")) for u in units],
            *["-" if r.get(f"reaches_full_at_{k}") is None else str(r[f"reaches_full_at_{k}"]) for k in crossings],
            "*" if r.get("on_front") else "", accuracy)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    console.print(table)
    modes = sorted({r.get("mode") for r in rows if r.get("mode")})
    curve_modes = sorted({r["curve_mode"] for r in rows if r.get("curve_mode") and r.get("status") == "ok"})
    console.print(f"peak, fits, max batch: {', '.join(modes)} mode; per unit and '= full at': "
                  f"{', '.join(curve_modes)}; front (*): fewest parameters for the memory")
    console.print("GPU device*: predicted device memory (the replayed caching allocator's reserved memory, the "
                  "CUDA context, a cuDNN bound; docs/allocator.md), unverified on a GPU")
    for r in refused:
        console.print(f"  {r['method']}: {r['status'].replace('_', ' ')}: {r.get('reason')}")
    shared, notes = split_notes([r for r in rows if r.get("status") == "ok"])
    for part in shared:
        console.print(f"  every method: {part}")
    for method, note in notes.items():
        console.print(f"  {method}: {note}")
    console.print(f"{len(rows)} methods, {comparison.traces} traces, {comparison.seconds:.1f} s")
