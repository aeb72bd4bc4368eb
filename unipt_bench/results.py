"""Run results: a versioned JSON schema, one file per run (never overwritten), and the store that holds them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .atomic import atomic_file
from .config import NAME_RE, RunSpec, check_name
from .memory.base import REPORTED_CATEGORIES
from .result_schema import MAX_DEPTH, Malformed, check_result, check_spec, nested_deeper_than, read_bounded

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
        """Parse and check a stored result; any malformation raises ValueError (result_schema.Malformed)."""
        try:
            data = json.loads(text)
        except RecursionError:
            raise Malformed(f"nested more than {MAX_DEPTH} levels deep") from None
        if not isinstance(data, dict):
            raise Malformed("not a JSON object")
        if nested_deeper_than(data, MAX_DEPTH):
            raise Malformed(f"nested more than {MAX_DEPTH} levels deep")
        if data.get("schema") != SCHEMA_VERSION:
            raise Malformed(f"result schema {str(data.get('schema'))[:20]} is not {SCHEMA_VERSION}")
        check_spec(data.get("spec"))
        try:
            result = cls(**data)
            result.run_spec  # noqa: B018  (the spec must parse too)
        except (TypeError, KeyError, AttributeError) as exc:
            raise Malformed(f"malformed result: {exc!r}") from None
        result.check()
        return result

    def check(self) -> None:
        """Field types and values, so that a malformed file fails here and not deep inside a report."""
        check_result(self)

    @property
    def display_order(self) -> tuple[int, str]:
        """Where the run is shown: its position in the suite file, then its mode."""
        return self.spec["order"], self.spec["mode"]

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
            # memory options (memory_options.py) set for this run, e.g. "checkpointing=blocks"; "" for none
            "memory_options": ", ".join(f"{k}={v}" for k, v in sorted(spec.get("memory", {}).items())),
        }
        row.update(dict.fromkeys(("trainable_params", "trainable_method_params", "trainable_head_params",
                                  "total_params")))
        row.update(self.params or {})
        row["peak_bytes"] = primary.get("peak_bytes")
        row["counter"] = primary.get("counter")
        categories = primary.get("by_category", {})
        for cat in REPORTED_CATEGORIES:
            row[f"{cat}_bytes"] = categories.get(cat)
        row.update(predicted_gpu_memory(primary))
        row["step_seconds"] = (self.timing or {}).get("step_seconds")
        metrics = self.metrics or {}
        selection = metrics.get("selection")
        row["metric"] = selection
        row["test_score"] = (metrics.get("test") or {}).get(selection) if selection else None
        row["baseline_score"] = (metrics.get("baseline") or {}).get(selection) if selection else None
        row["message"] = self.message
        return row


def predicted_gpu_memory(figures: dict[str, Any]) -> dict[str, int | None]:
    """What a GPU would show for a run, from its replayed caching allocator (docs/allocator.md): reserved
    memory and device memory (reserved + CUDA context + cuDNN bound); unverified on a GPU."""
    replayed = figures.get("allocator_replay") or {}
    return {"predicted_reserved_bytes": (replayed.get("allocator") or {}).get("max_reserved"),
            "predicted_device_bytes": (replayed.get("device_memory") or {}).get("total")}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stamp(time: str) -> str:
    """A `now()` time as it goes into file names: 20261129T161500.123456Z."""
    return time.replace(":", "").replace("-", "")


class ResultStore:
    """<root>/<suite>/<config>/<label>.<mode>.<UTC time>.json; the newest file of a run is its result."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.skipped: list[tuple[Path, str]] = []  # result files that could not be read, and why (each once)

    def run_file(self, spec: RunSpec, suffix: str, folder: str | None = None) -> Path:
        """<root>[/<folder>]/<suite>/<config>/<label>.<mode>.<suffix>: every file of a run is named alike."""
        base = self.root / folder if folder else self.root
        for value, what in ((spec.suite, "suite"), (spec.config, "config"), (spec.label, "label")):
            check_name(value, what)  # names become paths: never outside the store
        return base / spec.suite / spec.config / f"{spec.label}.{spec.mode}.{suffix}"

    def write(self, result: RunResult) -> Path:
        """Store a result under a new name: created exclusively, so two writers with the same time stamp
        both keep their result (the second takes the next free name)."""
        base = self.run_file(result.run_spec, stamp(result.finished))
        text = result.to_json()
        for attempt in range(1000):
            path = base.with_name(f"{base.name}{'_' * attempt}.json")
            try:
                with atomic_file(path, exclusive=True) as f:
                    f.write(text)
                return path
            except FileExistsError:
                continue
        raise OSError(f"no free result file name beside {base}")

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
        """Every readable result of a suite. Unreadable or malformed files are skipped, each recorded in
        `self.skipped` as (path, reason), so one bad file never hides the others."""
        folder = self.root / check_name(suite, "suite")
        found = []
        for path in sorted(folder.glob("*/*.json")):
            if path.name.startswith("."):  # a temporary file of an interrupted write
                continue
            try:
                found.append((path, RunResult.from_json(read_bounded(path))))
            except (ValueError, OSError) as exc:  # UnicodeDecodeError is a ValueError
                if path not in {skipped for skipped, _ in self.skipped}:
                    self.skipped.append((path, exc.strerror if isinstance(exc, OSError) and exc.strerror
                                         else str(exc)))
        return found

    def latest(self, suite: str) -> dict[str, RunResult]:
        """Newest result per run key (config/label/mode, and job and overrides where they apply: RunSpec.key)."""
        newest: dict[str, RunResult] = {}
        for _, result in self.all(suite):
            key = result.key
            if key not in newest or result.finished >= newest[key].finished:
                newest[key] = result
        return newest

    def suites(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and NAME_RE.fullmatch(p.name) and any(p.glob("*/*.json")))

    def is_complete(self, spec: RunSpec, latest: dict[str, RunResult]) -> bool:
        done = latest.get(spec.key)
        return done is not None and done.status in FINAL_STATUSES and done.digest == spec.digest()
