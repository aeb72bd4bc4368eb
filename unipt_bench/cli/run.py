"""`unipt-bench run`: profile (or train) every run of a suite and store one result per run."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import click

from ..errors import UserError
from ..launchers import LaunchSettings, get
from .app import cli, out_option
from .common import (
    memory_option_flags,
    resolve_mode,
    run_with_progress,
    summarize,
    tracker_list,
    warn_skipped,
)
from .launcher_options import launcher_options


def gpu_visible() -> bool:
    import torch

    return torch.cuda.is_available()


@cli.command()
@click.option("--suite", required=True, help="Built-in suite name or path to a suite TOML file.")
@click.option("--mode", type=click.Choice(["auto", "estimate", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: cuda when a GPU is visible, else estimate.")
@click.option("--methods", default=None, help="Comma-separated method names or labels to run (default: all).")
@out_option
@click.option("--force", is_flag=True, help="Run again even when a current result exists.")
@click.option("--busy-threshold", default="1GiB", show_default=True,
              help="cuda: refuse runs while other processes hold more GPU memory than this ('none': never refuse).")
@click.option("--memory-snapshot", is_flag=True, help="cuda: save each run's allocator snapshot beside its result.")
@click.option("--calibrate/--no-calibrate", default=True, show_default=True,
              help="cuda: also estimate each run on fake tensors and store estimate / measured.")
@click.option("--nvml-interval", default=0.01, show_default=True, help="cuda: seconds between NVML samples.")
@click.option("--data-root", default=os.environ.get("UNIPT_BENCH_DATA", "data"), show_default=True,
              type=click.Path(file_okay=False), help="Where training suites find datasets (env UNIPT_BENCH_DATA).")
@click.option("--trackers", default=None,
              help="Comma-separated optional trackers to run (default: the suite's list, else those on by default; "
                   "see `list trackers`).")
@click.option("--job", "job", type=click.Choice(["auto", "train", "profile"]), default="auto", show_default=True,
              help="train: train with the suite's recipes on the data under --data-root; profile: a few steps on the "
                   "configured shapes; auto: train where the data are there and a GPU is visible (or the suite is "
                   "no paper suite), else profile.")
@click.option("--configs", default=None, help="Comma-separated configuration names to run (default: all).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Training: at most this many steps, the schedule fitted to them (recorded in the spec: a "
                   "shortened run is a run of its own).")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Per-device batch instead of the suite's (recorded in the spec).")
@click.option("--eval-every", type=click.IntRange(min=1), default=None,
              help="Training: validate every this many steps (recorded in the spec).")
@memory_option_flags("instead of the suite's (recorded in the spec)")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Runs at once (default: every core in estimate mode, one per visible GPU in cuda mode, 1 in cpu mode).")
@launcher_options
def run(suite: str, mode: str, methods: str | None, out: str, force: bool, busy_threshold: str,
        memory_snapshot: bool, calibrate: bool, nvml_interval: float, data_root: str, trackers: str | None,
        job: str, configs: str | None, max_steps: int | None, batch: int | None, eval_every: int | None,
        checkpointing: str | None, approx_bp: str | None, layernorm: str | None, jobs: int | None, launch: LaunchSettings) -> None:
    """Profile every run of a suite and store one JSON result per run."""
    from ..atomic import check_writable_dir
    from ..config import RunSpec
    from ..fit import parse_bytes
    from ..jobs import Overrides, check_data, plan, select_configs
    from ..memory_options import check as check_memory
    from ..results import ResultStore
    from ..suite_file import load_suite, select_methods

    if not math.isfinite(nvml_interval) or nvml_interval <= 0:
        raise UserError(f"--nvml-interval {nvml_interval}: must be a positive number of seconds")
    options = {
        "busy_threshold": None if busy_threshold.lower() == "none" else parse_bytes(busy_threshold),
        "calibrate": calibrate,
        "nvml_interval": nvml_interval,
        "data_root": data_root,
        "resume": not force,  # --force trains from scratch, never from an earlier run's checkpoint
    }
    launch.jobs = jobs
    get(launch)  # launcher options, its extra and its cluster checked before anything loads
    loaded = load_suite(suite)
    if mode == "estimate":  # fake tensors hold no data: estimates profile
        if job == "train":
            raise UserError("--job train needs real tensors: use --mode cpu or cuda (or auto)")
        job = "profile"
    chosen = select_methods(select_configs(loaded.specs, configs, loaded.name), methods)
    planned = plan(chosen, job, Path(data_root), gpu_visible(), Overrides(max_steps, batch, eval_every))
    check_data(planned.specs, Path(data_root))
    mode, why = resolve_mode(mode, trains=planned.trains)
    given = {"checkpointing": checkpointing, "approx_bp": approx_bp, "layernorm": layernorm}
    memory = {k: v for k, v in given.items() if v is not None}
    specs = [RunSpec.from_dict({**s.to_dict(), "mode": mode, "memory": check_memory({**s.memory, **memory}, "run")})
             for s in planned.specs]
    check_writable_dir(out, "--out")
    if launch.checkpoint_dir and not launch.ray_address:  # else the folder is the cluster's, maybe not here;
        # a local check now, not at the first checkpoint, eval_every steps into training
        check_writable_dir(launch.checkpoint_dir, "--checkpoint-dir")
    options["trackers"] = loaded.trackers if trackers is None else tracker_list(trackers)
    store = ResultStore(out)
    latest = store.latest(loaded.name)
    warn_skipped(store)
    todo = [s for s in specs if force or not store.is_complete(s, latest)]
    click.echo(f"{loaded.name}: {len(specs)} runs in {why}")
    for note in planned.notes:
        click.echo(f"  {note}")
    if len(todo) < len(specs):
        click.echo(f"  {len(specs) - len(todo)} already done (same spec); --force runs them again")
    results = run_with_progress(todo, store, options, memory_snapshot, launch=launch)
    summarize(loaded.name, results, out)
    if any(r.status == "error" for r in results):
        sys.exit(1)
