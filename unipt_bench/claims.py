"""Published memory claims, checked: one TOML record per claim in a claims folder, measured as a ratio of two runs.

A record names its source, table, setting, metric and claimed value, and the suite configuration that
reproduces the setting (a built-in suite or a suite file beside the record, a config and two method labels).
The measured value is numerator / denominator of the metric's bytes; a claim is reproduced when the measured
value lies within 15% of the claimed one.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RunSpec
from .errors import NotApplicable, UserError

TOLERANCE = 0.15  # relative: |measured / claimed - 1| <= 15% reproduces a claim
METRICS = {  # what a claim's ratio divides: the mode's peak, or the activation bytes at that peak
    "peak": lambda memory: memory["peak_bytes"],
    "activations": lambda memory: memory["by_category"]["activations"],
}
FIELDS = {"source": str, "table": str, "setting": str, "claim": str, "metric": str, "claimed": float,
          "suite": str, "config": str, "numerator": str, "denominator": str}


@dataclass(frozen=True)
class Claim:
    """One published memory claim and the runs that reproduce its setting."""

    name: str  # the record's file stem
    path: Path
    source: str
    table: str
    setting: str
    claim: str  # the claim in the source's words, shortened
    metric: str
    claimed: float  # numerator / denominator as published
    suite: str  # a built-in suite name, or a suite file relative to the record
    config: str
    numerator: str  # method labels in that config
    denominator: str

    def suite_path(self) -> str:
        beside = self.path.parent / self.suite
        return str(beside) if beside.suffix == ".toml" else self.suite

    def specs(self, mode: str) -> tuple[RunSpec, RunSpec]:
        """The two runs of the ratio, in `mode` (read from the suite: options checked as for `run`)."""
        from .suite_file import load_suite

        runs = {(s.config, s.label): s for s in load_suite(self.suite_path()).with_mode(mode)}
        picked = []
        for label in (self.numerator, self.denominator):
            if (self.config, label) not in runs:
                raise UserError(f"claim {self.name}: suite {self.suite} has no run {self.config}/{label}")
            picked.append(runs[self.config, label])
        return picked[0], picked[1]


def builtin_claims_dir() -> Path:
    """The built-in claim records: installed as unipt_bench/claims_data, or the checkout's top-level claims/."""
    package = Path(__file__).resolve().parent
    for folder in (package / "claims_data", package.parent / "claims"):
        if folder.is_dir():
            return folder
    raise UserError("the built-in claims folder is missing from this installation")


def read_claim(path: Path) -> Claim:
    """One record; a missing or mistyped field is a UserError naming the file and the field."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"claim {path}: cannot read: {exc}") from None
    for key, kind in FIELDS.items():
        value = data.get(key)
        if kind is float and type(value) is int:
            data[key] = float(value)
        elif not isinstance(value, kind):
            raise UserError(f"claim {path}: field {key} must be a {kind.__name__}, got {value!r}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise UserError(f"claim {path}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(FIELDS)}")
    if data["metric"] not in METRICS:
        raise UserError(f"claim {path}: metric must be one of {', '.join(METRICS)}, got {data['metric']!r}")
    if data["claimed"] <= 0:
        raise UserError(f"claim {path}: claimed must be a positive ratio, got {data['claimed']}")
    return Claim(path.stem, path, **{k: data[k] for k in FIELDS})


def read_claims(folder: Path) -> list[Claim]:
    """Every `*.toml` record directly in `folder` (suite files for the records live in its subfolders)."""
    if not folder.is_dir():
        raise UserError(f"no claims folder {folder}")
    claims = [read_claim(p) for p in sorted(folder.glob("*.toml"))]
    if not claims:
        raise UserError(f"no claim records (*.toml) in {folder}")
    return claims


def verdict(claimed: float, measured: float) -> str:
    """"reproduced" within 15% of the claimed value, else "not reproduced"."""
    return "reproduced" if abs(measured / claimed - 1) <= TOLERANCE else "not reproduced"


def check_claims(claims: list[Claim], mode: str,
                 measure: Callable[[RunSpec], dict[str, Any]]) -> list[dict[str, Any]]:
    """Measure every claim (each distinct run once: `measure(spec)` returns the primary counter's figures)."""
    measured: dict[str, dict[str, Any]] = {}
    rows = []
    for claim in claims:
        row = {"claim": claim.name, "source": claim.source, "table": claim.table, "setting": claim.setting,
               "metric": f"{claim.metric}, {claim.numerator} / {claim.denominator}", "claimed": claim.claimed}
        try:
            figures = []
            for spec in claim.specs(mode):
                if spec.digest() not in measured:
                    measured[spec.digest()] = measure(spec)
                figures.append(METRICS[claim.metric](measured[spec.digest()]))
        except NotApplicable as exc:  # the setting cannot be run here: no verdict, the reason instead
            rows.append({**row, "measured": f"not measured ({exc})", "verdict": "not measured"})
            continue
        value = figures[0] / figures[1]
        rows.append({**row, "measured": value, "verdict": verdict(claim.claimed, value)})
    return rows
