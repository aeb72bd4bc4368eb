"""Run results: a versioned JSON schema, one file per run (never overwritten), and the store that holds them."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import RunSpec
from .errors import UserError
from .memory.base import CATEGORIES

SCHEMA_VERSION = 1
STATUSES = ("ok", "oom", "not_applicable", "error", "interrupted")
FINAL_STATUSES = {"ok", "oom", "not_applicable"}  # re-running a suite skips these (same spec digest)
PRIMARY_COUNTER = {"estimate": "memtracker_fake", "cpu": "memtracker_real", "cuda": "cuda_allocator"}


@dataclass
class RunResult:
    spec: dict[str, Any]
    status: str
    digest: str
    params: dict[str, int] | None = None
    memory: dict[str, Any] | None = None  # counter name -> its figures, in bytes
    timing: dict[str, Any] | None = None
    protocol: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None  # cuda runs: estimate vs measured peak and their ratio
    env: dict[str, Any] = field(default_factory=dict)
    message: str | None = None  # why a run is not ok, in one line
    detail: str | None = None  # e.g. the traceback of an error, for the curious
    started: str = ""
    finished: str = ""
    schema: int = SCHEMA_VERSION

    @property
    def run_spec(self) -> RunSpec:
        return RunSpec.from_dict(self.spec)

    @property
    def key(self) -> str:
        return self.run_spec.key

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        """Parse and check a stored result; any malformation raises ValueError."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if data.get("schema") != SCHEMA_VERSION:
                raise ValueError(f"result schema {data.get('schema')} is not {SCHEMA_VERSION}")
            result = cls(**data)
            result.run_spec  # noqa: B018  (the spec must parse too)
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"malformed result: {exc!r}") from None
        return result

    def primary_memory(self) -> dict[str, Any] | None:
        """The counter that gives this mode's peak_bytes (MemTracker for estimate/cpu, the allocator for cuda)."""
        if not self.memory:
            return None
        return self.memory.get(PRIMARY_COUNTER[self.spec["mode"]])

    def row(self) -> dict[str, Any]:
        """One flat row for tables and CSV."""
        spec = self.spec
        primary = self.primary_memory() or {}
        row: dict[str, Any] = {
            "suite": spec["suite"],
            "config": spec["config"],
            "towers": " + ".join(
                f"{t['backbone']}{'' if t['tuned'] else ' (trained)'}" for t in spec["towers"]
            ),
            "method": spec["label"],
            "mode": spec["mode"],
            "status": self.status,
            "batch": spec["batch"],
            "gpus": spec["gpus"],
        }
        row.update(dict.fromkeys(("trainable_params", "trainable_method_params", "trainable_head_params",
                                  "total_params")))
        row.update(self.params or {})
        row["peak_bytes"] = primary.get("peak_bytes")
        row["counter"] = primary.get("counter")
        categories = primary.get("by_category", {})
        for cat in CATEGORIES:
            row[f"{cat}_bytes"] = categories.get(cat)
        row["step_seconds"] = (self.timing or {}).get("step_seconds")
        metrics = self.metrics or {}
        selection = metrics.get("selection")
        row["metric"] = selection
        row["test_score"] = (metrics.get("test") or {}).get(selection) if selection else None
        row["baseline_score"] = (metrics.get("baseline") or {}).get(selection) if selection else None
        row["message"] = self.message
        return row


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stamp(time: str) -> str:
    """A `now()` time as it goes into file names: 20261129T161500.123456Z."""
    return time.replace(":", "").replace("-", "")


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".partial")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results and reports are meant to be shared
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultStore:
    """<root>/<suite>/<config>/<label>.<mode>.<UTC time>.json; the newest file of a run is its result."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def run_file(self, spec: RunSpec, suffix: str, folder: str | None = None) -> Path:
        """<root>[/<folder>]/<suite>/<config>/<label>.<mode>.<suffix>: every file of a run is named alike."""
        base = self.root / folder if folder else self.root
        return base / spec.suite / spec.config / f"{spec.label}.{spec.mode}.{suffix}"

    def write(self, result: RunResult) -> Path:
        path = self.run_file(result.run_spec, f"{stamp(result.finished)}.json")
        while path.exists():  # never overwrite, even within one microsecond
            path = path.with_name(path.stem + "_.json")
        write_atomic(path, result.to_json())
        return path

    def snapshot_path(self, spec: RunSpec) -> Path:
        """Where a run's allocator snapshot goes: beside its result, named like it."""
        path = self.run_file(spec, f"{stamp(now())}.snapshot.pickle")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def checkpoint_dir(self, spec: RunSpec) -> Path:
        """A training run's checkpoints: stable across re-runs of the same spec, so they resume."""
        return self.run_file(spec, f"{spec.digest()}.ckpt")

    def fit_path(self, spec: RunSpec) -> Path:
        """Where a batch fit of a run is recorded: under _fits/, named like its results."""
        return self.run_file(spec, f"{stamp(now())}.json", folder="_fits")

    def all(self, suite: str) -> list[tuple[Path, RunResult]]:
        folder = self.root / suite
        found = []
        for path in sorted(folder.glob("*/*.json")):
            if path.name.startswith("."):  # a temporary file of an interrupted write
                continue
            try:
                found.append((path, RunResult.from_json(path.read_text(encoding="utf-8"))))
            except (ValueError, OSError, UnicodeDecodeError) as exc:
                raise UserError(f"unreadable result file {path}: {exc}") from None
        return found

    def latest(self, suite: str) -> dict[str, RunResult]:
        """Newest result per run key (config/label/mode)."""
        newest: dict[str, RunResult] = {}
        for _, result in self.all(suite):
            key = result.key
            if key not in newest or result.finished >= newest[key].finished:
                newest[key] = result
        return newest

    def suites(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and any(p.glob("*/*.json")))

    def is_complete(self, spec: RunSpec, latest: dict[str, RunResult]) -> bool:
        done = latest.get(spec.key)
        return done is not None and done.status in FINAL_STATUSES and done.digest == spec.digest()
