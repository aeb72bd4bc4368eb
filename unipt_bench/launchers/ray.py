"""The Ray launcher: one Ray task per run, asking for the run's GPUs (none for an estimate).

A cpu or cuda task runs in a Ray worker process of its own (`max_calls=1`: the worker exits after one run,
so no memory state carries over); estimate tasks share reused workers, as estimates share a local lane's
worker (fake tensors leave nothing behind, and a fresh worker pays seconds of imports per run). A task
that dies is not retried (`max_retries=0`) but recorded `interrupted`, and the same command run again
resumes it. Outcomes come back to the driver, which writes the store, so workers need no shared
filesystem; training checkpoints do (--checkpoint-dir). Without --ray-address, a local Ray is started for
the command and stopped after it.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any
from urllib.parse import urlsplit

from ..config import RunSpec
from ..errors import UserError
from . import Events, LaunchSettings, Work, in_worker, need

REACH_SECONDS = 3.0  # an unreachable head fails in seconds, not after Ray's own minutes of retries
POLL_SECONDS = 0.5  # how long the driver waits for an outcome before looking for Ctrl-C again


def head(settings: LaunchSettings) -> str | None:
    """The cluster to join: --ray-address, else RAY_ADDRESS, else None (a local Ray for the command)."""
    return settings.ray_address or os.environ.get("RAY_ADDRESS") or None


def check(settings: LaunchSettings) -> None:
    need("ray", "ray")
    address = head(settings)
    if address and address != "auto":
        reachable(address)


def reachable(address: str) -> None:
    """A TCP connection to the head's port (GCS 6379, or 10001 for ray://) within REACH_SECONDS."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port or (10001 if parts.scheme == "ray" else 6379)
    except ValueError as exc:  # a port that is no number
        raise UserError(f"--ray-address {address!r}: {exc}; expected host:port or ray://host:port") from None
    if not host:
        raise UserError(f"--ray-address {address!r}: no host; expected host:port or ray://host:port")
    try:
        socket.create_connection((host, port), timeout=REACH_SECONDS).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"--ray-address {address}: cannot reach {host}:{port} ({reason}); "
                        f"is a Ray head running there (ray start --head)?") from None


def describe(settings: LaunchSettings, specs: list[RunSpec]) -> str:
    where = f"the Ray cluster at {head(settings)}" if head(settings) else "a local Ray"
    return f"one Ray task per run on {where}"


def connect(settings: LaunchSettings) -> bool:
    """Join the cluster (or start a local one); True when this call started Ray and must stop it."""
    import ray

    if ray.is_initialized():  # a caller (a notebook, a test) joined a cluster already
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if head(settings):
            ray.init(address=head(settings), **quiet)
        else:
            from ..launch import cores

            ray.init(num_cpus=cores(), include_dashboard=False, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"--launcher ray: cannot start or join Ray ({first})") from None
    return True


def lost_status(exc: Exception) -> tuple[str, str]:
    """A task that returned nothing: a dead worker, node or cancelled task is `interrupted` (running the
    command again resumes it); any other Ray failure is an `error`."""
    import ray.exceptions as rex

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    gone = tuple(getattr(rex, name) for name in ("WorkerCrashedError", "NodeDiedError", "TaskCancelledError",
                                                 "LocalRayletDiedError") if hasattr(rex, name))
    if isinstance(exc, gone):
        return "interrupted", f"the Ray worker stopped before the run ended ({type(exc).__name__}: {first})"
    return "error", f"Ray: {type(exc).__name__}: {first}"


def launch(work: Work, specs: list[RunSpec], store: Any, settings: LaunchSettings, events: Events) -> list[str]:
    import ray

    from ..runner import INTERRUPTED

    if not specs:
        return []
    started = connect(settings)
    fresh, reused = ray.remote(max_calls=1)(in_worker), ray.remote(max_calls=0)(in_worker)
    refs: dict[Any, RunSpec] = {}
    try:
        for spec in specs:
            fn, args = work.remote(spec)
            gpus = spec.gpus if spec.mode == "cuda" else 0
            task = reused if spec.mode == "estimate" else fresh
            ref = task.options(num_cpus=1, num_gpus=gpus, max_retries=0,
                               name=f"unipt-bench {spec.key}").remote(fn, args)
            refs[ref] = spec
            events.on_start(spec)
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                spec = refs.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    outcome = events.lost(spec, *lost_status(exc))
                events.on_done(spec, outcome)
    except KeyboardInterrupt:
        for ref, spec in refs.items():
            ray.cancel(ref, force=True)
            events.on_done(spec, events.lost(spec, "interrupted", INTERRUPTED))
        raise
    finally:
        if started:
            ray.shutdown()
    return []
