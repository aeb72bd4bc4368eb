"""The Slurm launcher: submitit job arrays, one job per run; the command waits (--wait) or returns and collects
on its next call.

Submitted job ids are kept in a small state file under the store (`_slurm/<suite>/<kind>s.json`, written
atomically, rebuilt from per-job notes when lost: `slurm_state`): the next `run` with the same options writes the results of finished jobs, reports the ones
still pending and submits only runs that have neither a final result nor a job. A cancelled, timed-out or
preempted job becomes an `interrupted` result, a failed one an `error`. The store (which holds submitit's
job folder) must be on a filesystem the compute nodes share, as submitit requires. A job's result is
submitit's pickle, read with the plain-data unpickler: a result that names any class or function is refused.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..config import RunSpec
from ..data.safe_pickle import PlainUnpickler
from ..errors import UserError
from ..runner import INTERRUPTED
from . import Events, LaunchSettings, Work, in_worker, need
from .slurm_state import JobState

DEFAULT_TIME = "4:00:00"  # submitit's own default is 5 minutes: too short for most runs
POLL_SECONDS = {"slurm": 15.0, "local": 0.5}  # how often --wait looks at the jobs (sacct is not free)
WAITING = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "COMPLETING", "CONFIGURING", "UNKNOWN", ""}
STOPPED = ("CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")  # -> interrupted
SLURM_KEY = re.compile(r"[a-z][a-z0-9_-]*")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # a newline would end an #SBATCH line and start a shell command
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
        if not sep or not SLURM_KEY.fullmatch(key) or not value:
            raise UserError(f"--slurm-arg {pair!r}: expected key=value with an sbatch option as key, e.g. account=abc")
        no_control(f"--slurm-arg {key}", value)
        found[key] = value
    return found


def no_control(option: str, value: str) -> None:
    """Values go into the batch script as `#SBATCH --key=value` lines: control characters are refused."""
    if CONTROL.search(value):
        raise UserError(f"{option} {value!r}: control characters (newlines, tabs, ...) are not allowed in an "
                        "sbatch option")


def check(settings: LaunchSettings) -> None:
    need("submitit", "slurm")
    minutes(settings.time or DEFAULT_TIME)
    sbatch_args(settings.slurm_args)
    if settings.partition is not None:
        no_control("--partition", settings.partition)
    if settings.cluster == "slurm":
        for command in ("sbatch", "srun"):  # srun runs each job's task inside its allocation
            if shutil.which(command) is None:
                raise UserError(f"--launcher slurm: {command} is not on PATH; run the command where Slurm jobs can "
                                "be submitted")


def describe(settings: LaunchSettings, specs: list[RunSpec]) -> str:
    where = f"partition {settings.partition}" if settings.partition else "the default partition"
    if settings.cluster != "slurm":
        where = f"submitit's {settings.cluster} executor"
    return f"one Slurm job per run on {where}" + ("" if settings.wait else "; collect with the same command")


def reconnect(submitit: Any, folder: Path, job_id: str, cluster: str) -> Any:
    job_class = submitit.SlurmJob if cluster == "slurm" else submitit.LocalJob
    return job_class(folder=folder, job_id=job_id)


def alive(pid: int, folder: Path) -> bool:
    """Whether a local job's controller still runs: the process `pid` is alive (not a zombie) and is submitit's
    local controller for `folder` (a pid the system has since given to another process is not)."""
    proc = Path(f"/proc/{pid}")
    try:
        running = (proc / "stat").read_text().split(")")[-1].split()[0] != "Z"
        argv = [os.fsdecode(arg) for arg in (proc / "cmdline").read_bytes().split(b"\0") if arg]
    except (OSError, IndexError):
        return False
    # python -m submitit.local._local <folder>
    return running and "submitit.local._local" in argv and Path(argv[-1]).resolve() == folder.resolve()


def read_result(path: Path) -> tuple[str, Any]:
    """submitit's result pickle, ("success", the work's dict) or ("error", the job's traceback), read as plain
    data; anything else (a pickle naming code, another structure) is refused with a UserError."""
    try:
        value = PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as exc:  # noqa: BLE001  (a refused global, a truncated or foreign file: one line)
        raise UserError(f"{path}: refused as a submitit result ({type(exc).__name__}: {exc})") from None
    if not (isinstance(value, tuple) and len(value) == 2 and value[0] in ("success", "error")
            and isinstance(value[1], dict if value[0] == "success" else str)):
        raise UserError(f"{path}: refused as a submitit result (not (\"success\", dict) or (\"error\", text))")
    return value


def outcome(job: Any, cluster: str) -> tuple[str, Any]:
    """("done", the work's dict) | ("waiting", state) | (status, message) for a job that returned nothing.
    The state is read before the result file, so a job that ends in between is never taken for lost."""
    if cluster == "slurm":
        state = str(job.state).split()[0] if job.state else ""
    else:
        state = job.get_info()["jobState"]
        if state == "NO PROCESS AND NO RESULT":  # submitted by an earlier command
            state = "RUNNING" if alive(int(job.job_id), job.paths.folder) else "INTERRUPTED"
    if job.paths.result_pickle.exists():
        try:
            kind, value = read_result(job.paths.result_pickle)
        except UserError as exc:
            return "error", str(exc)
        if kind == "success":
            return "done", value
        raised = [ln.strip() for ln in value.splitlines() if EXCEPTION_LINE.match(ln.strip())]  # its traceback
        return "error", f"the Slurm job {job.job_id} failed: {raised[-1] if raised else 'see its log'}"
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
    state = JobState(base / f"{work.kind}s.json", folder, work.kind)
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
            state.add(spec.key, {"job_id": str(job.job_id), "tag": work.tag(spec), "cluster": cluster})
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
                state.collected(key)
                state.save()
            if not jobs or not settings.wait:
                break
            time.sleep(POLL_SECONDS[cluster])
    except KeyboardInterrupt:
        for key, (spec, job) in jobs.items():
            cancel(job, cluster)
            events.on_done(spec, events.lost(spec, "interrupted", INTERRUPTED))
            state.collected(key)
        state.save()
        raise
    return [f"{key}: job {job.job_id} {waiting[key].lower()}" for key, (_, job) in jobs.items()]
