"""PETL methods; importing this package registers every method."""

from __future__ import annotations

from . import adapter, bitfit, full, lora, lst, partial, prompt, unipt  # noqa: F401  (registration)
from .base import METHODS, Method, register_method

__all__ = ["METHODS", "Method", "create_method", "register_method"]


def create_method(name: str, options: dict | None = None) -> Method:
    return METHODS.get(name).from_options(options or {})
