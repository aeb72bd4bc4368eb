"""`unipt-bench selfcheck`: estimates against cpu tensors, or against the GPU allocator with --gpu."""

from __future__ import annotations

import sys

import click

from .app import cli, out_option
from .common import resolve_mode, run_with_progress
from .format import human_bytes


@cli.command()
@click.option("--gpu", is_flag=True, help="Compare estimates with max_memory_allocated on the GPU (needs one).")
@click.option("--methods", default=None, help="Comma-separated method names to check (default: all).")
@click.option("--overhead-rounds", default=20, show_default=True, type=click.IntRange(min=0),
              help="With --gpu: interleaved untracked/tracked steps timed for the tracking overhead (0: skip).")
@out_option
def selfcheck(gpu: bool, methods: str | None, out: str, overhead_rounds: int) -> None:
    """Check the estimates: against cpu tensors here, against the GPU allocator with --gpu.

    Without --gpu: the smoke suite's BERT runs in estimate and cpu mode must agree within 0.1%.
    With --gpu: those runs and the paper's Table 5 BERT runs are measured in cuda mode, each with its
    fake-tensor estimate; the goal is a ratio within 3%. Then the cuda trackers' overhead on the step
    time of Table 5's BERT UniPT run (goal: at most 1%). Exits 1 when a run or the overhead misses its goal.
    """
    from ..results import ResultStore
    from ..selfcheck import run_selfcheck

    if gpu:
        resolve_mode("cuda")  # a clear error without a GPU
    store = ResultStore(out)
    rows, tolerance = run_selfcheck(gpu, methods, store, lambda specs: run_with_progress(specs, store))
    extra = f" {'cuBLAS ws':>10} {'w/o ws':>7}" if gpu else ""
    click.echo(f"{'run':<36} {'estimate':>12} {'measured':>12} {'ratio':>7}{extra}  verdict")
    for row in rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:.4f}"
        verdict = "ok" if row.within(tolerance) else (row.status if row.status != "ok" else "MISS")
        if gpu:
            without = row.ratio_without_workspace
            extra = f" {human_bytes(row.workspace):>10} {'-' if without is None else f'{without:.4f}':>7}"
        click.echo(f"{row.key:<36} {human_bytes(row.estimate):>12} {human_bytes(row.measured):>12} {ratio:>7}{extra}"
                   f"  {verdict}")
    misses = [r for r in rows if not r.within(tolerance)]
    against = "max_memory_allocated" if gpu else "cpu tensors"
    click.echo(f"{len(rows) - len(misses)} of {len(rows)} within {tolerance:.1%} of {against}")
    overhead_ok = True
    if gpu and overhead_rounds:
        overhead_ok = report_overhead(overhead_rounds)
    elif not gpu:
        click.echo("GPU calibration: not run (add --gpu on a machine with a CUDA GPU)")
    if misses or not overhead_ok:
        sys.exit(1)


def report_overhead(rounds: int) -> bool:
    """Print the cuda trackers' overhead on one paper-scale run's step time and its verdict; True when within goal."""
    from ..overhead import GOAL_PERCENT, measure_overhead
    from ..selfcheck import overhead_spec

    spec = overhead_spec()
    click.echo(f"tracking overhead on {spec.suite}/{spec.config}/{spec.label} (cuda allocator peaks per phase + NVML "
               f"sampler), {rounds} interleaved rounds ...")
    result = measure_overhead(spec, rounds)
    verdict = "ok" if result.within_goal else "MISS"
    click.echo(f"step time median: untracked {result.untracked_median * 1e3:.2f} ms, tracked "
               f"{result.tracked_median * 1e3:.2f} ms: overhead {result.percent:+.2f}% (goal: at most "
               f"{GOAL_PERCENT:g}%)  {verdict}")
    return result.within_goal
