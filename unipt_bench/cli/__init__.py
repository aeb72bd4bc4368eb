"""The `unipt-bench` command line: one module per command; torch is imported only by commands that need it."""

from __future__ import annotations

from ..registry_imports import import_all
from .app import cli, main

import_all(__name__, __path__)  # each command module adds its command to `cli`

__all__ = ["cli", "main"]
