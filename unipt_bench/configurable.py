"""A mixin for registered dataclasses whose fields are set from a suite file (methods, tasks)."""

from __future__ import annotations

from dataclasses import MISSING, Field, fields
from typing import Any, ClassVar, TypeVar

from .errors import UserError

C = TypeVar("C", bound="Configurable")


def default_of(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


class Configurable:
    """Dataclass fields are the options; unknown keys and wrong types are UserErrors."""

    name: ClassVar[str]
    kind_label: ClassVar[str] = "entry"

    @classmethod
    def from_options(cls: type[C], options: dict[str, Any]) -> C:
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise UserError(
                f"unknown option(s) {', '.join(unknown)} for {cls.kind_label} {cls.name!r}; "
                f"valid: {', '.join(sorted(known)) or 'none'}"
            )
        values = {}
        for key, value in options.items():
            expected = type(default_of(known[key]))
            if expected is float and type(value) is int:
                value = float(value)
            if expected is not type(None) and type(value) is not expected:
                raise UserError(
                    f"{cls.kind_label} {cls.name!r}: option {key} must be a {expected.__name__}, got {value!r}"
                )
            values[key] = value
        return cls(**values)

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
