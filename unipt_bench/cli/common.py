"""What several commands share: mode selection, suite names, the run loop with progress, warnings."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from ..errors import UserError
from .app import DEFAULT_OUT
from .format import human_bytes, human_count

MEMORY_OPTION_FLAGS = {  # memory_options.CHOICES and a help text each, without importing torch with the CLI
    "checkpointing": (("none", "blocks"), "Activation checkpointing of the backbone's blocks"),
    "approx_bp": (("none", "regelu2"), "Approx-BP's ReGELU2 in place of exact GELUs"),
    "layernorm": (("none", "ms"), "Approx-BP's MS-LayerNorm in place of LayerNorms"),
}


def memory_option_flags(scope: str) -> Any:
    """--checkpointing, --approx-bp and --layernorm for a command; `scope` ends each help text."""
    def decorate(command: Any) -> Any:
        for name, (choices, text) in reversed(list(MEMORY_OPTION_FLAGS.items())):
            command = click.option(f"--{name.replace('_', '-')}", type=click.Choice(choices), default=None,
                                   help=f"{text}, {scope}.")(command)
        return command

    return decorate


def resolve_mode(mode: str, trains: bool = False) -> tuple[str, str]:
    """(mode, a sentence saying why). `trains`: the suite trains on real data, which estimates cannot."""
    import torch

    if mode != "auto":
        if mode == "cuda" and not torch.cuda.is_available():
            raise UserError("--mode cuda needs a CUDA GPU and none is visible; use --mode estimate or --mode cpu")
        if mode == "estimate" and trains:
            return mode, "estimate mode (as asked): training configurations are profiled on fake tensors, not trained"
        return mode, f"{mode} mode (as asked)"
    if torch.cuda.is_available():
        return "cuda", f"cuda mode on {torch.cuda.get_device_name(0)}"
    if trains:
        return "cpu", "cpu mode: no GPU found, and training needs real tensors"
    return "estimate", "estimate mode: no GPU found, so memory comes from fake tensors (exact bytes, no data, no downloads)"


def run_with_progress(specs: list, store: Any, options: dict[str, Any] | None = None, snapshots: bool = False,
                      jobs: int | None = 1, launch: Any = None) -> list:
    """Run specs with a progress bar and one line per finished run: where `launch` (LaunchSettings) says,
    else `jobs` at once on this machine. Runs left pending (Slurm without --wait) are listed at the end."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..launchers import LaunchSettings, get
    from ..runner import launch_runs

    settings = launch or LaunchSettings(jobs=jobs)
    launcher = get(settings)  # its options checked before any run starts
    where = launcher.describe(settings, specs) if specs else ""
    if where:
        click.echo(f"  {where}")
    console = Console(highlight=False)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    started: dict[str, float] = {}
    with progress:
        bar = progress.add_task("starting", total=len(specs))

        def on_start(spec: Any) -> None:
            started[spec.key] = time.perf_counter()
            progress.update(bar, description=f"{spec.config}/{spec.label}")

        def on_result(result: Any) -> None:
            spec = result.run_spec
            seconds = run_seconds(result) or time.perf_counter() - started.get(spec.key, time.perf_counter())
            row = result.row()
            detail = (
                f"peak {human_bytes(row['peak_bytes']):>10}  trainable {human_count(row['trainable_params']):>8}"
                if result.status == "ok" else (result.message or "")
            )
            if result.status == "ok" and row["test_score"] is not None:
                detail += f"  test {row['metric']} {row['test_score']:.2f} (baseline {row['baseline_score']:.2f})"
            console.print(f"  {spec.config + '/' + spec.label:<24} {result.status:<15} {detail}  ({seconds:.1f} s)",
                          markup=False, soft_wrap=True)
            progress.advance(bar)

        def on_progress(spec: Any, info: dict[str, Any]) -> None:
            name = f"{spec.config}/{spec.label}"
            if info.get("event") == "step":
                progress.update(bar, description=f"{name} step {info['step']}/{info['steps']} loss {info['loss']:.3f} "
                                                 f"{info['samples_per_s']:.0f}/s")
            elif info.get("event") == "eval":
                scores = ", ".join(f"{k} {v:.2f}" for k, v in info.items() if k not in ("event", "step"))
                console.print(f"  {name:<24} step {info['step']}: validation {scores}", markup=False, soft_wrap=True)

        try:
            results, pending = launch_runs(specs, store, options, snapshots, settings, on_start=on_start,
                                           on_result=on_result, on_progress=on_progress)
        except KeyboardInterrupt:
            progress.stop()
            click.echo("interrupted: finished runs are kept; run the same command to resume", err=True)
            sys.exit(130)
    if pending:
        click.echo(f"{len(pending)} runs pending; run the same command again to collect them:")
        for line in pending:
            click.echo(f"  {line}")
    return results


def run_seconds(result: Any) -> float | None:
    """How long a run took where it ran (a Ray task or Slurm job may wait long before it starts); None for
    a run that never returned its own times."""
    from datetime import datetime

    try:
        started, finished = (datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ") for t in (result.started, result.finished))
    except ValueError:
        return None
    return (finished - started).total_seconds() if finished > started else None


def summarize(suite: str, results: list, out: str) -> None:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    if results:
        click.echo("done: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    click.echo(f"results in {out}/{suite}/; see them with: unipt-bench results --suite {suite}"
               + ("" if out == DEFAULT_OUT else f" --out {out}"))


def suite_name(suite: str) -> str:
    """Accept a suite path as well as a name: stored results are keyed by the suite's name."""
    from ..config import check_name
    from ..suite_file import read_toml

    if suite.endswith(".toml"):
        data = read_toml(Path(suite))
        if "name" not in data:
            raise UserError(f"{suite}: the suite file has no name")
        return check_name(data["name"], f"{suite}: the suite")
    return check_name(suite, "--suite: the suite")


def tracker_list(text: str) -> list[str]:
    """--trackers a,b: registered names (one-line error otherwise)."""
    from ..memory.registry import check_selection

    names = [t.strip() for t in text.split(",") if t.strip()]
    check_selection(names)
    return names


def skipped_note(store: Any) -> str:
    """For a 'no results' error: the result files that were there but could not be read."""
    if not store.skipped:
        return ""
    path, reason = store.skipped[0]
    more = f" and {len(store.skipped) - 1} more" if len(store.skipped) > 1 else ""
    return f" (unreadable: {path}: {reason}{more})"


def warn_skipped(store: Any) -> None:
    """One warning line per unreadable result file; the readable ones are shown all the same."""
    for path, reason in store.skipped:
        click.echo(f"warning: skipped unreadable result file {path}: {reason}", err=True)
