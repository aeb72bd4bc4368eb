"""What a stored result file must hold before the store hands it out: its size, nesting and field types.

Results are read by every command (`results`, `report`, `run`, `gate`); a file a user or a crash left
malformed must fail here, as one reason, and never deep inside a table or a report. Each check below
names the field it refuses.
"""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .config import MODES, name_problem

MAX_BYTES = 16 << 20  # a training result with its history is tens of KiB; anything far larger is not one
MAX_DEPTH = 32  # the deepest field a result holds is memory.<counter>.by_phase.<phase>.by_category.<category>
CLOCK_SLACK = timedelta(minutes=10)  # a finish time later than this ahead of the clock would hide newer results


class Malformed(ValueError):
    """A result file that is not a result: the reason, in one line."""


def expect(ok: object, what: str) -> None:
    if not ok:
        raise Malformed(f"malformed result: {what}")


def read_bounded(path: Path) -> str:
    """A result file's text: a regular file (never a FIFO that blocks or a device that never ends) of at most
    MAX_BYTES."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise Malformed("not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # replaced by a FIFO since the stat: still no wait
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise Malformed("not a regular file")
        if info.st_size > MAX_BYTES:
            raise Malformed(f"{info.st_size:,} bytes, more than a result holds ({MAX_BYTES:,})")
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise Malformed(f"more than {MAX_BYTES:,} bytes, more than a result holds")
    return data.decode("utf-8")


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests more than `limit` levels (checked without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return False


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_count(value: object) -> bool:
    return type(value) is int


def optional(check: Any, value: object) -> bool:
    return value is None or check(value)


def check_time(value: object, what: str) -> datetime:
    expect(isinstance(value, str), f"{what} must be a time string")
    try:
        time = datetime.fromisoformat(value)  # type: ignore[arg-type]
    except ValueError:
        raise Malformed(f"malformed result: {what} {str(value)[:40]!r} is not a UTC time like "
                        "2026-01-01T10:00:00.000000Z") from None
    return time if time.tzinfo else time.replace(tzinfo=UTC)


SPEC_TYPES = {  # field -> (check, what it must be); fields to_dict leaves out when empty may be missing
    "suite": (lambda v: not name_problem(v), "a name"), "config": (lambda v: not name_problem(v), "a name"),
    "label": (lambda v: not name_problem(v), "a name"), "method": (lambda v: isinstance(v, str), "a string"),
    "task": (lambda v: isinstance(v, str), "a string"), "mode": (lambda v: v in MODES, f"one of {', '.join(MODES)}"),
    "method_options": (lambda v: isinstance(v, dict), "an object"),
    "task_options": (lambda v: isinstance(v, dict), "an object"),
    "towers": (lambda v: isinstance(v, list), "a list"),
    "batch": (lambda v: is_count(v) and v >= 1, "a positive integer"),
    "gpus": (lambda v: is_count(v) and v >= 1, "a positive integer"),
    "steps": (lambda v: is_count(v) and v >= 1, "a positive integer"),
    "seed": (lambda v: is_count(v) and v >= 0, "a non-negative integer"),
    "order": (lambda v: is_count(v) and v >= 0, "a non-negative integer"),
    "accumulate": (lambda v: is_count(v) and v >= 1, "a positive integer"),
    "attention": (lambda v: isinstance(v, str), "a string"),
    "train": (lambda v: optional(lambda t: isinstance(t, dict), v), "an object or null"),
    "title": (lambda v: isinstance(v, str), "a string"),
    "paper": (lambda v: optional(lambda p: isinstance(p, str), v), "a string or null"),
    "overrides": (lambda v: isinstance(v, dict), "an object"),
    "ddp": (lambda v: isinstance(v, dict), "an object"),
}
SPEC_OPTIONAL = {"overrides", "ddp", "accumulate", "attention", "train", "title", "paper"}


def check_spec(spec: object) -> None:
    expect(isinstance(spec, dict), "spec must be an object")
    assert isinstance(spec, dict)
    for key, (check, kind) in SPEC_TYPES.items():
        if key not in spec:
            expect(key in SPEC_OPTIONAL, f"spec has no {key!r}")
            continue
        expect(check(spec[key]), f"spec.{key} must be {kind}, got {str(spec[key])[:40]!r}")
    for i, tower in enumerate(spec["towers"]):
        expect(isinstance(tower, dict), f"spec.towers[{i}] must be an object")
        for key in ("name", "backbone"):
            expect(isinstance(tower.get(key), str), f"spec.towers[{i}].{key} must be a string")
        expect(isinstance(tower.get("tuned", True), bool), f"spec.towers[{i}].tuned must be true or false")
        shape = tower.get("shape", {})
        expect(isinstance(shape, dict) and all(map(is_count, shape.values())),
               f"spec.towers[{i}].shape must map names to integers")


def check_counts(table: object, what: str) -> None:
    """An object of byte counts (or nulls), e.g. by_category."""
    expect(isinstance(table, dict), f"{what} must be an object")
    assert isinstance(table, dict)
    for key, value in table.items():
        expect(optional(is_number, value), f"{what}.{key} must be a number")


def check_memory(memory: dict[str, Any]) -> None:
    for counter, figures in memory.items():
        where = f"memory.{counter}"
        expect(isinstance(figures, dict), f"{where} must be an object")
        expect(optional(is_count, figures.get("peak_bytes")), f"{where}.peak_bytes must be an integer")
        check_counts(figures.get("by_category", {}), f"{where}.by_category")
        for group in ("by_phase", "by_owner"):
            table = figures.get(group, {})
            expect(isinstance(table, dict), f"{where}.{group} must be an object")
            for name, inner in table.items():
                if group == "by_phase":
                    expect(isinstance(inner, dict), f"{where}.by_phase.{name} must be an object")
                    expect(optional(is_count, inner.get("peak_bytes")), f"{where}.by_phase.{name}.peak_bytes "
                                                                          "must be an integer")
                    check_counts(inner.get("by_category", {}), f"{where}.by_phase.{name}.by_category")
                else:
                    check_counts(inner, f"{where}.by_owner.{name}")
        steps = figures.get("step_peak_bytes", [])
        expect(isinstance(steps, list) and all(optional(is_count, s) for s in steps),
               f"{where}.step_peak_bytes must be a list of integers")


def check_metrics(metrics: dict[str, Any]) -> None:
    """The figures tables format: test scores per split, the baseline's selected score, best, final loss."""
    selection = metrics.get("selection")
    expect(optional(lambda s: isinstance(s, str), selection), "metrics.selection must be a string")
    splits = metrics.get("splits") or {}
    expect(isinstance(splits, dict), "metrics.splits must be an object")
    for name, scores in [("test", metrics.get("test") or {}), *((f"splits.{k}", v) for k, v in splits.items())]:
        check_counts(scores, f"metrics.{name}")
    baseline = metrics.get("baseline") or {}
    expect(isinstance(baseline, dict), "metrics.baseline must be an object")
    if selection is not None:
        expect(optional(is_number, baseline.get(selection)), f"metrics.baseline.{selection} must be a number")
    best = metrics.get("best")
    expect(optional(lambda b: isinstance(b, dict) and is_number(b.get("score")), best),
           "metrics.best must be an object with a numeric score")
    expect(optional(is_number, metrics.get("final_loss")), "metrics.final_loss must be a number")


def check_result(result: Any, now: datetime | None = None) -> None:
    """Every field a table, report or gate reads, with the type it is read as; `finished` no later than
    the clock allows (a result from the future would hide every newer one of its run)."""
    from .results import PRIMARY_COUNTER, STATUSES

    check_spec(result.spec)
    expect(result.status in STATUSES, f"status {result.status!r} is not one of {', '.join(STATUSES)}")
    expect(isinstance(result.digest, str), "digest must be a string")
    for name in ("params", "memory", "timing", "protocol", "metrics", "calibration"):
        expect(optional(lambda v: isinstance(v, dict), getattr(result, name)), f"{name} must be an object or null")
    expect(isinstance(result.env, dict), "env must be an object")
    for name in ("message", "detail"):
        expect(optional(lambda v: isinstance(v, str), getattr(result, name)), f"{name} must be a string")
    expect(isinstance(result.started, str), "started must be a string")
    finished = check_time(result.finished, "finished")
    expect(finished <= (now or datetime.now(UTC)) + CLOCK_SLACK,
           f"finished {result.finished} is in the future (it would hide newer results)")
    for key, value in (result.params or {}).items():
        expect(optional(is_count, value), f"params.{key} must be an integer")
    check_memory(result.memory or {})
    for key, value in (result.timing or {}).items():
        if key.endswith("seconds"):
            expect(optional(is_number, value), f"timing.{key} must be a number")
    check_metrics(result.metrics or {})
    for key, value in (result.calibration or {}).items():
        if key.endswith(("bytes", "ratio")):
            expect(optional(is_number, value), f"calibration.{key} must be a number")
    expect(result.spec["mode"] in PRIMARY_COUNTER, f"spec.mode {result.spec['mode']!r} is not a mode")
