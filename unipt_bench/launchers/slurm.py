"""The Slurm launcher: submitit job arrays, one job per run; the command waits (--wait) or returns and collects
on its next call.

Submitted job ids are kept in a small state file under the store (`_slurm/<suite>/<kind>s.json`, written
atomically): the next `run` with the same options writes the results of finished jobs, reports the ones
still pending and submits only runs that have neither a final result nor a job. A cancelled, timed-out or
preempted job becomes an `interrupted` result, a failed one an `error`. The store (which holds submitit's
job folder) must be on a filesystem the compute nodes share, as submitit requires.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..atomic import write_atomic
from ..config import RunSpec
from ..errors import UserError
from ..runner import INTERRUPTED
from . import Events, LaunchSettings, Work, in_worker, need

DEFAULT_TIME = "4:00:00"  # submitit's own default is 5 minutes: too short for most runs
POLL_SECONDS = {"slurm": 15.0, "local": 0.5}  # how often --wait looks at the jobs (sacct is not free)
WAITING = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "COMPLETING", "CONFIGURING", "UNKNOWN", ""}
STOPPED = ("CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")  # -> interrupted
SLURM_KEY = re.compile(r"^[a-z][a-z0-9_-]*$")
EXCEPTION_LINE = re.compile(r"^\w[\w.]*(Error|Exception|Interrupt)\b")  # the last line of a job's traceback


def minutes(text: str) -> int:
    """A Slurm time limit in whole minutes: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise UserError(f"--time {text!r}: expected minutes, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = (int(g) if g else None for g in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = ((days * 24 + a) * 60 + (b or 0)) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = (a * 60 + b) * 60 + c
    else:  # MM[:SS]
        seconds = a * 60 + (b or 0)
    if seconds <= 0:
        raise UserError(f"--time {text!r}: must be more than 0")
    return -(-seconds // 60)


def sbatch_args(pairs: tuple[str, ...]) -> dict[str, str]:
    """--slurm-arg key=value (repeatable) -> {key: value}, each an `#SBATCH --key=value` line."""
    found = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not SLURM_KEY.match(key) or not value:
            raise UserError(f"--slurm-arg {pair!r}: expected key=value with an sbatch option as key, e.g. account=abc")
        found[key] = value
    return found


def check(settings: LaunchSettings) -> None:
    need("submitit", "slurm")
    minutes(settings.time or DEFAULT_TIME)
    sbatch_args(settings.slurm_args)
    if settings.cluster == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--launcher slurm: sbatch is not on PATH; run the command where Slurm jobs can be submitted")


def describe(settings: LaunchSettings, specs: list[RunSpec]) -> str:
    where = f"partition {settings.partition}" if settings.partition else "the default partition"
    if settings.cluster != "slurm":
        where = f"submitit's {settings.cluster} executor"
    return f"one Slurm job per run on {where}" + ("" if settings.wait else "; collect with the same command")


class JobState:
    """{run key: {"job_id", "tag", "cluster"}} of submitted jobs not yet collected, in one atomic file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.jobs: dict[str, dict[str, str]] = {}
        if path.is_file():
            try:
                self.jobs = dict(json.loads(path.read_text(encoding="utf-8"))["jobs"])
            except (ValueError, KeyError, TypeError) as exc:
                raise UserError(f"{path}: unreadable Slurm job list ({exc}); delete it to submit again") from None

    def save(self) -> None:
        write_atomic(self.path, json.dumps({"schema": 1, "jobs": self.jobs}, indent=2, sort_keys=True))


def reconnect(submitit: Any, folder: Path, job_id: str, cluster: str) -> Any:
    job_class = submitit.SlurmJob if cluster == "slurm" else submitit.LocalJob
    return job_class(folder=folder, job_id=job_id)


def alive(pid: int) -> bool:
    """Whether a local job's controller process still runs (not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def outcome(job: Any, cluster: str) -> tuple[str, Any]:
    """("done", the work's dict) | ("waiting", state) | (status, message) for a job that returned nothing.
    The state is read before the result file, so a job that ends in between is never taken for lost."""
    if cluster == "slurm":
        state = str(job.state).split()[0] if job.state else ""
    else:
        state = job.get_info()["jobState"]
        if state == "NO PROCESS AND NO RESULT":  # submitted by an earlier command
            state = "RUNNING" if alive(int(job.job_id)) else "INTERRUPTED"
    if job.paths.result_pickle.exists():
        try:
            return "done", job.result()
        except Exception as exc:  # noqa: BLE001  (the job's own failure, with its traceback in its log)
            raised = [ln.strip() for ln in str(exc).splitlines() if EXCEPTION_LINE.match(ln.strip())]
            return "error", f"the Slurm job {job.job_id} failed: {raised[-1] if raised else type(exc).__name__}"
    if state in WAITING:
        return "waiting", state or "PENDING"
    if state.startswith(STOPPED) or state == "INTERRUPTED":
        return "interrupted", f"the Slurm job {job.job_id} ended without a result ({state}); running again resumes it"
    return "error", f"the Slurm job {job.job_id} ended without a result ({state}); see its log in {job.paths.folder}"


def cancel(job: Any, cluster: str) -> None:
    if cluster == "slurm":
        job.cancel(check=False)
    else:
        try:
            os.kill(int(job.job_id), signal.SIGINT)  # the local controller passes it on to its task
        except ProcessLookupError:
            pass


def launch(work: Work, specs: list[RunSpec], store: Any, settings: LaunchSettings, events: Events) -> list[str]:
    submitit = need("submitit", "slurm")
    if not specs:
        return []
    cluster = settings.cluster
    base = Path(store.root) / "_slurm" / specs[0].suite
    folder = base / "jobs"
    state = JobState(base / f"{work.kind}s.json")
    jobs: dict[str, tuple[RunSpec, Any]] = {}  # run key -> (spec, submitit job)
    submit: list[RunSpec] = []
    for spec in specs:
        entry = state.jobs.get(spec.key)
        if entry and entry.get("tag") == work.tag(spec) and entry.get("cluster") == cluster:
            jobs[spec.key] = spec, reconnect(submitit, folder, entry["job_id"], cluster)
            events.on_start(spec)
        else:
            submit.append(spec)

    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(name="unipt-bench", timeout_min=minutes(settings.time or DEFAULT_TIME),
                               tasks_per_node=1, slurm_partition=settings.partition,
                               slurm_additional_parameters=sbatch_args(settings.slurm_args) or None,
                               slurm_array_parallelism=settings.jobs)
    groups: dict[int, list[RunSpec]] = defaultdict(list)
    for spec in submit:  # one array per GPU count: an array's jobs share their resources
        groups[settings.gpus_per_node if settings.gpus_per_node is not None
               else (spec.gpus if spec.mode == "cuda" else 0)].append(spec)
    for gpus, group in groups.items():
        executor.update_parameters(gpus_per_node=gpus)
        try:
            with executor.batch():
                submitted = [executor.submit(in_worker, *work.remote(spec)) for spec in group]
        except Exception as exc:  # noqa: BLE001  (sbatch's refusal, in one line)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"--launcher slurm: submitting {len(group)} jobs failed: {first}") from None
        for spec, job in zip(group, submitted, strict=True):
            jobs[spec.key] = spec, job
            state.jobs[spec.key] = {"job_id": str(job.job_id), "tag": work.tag(spec), "cluster": cluster}
            events.on_start(spec)
        state.save()

    waiting: dict[str, str] = {}  # run key -> the job's state, for jobs still pending or running
    try:
        while True:
            if cluster == "slurm" and jobs:
                submitit.SlurmJob.watcher.update()  # one sacct call for every job
            for key, (spec, job) in list(jobs.items()):
                status, payload = outcome(job, cluster)
                if status == "waiting":
                    waiting[key] = payload
                    continue
                events.on_done(spec, payload if status == "done" else events.lost(spec, status, payload))
                del jobs[key]
                state.jobs.pop(key, None)
                state.save()
            if not jobs or not settings.wait:
                break
            time.sleep(POLL_SECONDS[cluster])
    except KeyboardInterrupt:
        for key, (spec, job) in jobs.items():
            cancel(job, cluster)
            events.on_done(spec, events.lost(spec, "interrupted", INTERRUPTED))
            state.jobs.pop(key, None)
        state.save()
        raise
    return [f"{key}: job {job.job_id} {waiting[key].lower()}" for key, (_, job) in jobs.items()]
