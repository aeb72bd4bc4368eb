"""Published memory claims, checked: one TOML record per claim in a claims folder, measured as a ratio of two runs.

A record names its source, table, setting, metric and claimed value, and the suite configuration that
reproduces the setting (a built-in suite or a suite file beside the record, a config and two method labels).
The measured value is numerator / denominator of the metric's bytes; a claim is reproduced when the measured
value lies within 15% of the claimed one. `check_claims` measures the runs; `stored_claims` reads them from a
result store instead (the report and the leaderboard), so rendering never runs anything.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import RunSpec
from .errors import NotApplicable, UserError

if TYPE_CHECKING:
    from .results import RunResult

TOLERANCE = 0.15  # relative: |measured / claimed - 1| <= 15% reproduces a claim
METRICS = {  # what a claim's ratio divides: the mode's peak, or the activation bytes at that peak
    "peak": lambda memory: memory["peak_bytes"],
    "activations": lambda memory: memory["by_category"]["activations"],
}
MODES = ("estimate", "cpu", "cuda")  # a claim's stored runs are looked up in each
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

    def suite_name(self) -> str:
        """The name its runs are stored under: a built-in suite's, or the `name` a suite file declares."""
        path = self.suite_path()
        if not path.endswith(".toml"):
            return path
        try:
            name = tomllib.loads(Path(path).read_text()).get("name")
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UserError(f"claim {self.name}: cannot read suite {self.suite}: {exc}") from None
        if not isinstance(name, str):
            raise UserError(f"claim {self.name}: suite {self.suite} declares no name")
        return name

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


def claim_row(claim: Claim) -> dict[str, Any]:
    """What a claim's row shows before anything is measured."""
    return {"claim": claim.name, "source": claim.source, "table": claim.table, "setting": claim.setting,
            "metric": f"{claim.metric}, {claim.numerator} / {claim.denominator}", "claimed": claim.claimed,
            "suite": claim.suite_name(), "config": claim.config}


def check_claims(claims: list[Claim], mode: str,
                 measure: Callable[[RunSpec], dict[str, Any]]) -> list[dict[str, Any]]:
    """Measure every claim (each distinct run once: `measure(spec)` returns the primary counter's figures)."""
    measured: dict[str, dict[str, Any]] = {}
    rows = []
    for claim in claims:
        row = {**claim_row(claim), "mode": mode}
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


def stored_claims(claims: list[Claim], latest: Callable[[str], dict[str, RunResult]]) -> list[dict[str, Any]]:
    """Each claim's verdict from stored results, one row per mode whose two profile runs are both in the store
    (`latest(suite)`: ResultStore.latest, newest result per run key); nothing is run. A claim with no such
    pair is one row "not measured", its measured value None and a note saying which runs are missing or why
    they did not count (not ok, memory options set: the claim's setting has none)."""
    rows = []
    for claim in claims:
        found = latest(claim.suite_name())
        row, notes, measured = claim_row(claim), [], []
        for mode in MODES:
            pair = [found.get(f"{claim.config}/{label}/{mode}") for label in (claim.numerator, claim.denominator)]
            if pair == [None, None]:
                continue
            value, note = stored_ratio(claim, pair, mode)
            if value is None:
                notes.append(note)
            else:
                measured.append({**row, "mode": mode, "measured": value, "verdict": verdict(claim.claimed, value)})
        if measured:
            rows += measured
            continue
        note = "; ".join(notes) or (f"runs {claim.config}/{claim.numerator} and {claim.config}/{claim.denominator} "
                                    f"of suite {row['suite']} are not in the store")
        rows.append({**row, "mode": None, "measured": None, "verdict": "not measured", "note": note})
    return rows


def stored_ratio(claim: Claim, pair: list[RunResult | None], mode: str) -> tuple[float | None, str]:
    """numerator / denominator of the claim's metric from two stored results, or None and why not."""
    figures = []
    for label, result in zip((claim.numerator, claim.denominator), pair, strict=True):
        if result is None:
            return None, f"{mode}: no run {claim.config}/{label}"
        if result.status != "ok":
            return None, f"{mode}: {label} is {result.status.replace('_', ' ')}" + (
                f" ({result.message})" if result.message else "")
        if result.spec.get("memory"):
            return None, f"{mode}: {label} ran with memory options, which the claim's setting does not set"
        try:
            figures.append(METRICS[claim.metric](result.primary_memory() or {}))
        except KeyError:
            return None, f"{mode}: {label} stored no {claim.metric} figure"
    if not figures[1]:
        return None, f"{mode}: {claim.denominator} stored 0 bytes"
    return figures[0] / figures[1], ""


def store_claims(store_latest: Callable[[str], dict[str, RunResult]]) -> list[dict[str, Any]]:
    """stored_claims over the built-in records, each suite read from the store once; [] where this installation
    has no claims folder (a report renders without it)."""
    try:
        claims = read_claims(builtin_claims_dir())
    except UserError:
        return []
    cache: dict[str, dict[str, RunResult]] = {}
    return stored_claims(claims, lambda suite: cache.setdefault(suite, store_latest(suite)))
