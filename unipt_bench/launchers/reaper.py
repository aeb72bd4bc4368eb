"""Processes of a command die with it, even when it is killed (`kill -9`) and cannot stop them itself.

`guard()` starts a reaper, a small process in a session of its own that waits for the command to close a
pipe; the pipe closes when the command ends, however it ends (the kernel closes it for a killed process).
Meanwhile the reaper notes, every second, the processes below the command started since the guard began
(run children, torchrun and its ranks, a local Ray's servers, agents and workers), and the command marks
every process it starts from then on with an environment variable they inherit (which finds those that
their parent's death moved elsewhere in the tree). At the end the reaper kills what it noted that still
runs, what those started, and what is marked, then exits. A process's start-time environment
(/proc/<pid>/environ) is what is read, so the command itself, marked after it started, is never among them.

The Slurm launcher does not use it: jobs of submitit's local executor outlive the command by design.
This file is also the reaper's program, run as a plain script (no package import).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MARK = "UNIPT_BENCH_REAPER"  # NAME=<command's id> in the environment of every process the command starts
SWEEPS = 20  # kill until a sweep finds nothing (a dying Ray may start a worker meanwhile)
LOOK_SECONDS = 1.0  # how often the reaper notes the command's processes while it waits


def start_time(pid: int) -> int | None:
    """A running process's start time (clock ticks since boot), which with the pid names one process, never a
    later one; None when none runs (a zombie has ended: its parent has not yet read its exit status)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, through each thread's children list."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                new = {int(child) for child in children.read_text().split()} - found
            except (OSError, ValueError):
                continue
            found |= new
            todo.extend(new)
    return found


def marked(mark: bytes) -> set[int]:
    """The pids whose start-time environment holds `mark`. Processes that rewrite their title (Ray's agents)
    may overwrite it, which is why the reaper also notes the command's processes as it waits."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


class Reaper:
    """Notes the processes the command started since the guard began (`look`) and kills them (`reap`)."""

    def __init__(self, command: int, mark: bytes) -> None:
        self.command, self.mark = command, mark
        self.since = start_time(os.getpid()) or 0  # the guard began when this process started
        self.seen: dict[int, int] = {}  # pid -> start time

    def look(self) -> None:
        for pid in descendants(self.command) - {os.getpid()}:
            started = start_time(pid)
            if started is not None and started > self.since:  # later than the tick the guard began in
                self.seen[pid] = started

    def alive(self) -> set[int]:
        """What is left: noted processes that still run (the same ones), what they started, and the marked."""
        noted = {pid for pid, started in self.seen.items() if start_time(pid) == started}
        below = set().union(*(descendants(pid) for pid in noted)) if noted else set()
        return (noted | below | marked(self.mark)) - {os.getpid()}

    def reap(self) -> None:
        for _ in range(SWEEPS):
            pids = self.alive()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.05)

    def wait_for_end(self) -> None:
        """Until the command closes stdin, or dies (a process it forked may hold stdin open after it)."""
        while os.getppid() == self.command:
            self.look()
            ready, _, _ = select.select([sys.stdin], [], [], LOOK_SECONDS)
            if ready and not os.read(sys.stdin.fileno(), 4096):
                return


@contextmanager
def guard() -> Iterator[None]:
    """Mark the processes started inside the block and reap them when the command ends (Linux; elsewhere
    nothing is done)."""
    if not Path("/proc/self/environ").exists() or os.environ.get(MARK):  # not Linux, or a guard is on already
        yield
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # the interpreter's own helper, shared by later commands: left unmarked
    value = f"{os.getpid()}-{uuid.uuid4().hex}"
    # in a session of its own: Ctrl-C or a closed terminal do not stop it before the command
    reaper = subprocess.Popen([sys.executable, "-I", "-S", __file__, f"{MARK}={value}", str(os.getpid())],
                              stdin=subprocess.PIPE, start_new_session=True)
    os.environ[MARK] = value
    try:
        yield
    finally:
        del os.environ[MARK]
        assert reaper.stdin is not None
        reaper.stdin.close()  # the command ends normally: the reaper kills what is left, if anything
        try:
            reaper.wait(timeout=30)
        except subprocess.TimeoutExpired:
            reaper.kill()


if __name__ == "__main__":  # the reaper: wait for the command's end, then kill what it started
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reaper = Reaper(int(sys.argv[2]), sys.argv[1].encode())
    reaper.wait_for_end()
    reaper.reap()
