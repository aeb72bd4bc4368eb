"""Run RunSpecs in child processes; not-applicable, OOM, errors, a dead worker and Ctrl-C become result statuses.

Estimate runs share one long-lived worker (fake tensors leave nothing behind, and importing torch
per run would cost seconds); cpu and cuda runs each get a fresh process, so peaks, RSS and cached
allocator blocks never carry over. Results are written as soon as each run ends.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import traceback
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .config import RunSpec
from .errors import NotApplicable, UserError
from .results import ResultStore, RunResult, now


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


def failed(spec: RunSpec, status: str, message: str) -> RunResult:
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


def run_specs(
    specs: list[RunSpec],
    store: ResultStore,
    isolate: bool = True,
    on_start: Callable[[RunSpec], None] = lambda spec: None,
    on_result: Callable[[RunResult], None] = lambda result: None,
    options: dict[str, Any] | None = None,
    snapshots: bool = False,
    on_progress: Callable[[RunSpec, dict[str, Any]], None] = lambda spec, info: None,
    jobs: int = 1,
    lane_env: Callable[[int], dict[str, str]] = lambda lane: {},
) -> list[RunResult]:
    """Run specs, writing each result as it ends. Ctrl-C records `interrupted` for every run in flight and
    re-raises.

    options are RunOptions fields; snapshots=True saves each cuda run's allocator snapshot beside its
    result. jobs > 1 runs that many lanes at once (each its own child processes; `lane_env(k)` is lane
    k's environment); results are the same files as one lane writes, in the order runs end.
    """
    lock = threading.Lock()
    results: list[RunResult] = []

    def run_one(lane: Lane, spec: RunSpec) -> RunResult:
        run_options = dict(options or {})
        if snapshots and spec.mode == "cuda":
            run_options["snapshot"] = str(store.snapshot_path(spec))
        if spec.train:
            run_options["checkpoints"] = str(store.checkpoint_dir(spec))
        return lane.run(spec, run_options, lambda info: on_progress(spec, info))

    def finish(result: RunResult, keep: bool = True) -> None:
        with lock:
            store.write(result)
            if keep:
                results.append(result)
            on_result(result)

    if jobs <= 1:
        lane = Lane(isolate)
        try:
            for spec in specs:
                on_start(spec)
                try:
                    result = run_one(lane, spec)
                except KeyboardInterrupt:
                    lane.kill()
                    finish(failed(spec, "interrupted", "interrupted by the user (Ctrl-C)"), keep=False)
                    raise
                finish(result)
        finally:
            lane.close()
        return results

    pending = list(reversed(specs))
    in_flight: dict[int, RunSpec] = {}
    lanes = [Lane(isolate, lane_env(k)) for k in range(jobs)]
    stop = threading.Event()

    def serve(k: int) -> None:
        while not stop.is_set():
            with lock:
                if not pending:
                    return
                spec = in_flight[k] = pending.pop()
                on_start(spec)
            try:
                result = run_one(lanes[k], spec)
            except Exception as exc:  # noqa: BLE001  (a lane never dies silently: its run becomes an error)
                result = failed(spec, "error", f"{type(exc).__name__}: {exc}")
            if stop.is_set():
                return  # interrupted: the main thread records this run
            with lock:
                in_flight.pop(k, None)
            finish(result)

    threads = [threading.Thread(target=serve, args=(k,), daemon=True) for k in range(jobs)]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.2)
    except KeyboardInterrupt:
        stop.set()
        for lane in lanes:
            lane.kill()
        with lock:
            interrupted = list(in_flight.values())
            in_flight.clear()
        for spec in interrupted:
            finish(failed(spec, "interrupted", "interrupted by the user (Ctrl-C)"), keep=False)
        raise
    finally:
        for lane in lanes:
            lane.close()
    return results
