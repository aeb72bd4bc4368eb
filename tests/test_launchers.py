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


def quick_work(kind: str = "run"):
    """Work whose job returns its run key at once: the Slurm launcher's bookkeeping without a run."""
    from unipt_bench.launchers import Work

    return Work(kind=kind, local=None, remote=lambda spec: (dict, ([("key", spec.key)],)), tag=lambda spec: "t")


def slurm_launch(specs, store, wait, work=None) -> tuple[dict, list]:
    """The Slurm launcher on `specs`; returns {run key: outcome} of the runs it collected and the pending lines."""
    from unipt_bench.launchers import Events, slurm

    outcomes: dict = {}
    events = Events(on_start=lambda spec: None, on_done=lambda spec, out: outcomes.__setitem__(spec.key, out),
                    lost=lambda spec, status, message: {"status": status, "message": message})
    pending = slurm.launch(work or quick_work(), specs, store, LaunchSettings("slurm", wait=wait), events)
    return outcomes, pending


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """sbatch, srun and sacct on PATH that submit nothing: sbatch keeps a copy of the batch script it is given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"sbatch": f'#!/bin/sh\ncp "$1" {tmp_path}/batch.sh\necho "Submitted batch job 4242"\n',
               "srun": "#!/bin/sh\nexit 0\n", "sacct": "#!/bin/sh\nexit 0\n"}
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(CLUSTER_ENV, raising=False)
    return tmp_path / "batch.sh"


def test_sbatch_options_reach_the_batch_script_and_control_characters_are_refused(fake_slurm, tmp_path,
                                                                                  monkeypatch, capsys) -> None:
    pytest.importorskip("submitit")
    from unipt_bench.launchers import slurm

    settings = LaunchSettings("slurm", partition="gpu", slurm_args=("account=abc", "qos=high"))
    slurm.check(settings)
    specs = smoke_specs()[:1]
    from unipt_bench.launchers import Events

    events = Events(lambda spec: None, lambda spec, out: None, lambda spec, status, message: {})
    pending = slurm.launch(quick_work(), specs, ResultStore(tmp_path / "out"), settings, events)
    lines = fake_slurm.read_text().splitlines()
    assert {"#SBATCH --account=abc", "#SBATCH --qos=high", "#SBATCH --partition=gpu", "#SBATCH --time=240"} <= set(
        lines) and len(pending) == 1
    fake_slurm.unlink()
    from unipt_bench.errors import UserError

    for bad in (LaunchSettings("slurm", slurm_args=("account=abc\r",)), LaunchSettings("slurm", slurm_args=(
            "account\n=abc",)), LaunchSettings("slurm", partition="gpu\n#SBATCH --time=1")):
        with pytest.raises(UserError, match="^--(slurm-arg|partition) "):
            slurm.check(bad)
    monkeypatch.setattr(sys, "argv", ["unipt-bench", "run", "--suite", "smoke", "--mode", "estimate", "--methods",
                                      "lora", "--launcher", "slurm", "--slurm-arg", "account=abc\ntouch X #",
                                      "--out", str(tmp_path / "cli")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: --slurm-arg account")
    assert not fake_slurm.exists() and not (tmp_path / "cli").exists()  # nothing submitted


@pytest.mark.parametrize("missing", ["sbatch", "srun"])
def test_slurm_without_sbatch_or_srun_is_one_line(missing, fake_slurm, tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("submitit")
    (fake_slurm.parent / "bin" / missing).unlink()
    monkeypatch.setenv("PATH", str(fake_slurm.parent / "bin"))
    monkeypatch.setattr(sys, "argv", ["unipt-bench", "run", "--suite", "smoke", "--mode", "estimate", "--methods",
                                      "lora", "--launcher", "slurm", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and f"{missing} is not on PATH" in err[0]


@pytest.mark.parametrize("content", [
    '{"schema": 1, "jobs": {"a/b/estimate": {"job_id": {"nested": ["x"]}, "tag": "t", "cluster": "slurm"}}}',
    '{"schema": 1, "jobs": ["a/b/estimate"]}',
    '{"schema": 1, "jobs": {"a/b/estimate": {"job_id": "12; rm -rf ~", "tag": "t", "cluster": "slurm"}}}',
    '{"schema": 1, "jobs": {"a/b/estimate": {"job_id": 12, "tag": "t", "cluster": "slurm"}}}',
    '{"schema": 1, "jobs": {"a/b/estimate": {"job_id": "12", "tag": "t", "cluster": "lsf"}}}',
    '{"schema": 1, "jobs": {"a/b/estimate": "12"}}',
    '[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]', "[" * 100_000, "", None,
])
def test_a_corrupt_slurm_job_list_is_one_line(content, tmp_path) -> None:
    from unipt_bench.errors import UserError
    from unipt_bench.launchers.slurm_state import JobState

    path = tmp_path / "runs.json"
    if content is None:
        os.mkfifo(path)  # no writer: reading it would wait forever
    else:
        path.write_text(content)
    with pytest.raises(UserError) as error:
        JobState(path, tmp_path / "jobs", "run")
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)
    assert content is None or path.read_text() == content  # left as it was


def wait_for_results(folder: Path, count: int) -> None:
    deadline = time.time() + 120
    while len(list(folder.glob("*_result.pkl"))) < count:
        assert time.time() < deadline, "the local jobs wrote no results in time"
        time.sleep(0.2)


def test_a_deleted_slurm_job_list_is_rebuilt_and_finished_jobs_are_collected_not_run_again(tmp_path,
                                                                                        monkeypatch) -> None:
    pytest.importorskip("submitit")
    monkeypatch.setenv(CLUSTER_ENV, "local")
    specs, store = smoke_specs()[:2], ResultStore(tmp_path)
    outcomes, pending = slurm_launch(specs, store, wait=False)
    jobs = tmp_path / "_slurm" / "smoke" / "jobs"
    assert outcomes == {} and len(pending) == 2
    wait_for_results(jobs, 2)
    (tmp_path / "_slurm" / "smoke" / "runs.json").unlink()  # as an error message once suggested
    outcomes, pending = slurm_launch(specs, store, wait=True)
    assert outcomes == {spec.key: {"key": spec.key} for spec in specs} and pending == []
    assert len(list(jobs.glob("*_submitted.pkl"))) == 2  # none submitted again
    assert not list(jobs.glob("*.run.json"))  # collected: nothing left to rebuild from


def test_a_local_job_id_that_is_another_process_is_no_running_job(tmp_path, monkeypatch) -> None:
    """A pid now held by a process other than submitit's controller (here: this one) is a lost job, not pending."""
    pytest.importorskip("submitit")
    monkeypatch.setenv(CLUSTER_ENV, "local")
    (spec,), store = smoke_specs()[:1], ResultStore(tmp_path)
    state = tmp_path / "_slurm" / "smoke" / "runs.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"schema": 1, "jobs": {spec.key: {"job_id": str(os.getpid()), "tag": "t",
                                                                  "cluster": "local"}}}))
    outcomes, pending = slurm_launch([spec], store, wait=False)
    assert pending == [] and outcomes[spec.key]["status"] == "interrupted"


def test_a_local_job_controller_is_known_by_its_folder(tmp_path) -> None:
    import subprocess

    from unipt_bench.launchers.slurm import alive

    folder = tmp_path / "jobs"
    folder.mkdir()
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "submitit.local._local",
                                 str(folder)])  # the argument list of submitit's local controller
    try:
        cmdline = Path(f"/proc/{stand_in.pid}/cmdline")
        deadline = time.monotonic() + 10
        while b"submitit.local._local" not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)  # until the child has exec'd: before, /proc shows this process's arguments
        assert alive(stand_in.pid, tmp_path / "." / "jobs") and not alive(stand_in.pid, tmp_path)
    finally:
        stand_in.kill()
        stand_in.wait()
    assert not alive(stand_in.pid, folder)


def test_a_job_result_that_is_not_plain_data_is_refused_unread(tmp_path, monkeypatch) -> None:
    """The driver reads submitit's result pickles as plain data: one that names a class or function is refused."""
    import pickle

    pytest.importorskip("submitit")
    monkeypatch.setenv(CLUSTER_ENV, "local")
    (spec,), store = smoke_specs()[:1], ResultStore(tmp_path)
    jobs = tmp_path / "_slurm" / "smoke" / "jobs"
    jobs.mkdir(parents=True)
    (tmp_path / "_slurm" / "smoke" / "runs.json").write_text(json.dumps(
        {"schema": 1, "jobs": {spec.key: {"job_id": "999999999", "tag": "t", "cluster": "local"}}}))
    (jobs / "999999999_0_result.pkl").write_bytes(pickle.dumps(("success", {"path": Path("x")})))
    outcomes, pending = slurm_launch([spec], store, wait=False)
    assert pending == [] and outcomes[spec.key]["status"] == "error"
    assert "refused as a submitit result" in outcomes[spec.key]["message"]
