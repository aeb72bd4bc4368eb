"""What kind of run a stored result is (training or profile; full recipe or shortened by command-line
overrides). A training result and a profile result of the same configuration, label and mode coexist in one
store, as do a shortened run and a full one (their run keys differ: `RunSpec.key`), and a report shows each in
separate tables, never one in place of the other.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..results import RunResult


def job_of(result: RunResult) -> str:
    """"train" for a result that trained on real data, "profile" for one that profiled the configured shapes."""
    return "train" if result.spec.get("train") else "profile"


def overrides_of(result: RunResult) -> dict[str, Any]:
    return dict(result.spec.get("overrides") or {})


def overrides_text(overrides: dict[str, Any]) -> str:
    """"shortened: batch 8, max_steps 4" as a badge says it ("" when there are none); "changed" when the step
    budget is the recipe's and only e.g. the batch differs."""
    if not overrides:
        return ""
    word = "shortened" if "max_steps" in overrides else "changed"
    return f"{word}: " + ", ".join(f"{k} {v}" for k, v in sorted(overrides.items()))


def overrides_slug(overrides: dict[str, Any]) -> str:
    """The overrides as part of an HTML id: "max_steps4-batch8" (letters, digits, _ . - only)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "", "-".join(f"{k}{v}" for k, v in sorted(overrides.items())))


def kind_key(result: RunResult) -> str:
    """Results of one kind may be compared with each other: same job, same overrides."""
    return json.dumps([job_of(result), overrides_of(result)], sort_keys=True)

