"""Self-check: do the estimates hold? Estimate against cpu (exact agreement expected) and, on a GPU,
estimate against the allocator's measured peak (the calibration every cuda result also stores)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .config import RunSpec
from .results import ResultStore, RunResult
from .suite_file import load_suite, select_methods

CPU_TOLERANCE = 1e-3  # estimate and cpu trace the same kernels: they must agree within 0.1%
GPU_TOLERANCE = 0.03  # the goal for estimate vs max_memory_allocated


OVERHEAD_RUN = ("t5-bert", "unipt")  # flickr30k run whose cuda step time measures the tracking overhead


@dataclass
class Comparison:
    key: str
    estimate: int | None
    measured: int | None
    status: str
    workspace: int | None = None  # cuBLAS workspace bytes inside `measured` (cuda only)

    @property
    def ratio(self) -> float | None:
        return self.estimate / self.measured if self.estimate and self.measured else None

    @property
    def ratio_without_workspace(self) -> float | None:
        if self.workspace is None or not self.estimate or not self.measured or self.measured <= self.workspace:
            return None
        return self.estimate / (self.measured - self.workspace)

    def within(self, tolerance: float) -> bool:
        return self.ratio is not None and abs(self.ratio - 1) <= tolerance


def selfcheck_specs(gpu: bool, methods: str | None) -> list[RunSpec]:
    """The smoke suite's BERT configuration and, on a GPU, the paper's Table 5 BERT configuration."""
    specs = [s for s in load_suite("smoke").with_mode("estimate") if s.config == "bert"]
    if gpu:
        specs += [s for s in load_suite("flickr30k").with_mode("estimate") if s.config == "t5-bert"]
    return select_methods(specs, methods)


def compare_cpu(estimates: list[RunResult], measured: list[RunResult]) -> list[Comparison]:
    by_key = {(r.spec["suite"], r.spec["config"], r.spec["label"]): r for r in measured}
    rows = []
    for e in estimates:
        m = by_key.get((e.spec["suite"], e.spec["config"], e.spec["label"]))
        peak = (m.primary_memory() or {}).get("peak_bytes") if m and m.status == "ok" else None
        rows.append(Comparison(f"{e.spec['suite']}/{e.spec['config']}/{e.spec['label']}",
                               (e.primary_memory() or {}).get("peak_bytes"), peak,
                               e.status if e.status != "ok" else (m.status if m else "missing")))
    return rows


def compare_gpu(measured: list[RunResult]) -> list[Comparison]:
    """cuda results carry their own calibration (estimate of the same spec vs the measured peak)."""
    rows = []
    for r in measured:
        cal = r.calibration or {}
        rows.append(Comparison(f"{r.spec['suite']}/{r.spec['config']}/{r.spec['label']}",
                               cal.get("estimate_peak_bytes"), cal.get("measured_peak_bytes"), r.status,
                               cal.get("library_workspace_bytes")))
    return rows


def overhead_spec() -> RunSpec:
    """The cuda spec whose step time, with and without trackers, gives the tracking overhead."""
    config, label = OVERHEAD_RUN
    (spec,) = [s for s in load_suite("flickr30k").with_mode("cuda") if s.config == config and s.label == label]
    return spec


def run_selfcheck(
    gpu: bool, methods: str | None, store: ResultStore, run: Callable[[list[RunSpec]], list[RunResult]]
) -> tuple[list[Comparison], float]:
    """Run the check; `run(specs)` executes specs and returns their results. Returns rows and the tolerance."""
    specs = selfcheck_specs(gpu, methods)
    if gpu:
        measured = run([RunSpec.from_dict({**s.to_dict(), "mode": "cuda"}) for s in specs])
        return compare_gpu(measured), GPU_TOLERANCE
    estimates = run(specs)
    measured = run([RunSpec.from_dict({**s.to_dict(), "mode": "cpu"}) for s in specs])
    return compare_cpu(estimates, measured), CPU_TOLERANCE
