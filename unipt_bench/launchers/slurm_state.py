"""The Slurm launcher's job list: which submitted job runs which run, kept so the next call collects it.

The list is `_slurm/<suite>/<kind>s.json` ({"schema": 1, "jobs": {run key: {"job_id", "tag", "cluster"}}}),
written atomically after each change. Each job also gets a note of its own beside submitit's files in the
job folder (`jobs/<job id>.<kind>.json`, the same entry plus its key), removed once the job is collected:
a list that is lost or deleted is rebuilt from those notes, so finished jobs are collected, not run again.
Both are validated when read; anything else is one line naming the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..atomic import write_atomic
from ..errors import UserError

SCHEMA = 1
MAX_BYTES = 64 << 20  # a job list holds a few hundred bytes per job
CLUSTERS = ("slurm", "local")
JOB_ID = {"slurm": re.compile(r"\d+(_\d+)?"), "local": re.compile(r"\d+")}  # Slurm (array) job id; local: a pid


def entry_problem(entry: Any) -> str | None:
    """Why a job entry is not {"job_id", "tag", "cluster"} of strings with a job id of its cluster, or None."""
    if not isinstance(entry, dict):
        return f"a job entry must be an object, not {type(entry).__name__}"
    fields = {"job_id", "tag", "cluster"}
    if not fields <= set(entry) or not all(isinstance(entry[name], str) for name in fields):
        return f"a job entry needs the strings {', '.join(sorted(fields))}; got {json.dumps(entry)[:80]}"
    if entry["cluster"] not in CLUSTERS:
        return f"cluster {entry['cluster']!r}: expected {' or '.join(CLUSTERS)}"
    if not JOB_ID[entry["cluster"]].fullmatch(entry["job_id"]):
        return f"job id {entry['job_id']!r} is not a {entry['cluster']} job id"
    return None


class JobState:
    """{run key: {"job_id", "tag", "cluster"}} of submitted jobs not yet collected, in one atomic file, with a
    note per job in `folder` (submitit's job folder) to rebuild it from."""

    def __init__(self, path: Path, folder: Path, kind: str) -> None:
        self.path, self.folder, self.kind = path, folder, kind
        self.jobs: dict[str, dict[str, str]] = self.read() if path.exists() else self.recover()

    def read(self) -> dict[str, dict[str, str]]:
        def bad(reason: str) -> UserError:
            return UserError(f"{self.path}: not a Slurm job list ({reason}); delete it and the next call rebuilds "
                             f"it from the job notes in {self.folder}")

        if not self.path.is_file() or self.path.stat().st_size > MAX_BYTES:  # a FIFO would hang, a device not end
            raise bad(f"not a regular file of at most {MAX_BYTES >> 20} MiB")
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise bad(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("jobs"), dict):
            raise bad(f'expected {{"schema": {SCHEMA}, "jobs": {{run key: job}}}}')
        for key, entry in data["jobs"].items():
            if (problem := entry_problem(entry)) is not None:
                raise bad(f"{key!r}: {problem}")
        return data["jobs"]

    def note(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.{self.kind}.json"

    def recover(self) -> dict[str, dict[str, str]]:
        """The jobs of this kind whose notes are still in the job folder (not yet collected), newest per run."""
        jobs: dict[str, dict[str, str]] = {}
        notes = self.folder.glob(f"*.{self.kind}.json") if self.folder.is_dir() else []
        for note in sorted(notes, key=lambda p: (p.stat().st_mtime_ns, p.name)):
            try:
                data = json.loads(note.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError) as exc:
                raise UserError(f"{note}: unreadable Slurm job note ({type(exc).__name__}); delete it to submit "
                                "its run again") from None
            problem = entry_problem(data) or (None if isinstance(data.get("key"), str) else "no run key")
            if problem is None and note.name != self.note(data["job_id"]).name:
                problem = f"job id {data['job_id']} does not match the file name"
            if problem is not None:
                raise UserError(f"{note}: not a Slurm job note ({problem}); delete it to submit its run again")
            jobs[data["key"]] = {name: data[name] for name in ("job_id", "tag", "cluster")}
        return jobs

    def add(self, key: str, entry: dict[str, str]) -> None:
        self.collected(key)  # a job of an earlier tag or cluster, replaced by this one
        write_atomic(self.note(entry["job_id"]), json.dumps({"key": key, **entry}, sort_keys=True))
        self.jobs[key] = entry

    def collected(self, key: str) -> None:
        """Forget a job whose outcome is stored: its entry and its note."""
        entry = self.jobs.pop(key, None)
        if entry is not None:
            self.note(entry["job_id"]).unlink(missing_ok=True)

    def save(self) -> None:
        write_atomic(self.path, json.dumps({"schema": SCHEMA, "jobs": self.jobs}, indent=2, sort_keys=True))
