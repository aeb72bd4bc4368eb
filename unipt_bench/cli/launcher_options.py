"""The options that choose where `run` and `fit` execute (local lanes, Ray, Slurm), gathered into one
`LaunchSettings` argument named `launch`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from ..launchers import LAUNCHERS, LaunchSettings

OPTIONS = [
    click.option("--launcher", type=click.Choice(LAUNCHERS), default="local", show_default=True,
                 help="local: processes on this machine; ray: one Ray task per run; slurm: one Slurm job per run "
                      "(submitit). Ray and Slurm need their extra: pip install -e \".[ray]\" or \".[slurm]\"."),
    click.option("--ray-address", default=None,
                 help="ray: the cluster's head, host:port or ray://host:port (default: RAY_ADDRESS, else a local "
                      "Ray started for this command)."),
    click.option("--checkpoint-dir", default=None, type=click.Path(file_okay=False),
                 help="Training checkpoints go here instead of under --out; on Ray without a shared --out, a "
                      "folder every node sees (runs resume from it)."),
    click.option("--partition", default=None, help="slurm: the partition to submit to."),
    click.option("--time", "time_limit", default=None,
                 help="slurm: each job's time limit, minutes or [D-]HH:MM:SS (default 4:00:00)."),
    click.option("--gpus-per-node", type=click.IntRange(min=0), default=None,
                 help="slurm: GPUs per job (default: the run's GPUs in cuda mode, else 0)."),
    click.option("--slurm-arg", "slurm_args", multiple=True, metavar="KEY=VALUE",
                 help="slurm: an extra sbatch option, e.g. account=abc or qos=high (repeatable)."),
    click.option("--wait/--no-wait", default=None,
                 help="slurm: wait for the jobs (default: submit and return; the same command then collects "
                      "finished jobs, skips what is done and reports what is pending)."),
]


def launcher_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the launcher options to a command, which receives them as `launch: LaunchSettings`."""

    @functools.wraps(command)
    def wrapper(*args: Any, launcher: str, ray_address: str | None, checkpoint_dir: str | None,
                partition: str | None, time_limit: str | None, gpus_per_node: int | None,
                slurm_args: tuple[str, ...], wait: bool | None, **kwargs: Any) -> Any:
        launch = LaunchSettings(launcher=launcher, ray_address=ray_address, checkpoint_dir=checkpoint_dir,
                                partition=partition, time=time_limit, gpus_per_node=gpus_per_node,
                                slurm_args=tuple(slurm_args), wait=wait)
        return command(*args, launch=launch, **kwargs)

    for option in reversed(OPTIONS):
        wrapper = option(wrapper)
    return wrapper


jobs_option = click.option(
    "--jobs", type=click.IntRange(min=1), default=None,
    help="local: runs at once (default: every core in estimate mode, one per visible GPU in cuda mode, 1 in cpu "
         "mode); slurm: jobs of an array at once.")
