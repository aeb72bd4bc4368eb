"""The local launcher: lanes of runs on this machine (`--jobs` at once), each run in its own child process.

This is the runner's pool (`runner.serve_lanes`): estimate runs of a lane share one child, cpu and cuda runs
each get a fresh one; with several lanes, each lane's children see their own GPU and a share of the cores.
The children, and whatever they start, die with the command even when it is killed (`reaper`).
"""

from __future__ import annotations

from typing import Any

from ..config import RunSpec
from . import Events, LaunchSettings, Work
from .reaper import guard


def check(settings: LaunchSettings) -> None:
    """Nothing to reach: --jobs is checked by its option type."""


def jobs_for(settings: LaunchSettings, specs: list[RunSpec]) -> int:
    from ..launch import default_jobs, gpus_per_run

    return settings.jobs or (default_jobs(specs[0].mode, gpus_per_run(specs)) if specs else 1)


def describe(settings: LaunchSettings, specs: list[RunSpec]) -> str:
    jobs = min(jobs_for(settings, specs), len(specs))
    return f"{jobs} runs at once (--jobs)" if jobs > 1 else ""


def launch(work: Work, specs: list[RunSpec], store: Any, settings: LaunchSettings, events: Events) -> list[str]:
    from ..launch import gpus_per_run, lane_env
    from ..runner import INTERRUPTED, Lane, serve_lanes

    if not specs:
        return []
    jobs = jobs_for(settings, specs)
    envs = lane_env(specs[0].mode, jobs, gpus_per_run(specs))
    lanes = [Lane(env=envs[k] if jobs > 1 else None) for k in range(jobs)]
    with guard():  # the lanes' children die with the command, even when it is killed
        serve_lanes(specs, lanes, work.local, events.on_done, events.on_start,
                    interrupted=lambda spec: events.on_done(spec, events.lost(spec, "interrupted", INTERRUPTED)),
                    crashed=lambda spec, exc: events.lost(spec, "error", f"{type(exc).__name__}: {exc}"))
    return []
