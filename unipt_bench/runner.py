"""Run RunSpecs in child processes; not-applicable, OOM, errors, a dead worker and Ctrl-C become result statuses.

Estimate runs share one long-lived worker (fake tensors leave nothing behind, and importing torch
per run would cost seconds); cpu and cuda runs each get a fresh process, so peaks, RSS and cached
allocator blocks never carry over. Results are written as soon as each run ends.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
import threading
import traceback
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

from .config import RunSpec
from .errors import NotApplicable, UserError
from .results import ResultStore, RunResult, now

T = TypeVar("T")
R = TypeVar("R")


def execute(spec_data: dict[str, Any], options: dict[str, Any] | None = None,
            report: Callable[[dict[str, Any]], None] = lambda info: None) -> dict[str, Any]:
    """Profile (or train) one spec and return its RunResult as a dict; never raises for a failing run."""
    import torch

    from .ddp import data_parallel, launch
    from .environment import environment
    from .profile import RunOptions, profile
    from .train import train_run

    spec = RunSpec.from_dict(spec_data)
    result = RunResult(spec=spec_data, status="ok", digest=spec.digest(), started=now())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            run_options = RunOptions(**(options or {}))
            trains = spec.train is not None and spec.mode != "estimate"  # estimates profile a training config
            if data_parallel(spec, run_options):  # gpus = N on GPUs: N DDP processes under torchrun
                out = launch(spec, run_options, "train" if trains else "profile", report)
            else:
                out = train_run(spec, run_options, report) if trains else profile(spec, run_options)
            result.params, result.memory = out["params"], out["memory"]
            result.timing, result.protocol = out["timing"], out["protocol"]
            result.calibration, result.metrics = out.get("calibration"), out.get("metrics")
        except NotApplicable as exc:
            result.status, result.message = "not_applicable", str(exc)
        except torch.OutOfMemoryError as exc:
            result.status = "oom"
            result.message = f"out of memory at batch {spec.batch} per device: {str(exc).splitlines()[0]}"
        except UserError as exc:
            result.status, result.message = "error", str(exc)
        except Exception as exc:  # a failing run is a result, not a crash of the suite
            result.status, result.message = "error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            result.detail = traceback.format_exc()
    seen = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    if seen:
        result.detail = "\n".join(filter(None, [result.detail, "warnings:", *seen]))
    result.env = environment()
    result.finished = now()
    return result.__dict__


def _serve(conn: Connection, env: dict[str, str]) -> None:
    """Child loop: receive spec dicts, send result dicts, stop on None. `env` is set before torch loads
    (e.g. CUDA_VISIBLE_DEVICES: the GPU of this worker's lane)."""
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C means
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    while (job := conn.recv()) is not None:
        conn.send(("result", execute(*job, report=lambda info: conn.send(("progress", info)))))


class Worker:
    """One spawned child process that runs specs sent to it."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, env or {}), daemon=True)
        self.process.start()
        child.close()

    def run(self, spec: RunSpec, options: dict[str, Any] | None = None,
            on_progress: Callable[[dict[str, Any]], None] = lambda info: None) -> dict[str, Any]:
        self.conn.send((spec.to_dict(), options))
        while True:
            while not self.conn.poll(0.2):
                if not self.process.is_alive():
                    raise ChildProcessError(f"the worker process died (exit code {self.process.exitcode})")
            kind, payload = self.conn.recv()
            if kind == "result":
                return payload
            on_progress(payload)

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(timeout=10)
        self.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


INTERRUPTED = "interrupted by the user (Ctrl-C)"


def failed(spec: RunSpec, status: str, message: str) -> RunResult:
    """The result of a run that never returned one (killed, cancelled, interrupted)."""
    stamp = now()
    return RunResult(spec=spec.to_dict(), status=status, digest=spec.digest(), message=message, started=stamp,
                     finished=stamp)


class Lane:
    """One slot of runs: each cpu or cuda run in a fresh child process, estimate runs in one reused child
    (fake tensors leave nothing behind); `env` goes to every child it starts (its GPU, for instance)."""

    def __init__(self, isolate: bool = True, env: dict[str, str] | None = None) -> None:
        self.isolate, self.env = isolate, env
        self.worker: Worker | None = None

    def run(self, spec: RunSpec, run_options: dict[str, Any], progress: Callable[[dict[str, Any]], None]) -> RunResult:
        if not self.isolate:
            return RunResult(**execute(spec.to_dict(), run_options, progress))
        if self.worker is None or spec.mode != "estimate":
            self.close()
            self.worker = Worker(self.env)
        try:
            return RunResult(**self.worker.run(spec, run_options, progress))
        except (ChildProcessError, EOFError, OSError) as exc:
            self.kill()
            return failed(spec, "error", str(exc))

    def kill(self) -> None:
        if self.worker is not None:
            self.worker.kill()
            self.worker = None

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


def run_options(spec: RunSpec, store: ResultStore, options: dict[str, Any] | None = None, snapshots: bool = False,
                checkpoint_dir: str | None = None) -> dict[str, Any]:
    """A run's RunOptions fields: the command's options, plus where its snapshot and checkpoints go.

    checkpoint_dir (--checkpoint-dir) replaces the store as the root of training checkpoints, laid out as
    the store lays them out: a folder every worker sees, when workers share no filesystem with the driver.
    """
    run_options = dict(options or {})
    if snapshots and spec.mode == "cuda":
        run_options["snapshot"] = str(store.snapshot_path(spec))
    if spec.train:
        folder = store.checkpoint_dir(spec)
        if checkpoint_dir:
            folder = Path(checkpoint_dir) / folder.relative_to(store.root)
        run_options["checkpoints"] = str(folder)
    return run_options


NOTHING_LEFT = object()  # what a lane gets when no item is left for it (or the pool stopped)


class LanePool:
    """Items handed out to lanes, each lane taking the next one when it is free; what is in flight, per lane.

    `finish` gets each item's outcome as it ends (under the pool's lock); `crashed` turns an exception of
    `work` into an outcome, so an item never goes without one. `stop()` kills every lane and returns the
    items in flight, whose outcomes are then never finished."""

    def __init__(self, items: list[T], lanes: list[Lane], work: Callable[[Lane, T], R],
                 finish: Callable[[T, R], None], on_start: Callable[[T], None],
                 crashed: Callable[[T, Exception], R]) -> None:
        self.pending, self.lanes = list(reversed(items)), lanes
        self.work, self.finish, self.on_start, self.crashed = work, finish, on_start, crashed
        self.in_flight: dict[int, T] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.errors: list[BaseException] = []  # raised in a lane thread: re-raised by the calling thread

    def take(self, k: int) -> Any:
        """The next item for lane k (now in flight), or NOTHING_LEFT."""
        with self.lock:
            if self.stopped.is_set() or not self.pending:
                return NOTHING_LEFT
            item = self.in_flight[k] = self.pending.pop()
            self.on_start(item)
            return item

    def serve(self, k: int) -> None:
        """Lane k's loop: take an item, work it, finish its outcome; until no item is left or the pool stops."""
        while (item := self.take(k)) is not NOTHING_LEFT:
            try:
                out = self.work(self.lanes[k], item)
            except Exception as exc:  # noqa: BLE001  (a lane never dies silently: its item gets an outcome)
                out = self.crashed(item, exc)
            with self.lock:
                if self.stopped.is_set():
                    return  # stop() has handed this item to the caller
                del self.in_flight[k]
                self.finish(item, out)

    def serve_in_thread(self, k: int) -> None:
        """`serve` in a lane thread: whatever escapes it is kept for the calling thread to raise."""
        try:
            self.serve(k)
        except BaseException as exc:  # noqa: BLE001
            self.errors.append(exc)

    def serve_in_threads(self) -> None:
        """One thread per lane; the calling thread waits (and so stays the one that gets Ctrl-C)."""
        threads = [threading.Thread(target=self.serve_in_thread, args=(k,), daemon=True) for k in range(len(self.lanes))]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.2)
        if self.errors:
            raise self.errors[0]

    def stop(self) -> list[T]:
        """Kill every lane and return the items that were in flight."""
        self.stopped.set()
        for lane in self.lanes:
            lane.kill()
        with self.lock:
            stopped = list(self.in_flight.values())
            self.in_flight.clear()
        return stopped


def serve_lanes(
    items: list[T],
    lanes: list[Lane],
    work: Callable[[Lane, T], R],
    finish: Callable[[T, R], None],
    on_start: Callable[[T], None],
    interrupted: Callable[[T], None],
    crashed: Callable[[T, Exception], R],
) -> None:
    """Work through `items` on `lanes` (a LanePool: one thread per lane, or the calling thread itself when
    there is one lane). Ctrl-C kills every lane, calls `interrupted` for each item in flight, and re-raises."""
    pool = LanePool(items, lanes, work, finish, on_start, crashed)
    try:
        if len(lanes) == 1:
            pool.serve(0)
        else:
            pool.serve_in_threads()
    except KeyboardInterrupt:
        for item in pool.stop():
            interrupted(item)
        raise
    finally:
        for lane in lanes:
            lane.close()


def check_store(specs: list[RunSpec], store: ResultStore) -> None:
    """Refuse, in one line and before any run starts, a store that cannot take these runs' results: every
    folder they go to is made and a file created there (a file where a folder should be, a read-only folder)."""
    from .atomic import check_writable_dir

    for folder in sorted({store.run_file(spec, "json").parent for spec in specs}):
        check_writable_dir(folder, "result store")


def launch_runs(
    specs: list[RunSpec],
    store: ResultStore,
    options: dict[str, Any] | None = None,
    snapshots: bool = False,
    settings: Any = None,
    on_start: Callable[[RunSpec], None] = lambda spec: None,
    on_result: Callable[[RunResult], None] = lambda result: None,
    on_progress: Callable[[RunSpec, dict[str, Any]], None] = lambda spec, info: None,
) -> tuple[list[RunResult], list[str]]:
    """Run specs where `settings` (a launchers.LaunchSettings; default: local lanes) say, the driver writing
    each result as it arrives; returns the results and one line per run still pending (Slurm, no --wait).
    A result the store cannot take (disk full) is returned as an error naming the store: the command
    reports it and fails. Ctrl-C records `interrupted` for every run that has not ended and re-raises."""
    from .launchers import Events, LaunchSettings, Work, launch

    settings = settings or LaunchSettings()
    results: list[RunResult] = []
    check_store(specs, store)

    def options_for(spec: RunSpec) -> dict[str, Any]:
        return run_options(spec, store, options, snapshots, settings.checkpoint_dir)

    def done(spec: RunSpec, outcome: dict[str, Any]) -> None:
        result = RunResult(**outcome)
        try:
            store.write(result)
        except OSError as exc:  # the store filled up or went away: the run is lost, and says so
            result = dataclasses.replace(result, status="error", message=f"result lost, not stored in {store.root}: {exc}")
        results.append(result)
        on_result(result)

    work = Work(
        kind="run",
        local=lambda lane, spec: lane.run(spec, options_for(spec), lambda info: on_progress(spec, info)).__dict__,
        remote=lambda spec: (execute, (spec.to_dict(), options_for(spec))),
        tag=lambda spec: spec.digest(),
    )
    def lost(spec: RunSpec, status: str, message: str) -> dict[str, Any]:
        return failed(spec, status, message).__dict__

    pending = launch(work, specs, store, settings, Events(on_start, done, lost))
    return results, pending
