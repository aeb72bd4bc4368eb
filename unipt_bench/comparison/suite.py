"""The suite a comparison runs, as TOML text: `compare --save-suite` writes it, and `run` of it gives the same
figures at the asked shape byte for byte (the same file is read into the same specs by the same reader)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from ..config import RunSpec
from .request import SHAPE_FLAGS, Request

SUITE_NAME = "compare"


def toml_value(value: Any) -> str:
    """A TOML literal for a string, bool, int or float (JSON's string escapes are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def inline_table(table: dict[str, Any]) -> str:
    return "{ " + ", ".join(f"{key} = {toml_value(value)}" for key, value in table.items()) + " }"


def tower_tables(request: Request) -> list[dict[str, Any]]:
    """The towers as the suite writes them: the user's (tuned, with the asked shape keys), then any partner."""
    axes = request.axes()  # every length axis written out, asked or default: each run's shape is explicit
    tables = []
    for tower in [*request.towers, *([request.partner] if request.partner else [])]:
        table = dict(tower) if isinstance(tower, dict) else {"name": tower.name, "backbone": tower.backbone}
        table.update({key: axes[f"{table['name']}.{key}"] for key in SHAPE_FLAGS if f"{table['name']}.{key}" in axes})
        tables.append(table)
    return tables


def task_options(request: Request) -> dict[str, Any]:
    """Classification's side methods project to the model's own width; other tasks keep their defaults."""
    if request.task == "classification":
        return {"hidden_dim": request.towers[0].width}
    return {}


def suite_text(request: Request) -> str:
    """The comparison as a suite file: one configuration, the asked batch and shape, one run per method."""
    shape = ", ".join(f"{SHAPE_FLAGS[k]} {v}" for k, v in request.shape.items())
    lines = [
        f"name = {toml_value(SUITE_NAME)}",
        f"description = {toml_value(f'compare: {request.model} on {request.task}, batch {request.batch}' + (f', {shape}' if shape else ''))}",
        f"task = {toml_value(request.task)}",
    ]
    options = task_options(request)
    if options:
        lines.append(f"task_options = {inline_table(options)}")
    lines += [
        "steps = 2",
        "",
        "[[configs]]",
        f"name = {toml_value(request.slug())}",
        f"batch = {request.batch}",
        *[f"{name} = {toml_value(value)}" for name, value in request.memory.items()],
        "towers = [",
        *[f"    {inline_table(t)}," for t in tower_tables(request)],
        "]",
        "methods = [" + ", ".join(toml_value(m) for m in request.methods) + "]",
        "",
    ]
    return "\n".join(lines)


def suite_specs(text: str, mode: str) -> list[RunSpec]:
    """The runs of a suite text, read by the suite reader exactly as `run --suite` reads the saved file."""
    from ..suite_file import SuiteReader

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{SUITE_NAME}.toml"
        path.write_text(text, encoding="utf-8")
        suite = SuiteReader(path).read()
    return suite.with_mode(mode)
