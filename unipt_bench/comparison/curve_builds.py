"""Every method's curves and its run at the asked shape, built ahead of the lanes that analyse the methods.

A method's build is one run at the asked shape (`shape_memory.ask`), then one curve per line (`line_curve`), each
line a task of its own once the run is made: `jobs` child processes take the next task as they free up, a line
before a method's run (so that a method's curves are ready soon after its run, and the last method's lines end
side by side instead of one after the other), full fine-tuning's first (every lane compares with it).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial
from typing import Any

from ..config import RunSpec
from .shape_memory import AskedRun, LineCurves, LinePart, ask, combined, line_curve, line_curves

# what the builders import before their first task (about 4 s of CPU in a fresh interpreter)
BUILDER_IMPORTS = ["unipt_bench.comparison.shape_memory", "unipt_bench.curves", "unipt_bench.profile",
                   "unipt_bench.runner"]


def builder_context() -> Any:
    """How builders start: forked from a server process that imported the tracing code once (POSIX), so that
    each builder begins at its first trace; spawned elsewhere."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(BUILDER_IMPORTS)
    return context


def start_curve_builders() -> None:
    """Start the builders' server now (it imports while the caller checks its request, on another core), so
    that the comparison's builders fork ready. Optional: the first build starts it when it is not running."""
    if builder_context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def exit_with(parent: int) -> None:
    """A builder's initializer: end this process once `parent` (the comparison's process) is gone. A killed
    comparison would otherwise leave its builders waiting for their next task for ever, and with them the
    server they forked from."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent, 0)  # signal 0: only asks whether the process exists (POSIX)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # alive, under another user
                pass

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class CurveBuilds:
    """Every method's LineCurves (see the module docstring), in `jobs` child processes, or in the thread that
    asks for one with isolate=False. `options`: the RunOptions of the lanes' runs, so that the asked run is
    theirs."""

    def __init__(self, specs: dict[str, RunSpec], lines: list[tuple[list[str], int | None]], options: dict[str, Any],
                 jobs: int, isolate: bool) -> None:
        self.specs, self.lines, self.options = specs, lines, options
        self.pool = None
        if isolate:
            context = builder_context()
            watch = {"initializer": exit_with, "initargs": (os.getpid(),)} if os.name == "posix" else {}
            self.pool = ProcessPoolExecutor(max(1, jobs), mp_context=context, **watch)
        self.jobs = max(1, jobs)
        self.built: dict[str, Future] = {label: Future() for label in specs}
        self.lock = threading.RLock()  # a task done already runs its callback inside `submit`
        self.waiting = deque(sorted(specs, key=lambda label: specs[label].method != "full"))  # runs to make
        self.ready: deque[tuple[str, int]] = deque()  # (method, line) whose run is made
        self.asked: dict[str, AskedRun] = {}
        self.parts: dict[str, list[LinePart | None]] = {}
        self.running = 0
        self.closed = False
        if self.pool is not None:
            with self.lock:
                self.submit()

    def get(self, label: str) -> LineCurves:
        if self.pool is None:
            return line_curves(self.specs[label].to_dict(), self.lines, self.options)
        return self.built[label].result()

    def submit(self) -> None:
        """Hand out tasks while a process is free (the lock held): a made run's lines first."""
        while not self.closed and self.running < self.jobs and (self.ready or self.waiting):
            if self.ready:
                label, line = self.ready.popleft()
                axes, limit = self.lines[line]
                call = partial(line_curve, self.specs[label].to_dict(), axes, limit, self.asked[label].traced)
                done = partial(self.line_done, label, line)
            else:
                label = self.waiting.popleft()
                call, done = partial(ask, self.specs[label].to_dict(), self.options), partial(self.asked_done, label)
            try:
                task = self.pool.submit(call)
            except Exception as exc:  # noqa: BLE001  (a broken pool: the method fails, its lane says why)
                if not self.built[label].done():
                    self.built[label].set_exception(exc)
                continue
            self.running += 1
            task.add_done_callback(done)

    def asked_done(self, label: str, task: Future) -> None:
        with self.lock:
            self.running -= 1
            if task.cancelled() or task.exception() is not None:
                self.fail(label, task)
            else:
                asked = self.asked[label] = task.result()
                if asked.result["status"] != "ok" or not self.lines:
                    self.built[label].set_result(combined(asked, []))
                else:
                    self.parts[label] = [None] * len(self.lines)
                    self.ready.extend((label, line) for line in range(len(self.lines)))
            self.submit()

    def line_done(self, label: str, line: int, task: Future) -> None:
        with self.lock:
            self.running -= 1
            if task.cancelled() or task.exception() is not None:
                self.fail(label, task)
            elif not self.built[label].done():
                parts = self.parts[label]
                parts[line] = task.result()
                if all(part is not None for part in parts):
                    self.built[label].set_result(combined(self.asked[label], parts))
            self.submit()

    def fail(self, label: str, task: Future) -> None:
        """A task that raised (or a process that died) fails its method: the lane reports it as an error row."""
        if not self.built[label].done():
            self.built[label].set_exception(task.exception() if not task.cancelled() else RuntimeError("cancelled"))

    def close(self) -> None:
        with self.lock:
            self.closed = True
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
