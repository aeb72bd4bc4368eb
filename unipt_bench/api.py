"""Gate your own model's training memory in your own tests: exact bytes on fake tensors, no GPU.

    est = estimate_memory(model=..., batch=..., loss=..., optimizer=...)
    assert_memory(est, "tests/memory_baseline.json", tolerance=0.0)

The model factory runs on the meta device and the model is materialised as fake tensors, so even a
large model costs no memory; the batch factory runs under the fake mode too. Set
UNIPT_BENCH_UPDATE_BASELINES=1 (or pass update=True) to write or refresh the baseline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import write_atomic
from .memory.base import CATEGORIES, Trackers
from .memory.estimate import TensorMemoryTracker, fake_materialise
from .profile import train_step


@dataclass(frozen=True)
class MemoryEstimate:
    peak_bytes: int
    by_category: dict[str, int]
    by_phase: dict[str, int]
    trainable_params: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_memory(
    model: Callable[[], nn.Module],
    batch: Callable[[], Any],
    loss: Callable[[nn.Module, Any], torch.Tensor],
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
    steps: int = 2,
    grad_clip: float | None = None,
) -> MemoryEstimate:
    """Peak training memory of `model` on `batch`: `steps` steps of forward, loss, backward and the
    optimizer (built over the parameters that require grad), traced by PyTorch's MemTracker."""
    with torch.device("meta"):
        module = model()
    with ExitStack() as stack:
        fake_materialise(module, stack)
        module.train()
        example = batch()
        params = [p for p in module.parameters() if p.requires_grad]
        opt = optimizer(params)
        inputs = [t for t in torch.utils._pytree.tree_leaves(example) if isinstance(t, torch.Tensor)]
        tracker = TensorMemoryTracker(module, opt, inputs, "memtracker_fake")
        with Trackers([tracker]) as trackers:
            for _ in range(steps):
                train_step(lambda b: loss(module, b), example, opt, params, grad_clip, trackers)
    result = tracker.result()
    return MemoryEstimate(
        peak_bytes=result["peak_bytes"],
        by_category={c: result["by_category"][c] for c in CATEGORIES},
        by_phase={phase: values["peak_bytes"] for phase, values in result["by_phase"].items()},
        trainable_params=sum(p.numel() for p in params),
    )


def assert_memory(estimate: MemoryEstimate, baseline: str | Path, tolerance: float = 0.0,
                  update: bool | None = None) -> None:
    """Fail (AssertionError) when the peak or any category grew beyond `tolerance` (relative) over the
    baseline file; with update (or UNIPT_BENCH_UPDATE_BASELINES=1) write the baseline instead."""
    path = Path(baseline)
    if update is None:
        update = os.environ.get("UNIPT_BENCH_UPDATE_BASELINES") == "1"
    if update:
        write_atomic(path, json.dumps(estimate.to_dict(), indent=2, sort_keys=True) + "\n")
        return
    if not path.is_file():
        raise AssertionError(f"no memory baseline at {path}; create it with UNIPT_BENCH_UPDATE_BASELINES=1")
    old = json.loads(path.read_text(encoding="utf-8"))
    grown = []
    pairs = [("peak_bytes", old["peak_bytes"], estimate.peak_bytes)] + [
        (f"{c} bytes", old["by_category"].get(c, 0), estimate.by_category[c]) for c in CATEGORIES
    ]
    for name, before, after in pairs:
        if after > before * (1 + tolerance) and after != before:
            grown.append(f"{name}: {before:,} -> {after:,} ({after - before:+,} B)")
    if grown:
        raise AssertionError("training memory grew beyond the baseline: " + "; ".join(grown))
