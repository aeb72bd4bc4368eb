"""`compare`: which PETL methods fit a model, task shape and GPU, at what batch, and where their saving stops.

    from unipt_bench import compare
    table = compare("hf:path/to/bert", task="retrieval", batch=112, seq_len=32, budget="24GiB")

One row per method (a pandas DataFrame); `unipt-bench compare` prints the same table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .request import Request, budget_of, make_request, method_names
from .run import Comparison, run_comparison

__all__ = ["Comparison", "Request", "compare", "comparison_of", "request_of", "run_comparison"]


def request_of(model: str, task: str, batch: int, seq_len: int | None = None, image_size: int | None = None,
               frames: int | None = None, budget: str | int | None = None, gpu: str | None = None,
               methods: str | list[str] | None = None, mode: str = "estimate",
               memory: dict[str, str | None] | None = None) -> Request:
    """A checked request (one UserError line for any bad input; nothing traced yet)."""
    from ..errors import UserError

    if mode not in ("estimate", "cuda"):
        raise UserError(f"mode {mode!r}: estimate or cuda")
    budget_bytes, label = budget_of(budget, gpu)
    return make_request(model, task, batch, {"seq_len": seq_len, "image_size": image_size, "frames": frames},
                        budget_bytes, label, method_names(methods), mode, memory)


def comparison_of(request: Request, jobs: int | None = None, store: str | Path | None = None, limit: int = 4096,
                  **callbacks: Any) -> Comparison:
    return run_comparison(request, jobs=jobs, store=store, limit=limit, **callbacks)


def compare(model: str, task: str, batch: int, seq_len: int | None = None, image_size: int | None = None,
            frames: int | None = None, budget: str | int | None = None, gpu: str | None = None,
            methods: str | list[str] | None = None, mode: str = "estimate", jobs: int | None = None,
            store: str | Path | None = None, limit: int = 4096, isolate: bool = True,
            memory: dict[str, str | None] | None = None) -> Any:
    """Every applicable PETL method on `model` for `task` at the shape, against a budget (bytes or "24GiB") or a
    GPU name: a DataFrame with one row per method (see `unipt-bench compare --help` for the columns).
    `memory`: memory options applied to every method, e.g. {"checkpointing": "blocks", "approx_bp": "regelu2",
    "layernorm": "ms"} (docs/methods.md, Memory options). `jobs`: methods at once (default: every core in
    estimate mode, one in cuda mode). isolate=False traces in this process instead of a child process
    (estimate mode)."""
    from .table import data_frame

    request = request_of(model, task, batch, seq_len, image_size, frames, budget, gpu, methods, mode, memory)
    return data_frame(run_comparison(request, jobs=jobs, store=store, limit=limit, isolate=isolate))
