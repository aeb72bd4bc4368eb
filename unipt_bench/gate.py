"""Memory regression gates: baselines as stable JSON, comparisons per run and counter, CI outputs.

Estimates are exact and deterministic, so a gate can be tight (even 0%) and never flake. A run is
compared only with a baseline entry of the same spec digest, protocol and library versions; anything
else is reported as incomparable rather than judged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from .errors import UserError
from .memory.base import CATEGORIES
from .results import RunResult

SCHEMA = 1
DEFAULT_METRICS = ("peak_bytes", *(f"{c}_bytes" for c in CATEGORIES), "trainable_params")
# protocol fields that decide what was measured (threads and timing-only fields do not)
PROTOCOL_FIELDS = ("mode", "dtype", "amp", "optimizer", "zero_grad", "attention", "attention_dropout",
                   "batch_per_device", "gpus", "shapes", "tracked_steps", "accumulate", "micro_batches_profiled")
VERSIONED = ("torch", "transformers", "timm", "peft")


def run_metrics(result: RunResult) -> dict[str, int]:
    row = result.row()
    return {m: row[m] for m in DEFAULT_METRICS if row.get(m) is not None}


def entry(result: RunResult) -> dict[str, Any]:
    protocol = result.protocol or {}
    packages = (result.env or {}).get("packages", {})
    return {
        "digest": result.digest,
        "status": result.status,
        "counter": (result.primary_memory() or {}).get("counter"),
        "metrics": run_metrics(result),
        "protocol": {k: protocol.get(k) for k in PROTOCOL_FIELDS if k in protocol},
        "versions": {k: packages.get(k) for k in VERSIONED},
        "spec": result.run_spec.to_dict(),  # canonical: as this version writes specs
    }


def make_baseline(suite: str, results: list[RunResult]) -> dict[str, Any]:
    return {"schema": SCHEMA, "suite": suite,
            "entries": {r.key: entry(r) for r in sorted(results, key=lambda r: r.key)}}


def dump(data: Any) -> str:
    """Stable, diff-friendly JSON: sorted keys, two-space indent, one trailing newline."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def load_baseline(path: Path, suite: str | None = None) -> dict[str, Any]:
    """A baseline file, its entries checked; with `suite`, it must be that suite's (its `suite` field)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no baseline at {path}; create it with: unipt-bench gate ... --update") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a baseline file ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("entries"), dict):
        raise UserError(f"{path}: not a unipt-bench baseline (schema {SCHEMA})")
    if suite is not None and data.get("suite") != suite:
        if not isinstance(data.get("suite"), str):
            raise UserError(f"{path}: the baseline names no suite; write it again with --update")
        raise UserError(f"{path}: a baseline of suite {data['suite']!r}, not {suite!r}")
    for key, value in data["entries"].items():
        problem = entry_problem(value)
        if problem:
            raise UserError(f"{path}: entry {key!r}: {problem}")
    return data


ENTRY_FIELDS = {"digest": str, "status": str, "metrics": dict, "protocol": dict, "versions": dict}


def entry_problem(value: Any) -> str:
    """What is wrong with one baseline entry ("" when nothing): the fields `compare` reads, with their types."""
    if not isinstance(value, dict):
        return f"must be an object, got {value!r}"
    for name, kind in ENTRY_FIELDS.items():
        if not isinstance(value.get(name), kind):
            return f"{name} must be a {'string' if kind is str else 'object'}, got {value.get(name)!r}"
    if value.get("counter") is not None and not isinstance(value["counter"], str):
        return f"counter must be a string, got {value['counter']!r}"
    for metric, figure in value["metrics"].items():
        if type(figure) is not int:
            return f"metrics.{metric} must be an integer, got {figure!r}"
    return ""


@dataclass
class Change:
    run: str
    counter: str
    metric: str
    baseline: int | None
    now: int | None
    verdict: str  # ok, regression, improvement, broken, incomparable, missing, new
    reason: str = ""

    @property
    def delta(self) -> int | None:
        return None if self.baseline is None or self.now is None else self.now - self.baseline

    @property
    def relative(self) -> float | None:
        if self.delta is None or not self.baseline:
            return None
        return self.delta / self.baseline


def incomparable_reason(old: dict[str, Any], new: dict[str, Any]) -> str:
    if old["digest"] != new["digest"]:
        return "the run's spec changed"
    for key in sorted(set(old["protocol"]) | set(new["protocol"])):
        if old["protocol"].get(key) != new["protocol"].get(key):
            return f"protocol differs in {key}: {old['protocol'].get(key)!r} -> {new['protocol'].get(key)!r}"
    for key in VERSIONED:
        if old["versions"].get(key) != new["versions"].get(key):
            return f"{key} {old['versions'].get(key)} -> {new['versions'].get(key)}"
    if old["status"] != new["status"]:
        return f"status {old['status']} -> {new['status']}"
    return ""


def broken_reason(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Why a run that was `ok` in the baseline is a failure now ("" when it is still ok, or never was).

    Checked before comparability: a crash has no protocol to compare, and must never pass as incomparable.
    """
    if old["status"] != "ok" or new["status"] == "ok":
        return ""
    message = new.get("message") or "no message"
    return f"was ok, now {new['status']}: {message}"


def compare(baseline: dict[str, Any], results: list[RunResult], tolerance: float,
            metrics: tuple[str, ...] = DEFAULT_METRICS) -> list[Change]:
    """Every (run, metric) against the baseline: regression or improvement beyond `tolerance` (relative);
    a run that was ok and now is not (error, oom, interrupted, not applicable) is `broken`."""
    if not math.isfinite(tolerance) or tolerance < 0:
        raise UserError(f"the tolerance must be a finite number >= 0, got {tolerance!r}")
    now = {r.key: {**entry(r), "message": r.message} for r in results}
    changes: list[Change] = []
    for key in sorted(set(baseline["entries"]) | set(now)):
        old, new = baseline["entries"].get(key), now.get(key)
        if old is None or new is None:
            changes.append(Change(key, (old or new)["counter"] or "", "*", None, None,
                                  "new" if old is None else "missing",
                                  "not in the baseline" if old is None else "no current result"))
            continue
        reason = broken_reason(old, new)
        if reason:
            changes.append(Change(key, new["counter"] or old["counter"] or "", "*", None, None, "broken", reason))
            continue
        reason = incomparable_reason(old, new)
        if reason:
            changes.append(Change(key, new["counter"] or "", "*", None, None, "incomparable", reason))
            continue
        for metric in metrics:
            before, after = old["metrics"].get(metric), new["metrics"].get(metric)
            if before is None and after is None:
                continue
            change = Change(key, new["counter"] or "", metric, before, after, "ok")
            if before is None or after is None:
                change.verdict, change.reason = "incomparable", "metric missing on one side"
            elif after > before * (1 + tolerance) and after != before:
                change.verdict = "regression"
            elif after < before * (1 - tolerance) and after != before:
                change.verdict = "improvement"
            changes.append(change)
    return changes


def failing_verdicts(strict: bool) -> set[str]:
    """Verdicts that fail the gate: regressions, broken and missing runs, and with strict also improvements."""
    return {"regression", "broken", "missing"} | ({"improvement"} if strict else set())


def compared(changes: list[Change]) -> int:
    """How many figures were judged against the baseline (not new, missing or incomparable)."""
    return sum(c.verdict not in ("incomparable", "new", "missing") for c in changes)


def failed(changes: list[Change], strict: bool) -> bool:
    """A failing verdict, or nothing compared at all: a gate that judged no figure has passed nothing."""
    bad = failing_verdicts(strict)
    return not compared(changes) or any(c.verdict in bad for c in changes)


def human(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n:,}"


def markdown(suite: str, changes: list[Change], tolerance: float, strict: bool) -> str:
    verdicts = {v: sum(c.verdict == v for c in changes) for v in
                ("broken", "regression", "improvement", "ok", "incomparable", "missing", "new")}
    status = "FAILED" if failed(changes, strict) else "passed"
    lines = [f"### unipt-bench memory gate: {suite} {status}", "",
             f"Tolerance {tolerance:.2%}{', strict' if strict else ''}: "
             + ", ".join(f"{n} {v}" for v, n in verdicts.items() if n), ""]
    shown = [c for c in changes if c.verdict != "ok"]
    if not compared(changes):
        lines += ["No figure was compared (every run is new, missing or incomparable): the gate fails.", ""]
    elif not shown:
        lines.append("Every compared figure is within the tolerance.")
    if not shown:
        return "\n".join(lines) + "\n"
    lines += ["| run | counter | metric | baseline | now | delta | verdict |", "|---|---|---|---:|---:|---:|---|"]
    for c in shown:
        delta = "-" if c.delta is None else f"{c.delta:+,} ({c.relative:+.2%})" if c.relative is not None else f"{c.delta:+,}"
        verdict = c.verdict + (f": {c.reason}" if c.reason else "")
        lines.append(f"| {c.run} | {c.counter} | {c.metric} | {human(c.baseline)} | {human(c.now)} | {delta} | {verdict} |")
    return "\n".join(lines) + "\n"


def junit(suite: str, changes: list[Change], strict: bool) -> str:
    """JUnit XML: one test case per run; a failure per regressed, broken (or, strict, improved) run."""
    runs: dict[str, list[Change]] = {}
    for c in changes:
        runs.setdefault(c.run, []).append(c)
    bad = failing_verdicts(strict)
    root = ET.Element("testsuites")
    cases = ET.SubElement(root, "testsuite", name=f"unipt-bench gate: {suite}", errors="0")
    failures = skipped = 0
    for run, items in runs.items():
        config, _, rest = run.partition("/")
        case = ET.SubElement(cases, "testcase", classname=f"{suite}.{config}", name=rest or run)
        problems = [c for c in items if c.verdict in bad]
        skip = [c for c in items if c.verdict in ("incomparable", "new")]
        if problems:
            failures += 1
            failure = ET.SubElement(case, "failure", type="memory-regression",
                                    message=f"{len(problems)} figure(s): "
                                    + ", ".join(f"{c.metric} {c.verdict}" for c in problems))
            failure.text = "\n".join(f"{c.metric}: {human(c.baseline)} -> {human(c.now)} ({c.verdict}"
                                     f"{': ' + c.reason if c.reason else ''})" for c in problems)
        elif skip:
            skipped += 1
            ET.SubElement(case, "skipped", message=skip[0].reason or skip[0].verdict)
    if not compared(changes):  # the gate itself fails: nothing was judged
        failures += 1
        case = ET.SubElement(cases, "testcase", classname=suite, name="figures compared")
        ET.SubElement(case, "failure", type="nothing-compared", message="no figure was compared with the baseline")
    cases.set("tests", str(len(cases)))
    cases.set("failures", str(failures))
    cases.set("skipped", str(skipped))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def benchmark_json(results: list[RunResult], metrics: tuple[str, ...] = ("peak_bytes",)) -> str:
    """github-action-benchmark's customSmallerIsBetter format: [{name, unit, value, extra}]."""
    out = []
    for r in sorted(results, key=lambda r: r.key):
        values = run_metrics(r)
        for metric in metrics:
            if metric in values:
                out.append({"name": f"{r.spec['suite']}/{r.key} {metric}",
                            "unit": "bytes" if metric.endswith("bytes") else "count",
                            "value": values[metric],
                            "extra": f"counter {(r.primary_memory() or {}).get('counter')}; status {r.status}"})
    return dump(out)
