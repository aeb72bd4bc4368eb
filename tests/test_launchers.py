"""Launchers: Ray tasks and submitit jobs store, run for run, the figures of the local lanes; a killed Ray worker
is an interrupted run that the same call resumes from its checkpoint; a missing extra is one line, exit 2."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from unipt_bench.cli import main
from unipt_bench.config import RunSpec
from unipt_bench.launchers import CLUSTER_ENV, LaunchSettings
from unipt_bench.results import ResultStore
from unipt_bench.runner import launch_runs
from unipt_bench.suite_file import load_suite

from .datasets import write_precomp

RUNS = {"joint/lora", "joint/unipt", "video/lora"}  # three of the smoke suite's smallest runs


def smoke_specs() -> list:
    return [s for s in load_suite("smoke").with_mode("estimate") if f"{s.config}/{s.label}" in RUNS]


def figures(store: ResultStore, suite: str = "smoke") -> dict:
    return {key: (r.status, r.memory, r.params) for key, r in store.latest(suite).items()}


@pytest.fixture(scope="module")
def local_figures(tmp_path_factory) -> dict:
    """The smoke runs on the local launcher: one lane, its estimate runs in one child process."""
    store = ResultStore(tmp_path_factory.mktemp("local"))
    results, pending = launch_runs(smoke_specs(), store, settings=LaunchSettings("local", jobs=1))
    assert [r.status for r in results] == ["ok"] * len(RUNS) and pending == []
    return figures(store)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster of 2 CPUs for the module (starting Ray takes seconds); the launcher joins it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_ray_tasks_store_the_figures_of_the_local_lanes(ray_cluster, local_figures, tmp_path) -> None:
    store = ResultStore(tmp_path)
    started = []
    results, pending = launch_runs(smoke_specs(), store, settings=LaunchSettings("ray"), on_start=started.append)
    assert sorted(s.key for s in started) == sorted(s.key for s in smoke_specs()) and pending == []
    assert figures(store) == local_figures and len(local_figures) == len(RUNS)
    assert len(list((tmp_path / "smoke").glob("*/*.json"))) == len(RUNS) == len(results)  # one file per run


@pytest.mark.slow
def test_submitit_jobs_store_the_figures_of_the_local_lanes_and_are_collected_later(local_figures, tmp_path,
                                                                                   monkeypatch) -> None:
    """Without --wait the call submits and returns; the next call collects the same jobs, submitting none."""
    pytest.importorskip("submitit")
    monkeypatch.setenv(CLUSTER_ENV, "local")  # submitit's local executor: each job a process of its own here
    store = ResultStore(tmp_path)
    results, pending = launch_runs(smoke_specs(), store, settings=LaunchSettings("slurm", wait=False))
    assert results == [] and len(pending) == len(RUNS)
    state = tmp_path / "_slurm" / "smoke" / "runs.json"
    assert set(json.loads(state.read_text())["jobs"]) == {s.key for s in smoke_specs()}
    results, pending = launch_runs(smoke_specs(), store, settings=LaunchSettings("slurm", wait=True))
    assert pending == [] and len(results) == len(RUNS)
    assert figures(store) == local_figures
    assert json.loads(state.read_text())["jobs"] == {}  # every job collected
    assert len(list((tmp_path / "_slurm" / "smoke" / "jobs").glob("*_submitted.pkl"))) == len(RUNS)  # none twice


TRAIN_SUITE = """
name = "resume"
task = "retrieval"
task_options = { embed_dim = 32, pooling = "mean", hardest_negatives = false }

[[configs]]
name = "c"
batch = 12
towers = [
    { name = "image", backbone = "tiny-regions", tuned = false },
    { name = "text", backbone = "tiny-bert", seq_len = 8 },
]
train = { dataset = "flickr30k", format = "precomp", steps = 100, eval_every = 10 }
methods = ["lora"]
"""


def ray_worker_running(task_name: str) -> int:
    """The pid of the Ray worker whose process title is `ray::<task_name>` (Ray names busy workers so)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().split(b"\0")[0].decode().startswith(f"ray::{task_name}"):
                    return int(entry.name)
            except (OSError, UnicodeDecodeError):
                continue
    raise AssertionError(f"no Ray worker runs {task_name}")


@pytest.mark.slow
def test_a_killed_ray_worker_is_an_interrupted_run_that_resumes_from_its_checkpoint(ray_cluster, tmp_path) -> None:
    import torch

    data = write_precomp(tmp_path / "data" / "flickr30k")
    suite = tmp_path / "resume.toml"
    suite.write_text(TRAIN_SUITE)
    (spec,) = [RunSpec.from_dict({**s.to_dict(), "mode": "cpu"}) for s in load_suite(str(suite)).specs]  # trains
    store, shared = ResultStore(tmp_path / "store"), tmp_path / "shared"
    settings = LaunchSettings("ray", checkpoint_dir=str(shared))
    options = {"data_root": str(data.parent)}
    first: list = []
    driver = threading.Thread(target=lambda: first.append(launch_runs([spec], store, options, settings=settings)))
    driver.start()
    last = shared / "resume" / "c" / f"lora.cpu.{spec.digest()}.ckpt" / "last.pt"  # laid out as the store lays it
    deadline = time.time() + 240
    while not last.exists():
        assert driver.is_alive() and time.time() < deadline, "no checkpoint appeared in time"
        time.sleep(0.1)
    os.kill(ray_worker_running(f"unipt-bench {spec.key}"), signal.SIGKILL)
    driver.join(timeout=120)
    (([interrupted], pending),) = first
    assert interrupted.status == "interrupted" and "WorkerCrashedError" in interrupted.message and pending == []
    saved_step = torch.load(last, weights_only=True)["step"]
    assert 0 < saved_step < 100
    [resumed], _ = launch_runs([spec], store, options, settings=settings)
    assert resumed.status == "ok" and resumed.metrics["resumed_from_step"] >= saved_step
    assert sorted(r.status for _, r in store.all("resume")) == ["interrupted", "ok"]  # both kept, one file each
    assert not list(store.root.rglob("*.ckpt"))  # checkpoints went to --checkpoint-dir only


@pytest.mark.parametrize("launcher, module, extra", [("ray", "ray", "ray"), ("slurm", "submitit", "slurm")])
def test_a_launcher_without_its_extra_is_one_line_naming_it(launcher, module, extra, tmp_path, monkeypatch,
                                                            capsys) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    monkeypatch.setattr(sys, "argv", ["unipt-bench", "run", "--suite", "smoke", "--mode", "estimate", "--methods",
                                      "lora", "--launcher", launcher, "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert err[0].startswith("error: ") and f'pip install -e ".[{extra}]"' in err[0]
    assert not list(tmp_path.rglob("*.json"))  # nothing ran


def test_slurm_time_limits_and_sbatch_options_read_as_slurm_writes_them() -> None:
    from unipt_bench.launchers.slurm import minutes, sbatch_args

    assert [minutes(t) for t in ("90", "45:30", "1:30:00", "2-00", "1-02:03", "0-00:00:30")] == [90, 46, 90, 2880,
                                                                                                  1563, 1]
    assert sbatch_args(("account=abc", "qos=high", "mem-per-gpu=40G")) == {"account": "abc", "qos": "high",
                                                                          "mem-per-gpu": "40G"}
