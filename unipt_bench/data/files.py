"""Reading dataset files: every problem is a one-line UserError naming the file and what was expected.

JSON values are located by their path in the document, e.g. `images[3].sentences[0].raw`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError

KINDS = {dict: "an object", list: "a list", str: "a string", int: "an integer"}


def expect(ok: object, path: Path, message: str) -> None:
    if not ok:
        raise UserError(f"{path}: {message}")


def brief(value: Any) -> str:
    """A JSON value as written in the file, cut to 40 characters."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise UserError(f"missing {path} ({what})")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: {what} must be UTF-8 text (byte {exc.start} is not)") from None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({what}): {exc.strerror or exc}") from None


def read_json(path: Path, what: str) -> Any:
    text = read_text(path, what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UserError(f"{path}: {what} is not valid JSON ({exc})") from None
    except RecursionError:
        raise UserError(f"{path}: {what} is nested too deeply to read") from None


def npy_shape_problem(path: Path) -> str:
    """Why a .npy file's header does not describe an array ("" when it does): numpy's own loader turns a
    negative or huge dimension into OverflowError, TypeError or worse, depending on the version."""
    import numpy as np

    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:
                return f".npy format version {version[0]}.{version[1]} (this reads 1.0 and 2.0)"
            shape, _, _ = read_header[version](f)
    except (OSError, ValueError, EOFError, SyntaxError, TypeError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not all(type(n) is int and 0 <= n < 2**63 for n in shape):
        return f"its header gives shape {str(shape)[:60]}"
    return ""


def load_npy(path: Path, expected: str, mmap_mode: str | None = "r") -> Any:
    """A .npy array (memory-mapped by default): any file numpy cannot take is one UserError naming it."""
    import numpy as np

    problem = npy_shape_problem(path)
    if not problem:
        try:
            return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
        except (OSError, ValueError, EOFError, OverflowError, TypeError, MemoryError) as exc:
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    raise UserError(f"{path}: not a NumPy .npy array ({problem}); {expected}")


def typed(value: Any, kind: type, path: Path, where: str) -> Any:
    """`value` (found at `where` in the file), which must be a `kind`; a list must not be empty."""
    expect(isinstance(value, kind), path, f"{where or 'the top level'} must be {KINDS[kind]}, got {brief(value)}")
    expect(kind is not list or value, path, f"{where} is empty")
    return value


def field(obj: Any, key: str, kind: type, path: Path, where: str = "") -> Any:
    """obj[key], where obj (found at `where` in the file) must be an object with a `kind` under `key`."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, kind) and (value or kind is not list):  # the common case, checked fast
        return value
    typed(obj, dict, path, where)
    expect(key in obj, path, f'{where or "the top level"} has no "{key}"')
    return typed(value, kind, path, f"{where}.{key}" if where else key)


def check_images(paths: Sequence[Path], listed_in: Path, sample: int = 20) -> None:
    """The first `sample` images must exist (all of them are read, and checked, when first used)."""
    missing = next((p for p in paths[:sample] if not p.is_file()), None)
    if missing is not None:
        raise UserError(f"image {missing} listed in {listed_in} is missing")
