"""PETL methods; importing this package registers every method (each module of the package is imported)."""

from __future__ import annotations

from ..registry_imports import import_all
from .base import METHODS, Method, register_method

import_all(__name__, __path__)

__all__ = ["METHODS", "Method", "create_method", "register_method"]


def create_method(name: str, options: dict | None = None) -> Method:
    return METHODS.get(name).from_options(options or {})
