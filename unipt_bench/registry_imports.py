"""Import every module of a package, so that the registrations they hold take effect.

A method, backbone family or tracker is one file with a decorator: nothing lists it elsewhere.
"""

from __future__ import annotations

import importlib
import pkgutil


def import_all(package: str, path: list[str]) -> None:
    """Import each module of `package` (its `__path__`), in name order."""
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if not info.name.startswith("_"):  # never __main__ (or private helpers)
            importlib.import_module(f"{package}.{info.name}")
