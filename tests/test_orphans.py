"""`kill -9` of the command leaves nothing running: not the child training a run, nor a local Ray it started.

Each test starts `unipt-bench run` with a marker in its environment, which every process it starts inherits,
kills it with SIGKILL while its runs are under way, and looks for processes still holding the marker or
still running among those that were below the command when it was killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from unipt_bench.launchers.reaper import descendants, marked, start_time

from .datasets import write_precomp
from .test_launchers import TRAIN_SUITE

CHECKPOINT_EVERY_STEP = TRAIN_SUITE.replace("eval_every = 10", "eval_every = 1")  # under way after one step

GRACE_SECONDS = 2.0  # the reaper needs milliseconds; an orphan trains on for seconds


def titles(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:100])
        except OSError:
            continue
    return out


def kill_during(args: list[str], under_way, tmp_path: Path, limit: float = 240) -> list[str]:
    """Start `unipt-bench <args>`, SIGKILL it once `under_way(titles of its processes)` holds, and return what
    is left after the grace."""
    if not Path("/proc/self/environ").exists():
        pytest.skip("needs /proc")
    mark = f"UNIPT_BENCH_TEST_RUN={uuid.uuid4().hex}"
    env = {**os.environ, **dict([mark.split("=")])}
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "unipt_bench.cli", *args], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    below: dict[int, int | None] = {}  # the processes below the command when it is killed, with their start times

    def left() -> list[int]:
        return sorted(marked(mark.encode()) | {pid for pid, t in below.items() if t and start_time(pid) == t})

    try:
        deadline = time.time() + limit
        while not under_way(titles(marked(mark.encode()))):
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-2000:]
            assert time.time() < deadline, "the runs never got under way"
            time.sleep(0.1)
        below.update({pid: start_time(pid) for pid in descendants(driver.pid)})
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        end = time.time() + GRACE_SECONDS
        while left() and time.time() < end:
            time.sleep(0.1)
        return titles(left())
    finally:
        driver.kill()
        for pid in left():  # the test leaves nothing behind either way
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_killed_command_leaves_no_child_training(tmp_path) -> None:
    data = write_precomp(tmp_path / "data" / "flickr30k")
    suite = tmp_path / "resume.toml"
    suite.write_text(CHECKPOINT_EVERY_STEP)
    out = tmp_path / "out"
    left = kill_during(["run", "--suite", str(suite), "--mode", "cpu", "--data-root", str(data.parent),
                        "--out", str(out)], lambda running: any(out.rglob("last.pt")), tmp_path)
    assert left == []


@pytest.mark.slow
def test_a_killed_command_leaves_no_local_ray_running(tmp_path) -> None:
    pytest.importorskip("ray")

    def task_running(running: list[str]) -> bool:
        return any(title.startswith("ray::unipt-bench") for title in running)

    left = kill_during(["run", "--suite", "smoke", "--mode", "estimate", "--configs", "bert", "--methods", "lora",
                        "--launcher", "ray", "--out", str(tmp_path / "out")], task_running, tmp_path)
    assert left == []
