"""Where runs execute: a pool of local processes, a Ray cluster (one task per run), or Slurm job arrays (submitit).

Whatever the launcher, the driver alone writes the store: each run's outcome comes back to it and is
written as one new file, atomically, never over another. A run that returns nothing (Ctrl-C, a killed
worker, a cancelled job) is stored `interrupted`, so the same command run again skips what is final and
resumes the rest (training from its checkpoint folder).

A launcher is one module here with `check(settings)`, `describe(settings, specs)` and
`launch(work, specs, store, settings, events)`; `get` imports it by name.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..config import RunSpec
from ..errors import UserError

LAUNCHERS = ("local", "ray", "slurm")
CLUSTER_ENV = "UNIPT_BENCH_SUBMITIT_CLUSTER"  # "local": submitit's local executor instead of Slurm (tests, trials)


@dataclass
class LaunchSettings:
    """The launcher options of `run` and `fit`, as given (None: not given)."""

    launcher: str = "local"
    jobs: int | None = None  # local: runs at once; slurm: array jobs at once
    ray_address: str | None = None
    checkpoint_dir: str | None = None  # training checkpoints, laid out as the store lays them out
    partition: str | None = None
    time: str | None = None  # Slurm time limit: minutes, MM:SS, HH:MM:SS or D-HH[:MM[:SS]]
    gpus_per_node: int | None = None
    slurm_args: tuple[str, ...] = ()  # key=value, each an sbatch option
    wait: bool | None = None  # slurm: wait for the jobs (default: submit, collect on the next call)

    @property
    def cluster(self) -> str:
        """submitit's cluster: "slurm", or "local" (jobs as processes here) through UNIPT_BENCH_SUBMITIT_CLUSTER."""
        value = os.environ.get(CLUSTER_ENV, "slurm")
        if value not in ("slurm", "local"):
            raise UserError(f"{CLUSTER_ENV}={value!r}: expected slurm or local")
        return value

    def check(self) -> None:
        """Options that belong to another launcher are refused, not ignored."""
        if self.launcher not in LAUNCHERS:
            raise UserError(f"--launcher {self.launcher!r}: expected one of {', '.join(LAUNCHERS)}")
        if self.wait is False and self.launcher != "slurm":
            raise UserError(f"--no-wait: only --launcher slurm can return before its runs end (not {self.launcher})")
        if self.ray_address is not None and self.launcher != "ray":
            raise UserError("--ray-address: only with --launcher ray")
        if self.jobs is not None and self.launcher == "ray":
            raise UserError("--jobs: Ray places runs by the resources they ask for; use it with local or slurm")
        slurm_only = {"--partition": self.partition, "--time": self.time, "--gpus-per-node": self.gpus_per_node,
                      "--slurm-arg": self.slurm_args or None}
        given = [name for name, value in slurm_only.items() if value is not None]
        if given and self.launcher != "slurm":
            raise UserError(f"{', '.join(given)}: only with --launcher slurm")


@dataclass(frozen=True)
class Work:
    """What a command does for each spec: `local(lane, spec)` in a driver thread on a runner Lane, or
    `remote(spec)` -> (function, args) for a worker process elsewhere. Either returns a dict (a run's
    result, a fit's record) and never raises. `tag` names the work: a later command collects a submitted
    job only when its tag is the same."""

    kind: str  # "run" | "fit": also the name of the Slurm state file
    local: Callable[[Any, RunSpec], dict[str, Any]]
    remote: Callable[[RunSpec], tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]]
    tag: Callable[[RunSpec], str]


@dataclass(frozen=True)
class Events:
    """The driver's side: `on_done(spec, outcome)` stores an outcome as it arrives; `lost(spec, status,
    message)` is the outcome of a run that returned none (status "interrupted" or "error")."""

    on_start: Callable[[RunSpec], None]
    on_done: Callable[[RunSpec, dict[str, Any]], None]
    lost: Callable[[RunSpec, str, str], dict[str, Any]]


def get(settings: LaunchSettings) -> ModuleType:
    """The launcher module, its options checked (installed extra, reachable cluster)."""
    settings.check()
    module = importlib.import_module(f"{__name__}.{settings.launcher}")
    module.check(settings)
    return module


def launch(work: Work, specs: list[RunSpec], store: Any, settings: LaunchSettings, events: Events) -> list[str]:
    """Run `work` for every spec where the settings say; returns one line per run left pending (Slurm
    without --wait), empty when every run has an outcome."""
    return get(settings).launch(work, specs, store, settings, events)


def in_worker(fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> dict[str, Any]:
    """The body of a Ray task or Slurm job: quiet library logging, then the work (which never raises)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return fn(*args)


def need(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or say in one line which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"--launcher {extra} needs {module}, which is not installed: "
                        f'pip install -e ".[{extra}]" (or pip install "unipt-bench[{extra}]")') from None
