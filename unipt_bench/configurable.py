"""A mixin for registered dataclasses whose fields are set from a suite file (methods, tasks)."""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from .errors import UserError

C = TypeVar("C", bound="Configurable")


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric option: bounds that are inclusive (at_least/at_most) or not (above/below)."""

    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None

    def admits(self, value: float) -> bool:
        """False for NaN and infinities too: no option means anything with them."""
        return (math.isfinite(value)
                and (self.at_least is None or value >= self.at_least) and (self.above is None or value > self.above)
                and (self.at_most is None or value <= self.at_most) and (self.below is None or value < self.below))

    def __str__(self) -> str:
        parts = [f"{sign} {bound:g}" for sign, bound in ((">=", self.at_least), (">", self.above),
                                                         ("<=", self.at_most), ("<", self.below)) if bound is not None]
        return " and ".join(parts) or "finite"


def bounded(default: Any, **bounds: float) -> Any:
    """A dataclass field with a default and its valid range (Range's keywords), checked when a suite is read.

    Subclasses that only change the default may redeclare the field plainly: the range is inherited.
    """
    return field(default=default, metadata={"range": Range(**bounds)})


def range_of(cls: type, name: str) -> Range | None:
    """The declared range of option `name`, looked up through the class hierarchy."""
    for klass in cls.__mro__:
        declared = getattr(klass, "__dataclass_fields__", {}).get(name)
        if declared is not None and "range" in declared.metadata:
            return declared.metadata["range"]
    return None


class OptionError(UserError):
    """A bad option value; `key` is the option, so a suite reader can point at its line."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


def check_range(cls: type, key: str, value: Any, what: str) -> None:
    """Numbers (and each number of a list) must lie in the option's declared range."""
    declared = range_of(cls, key)
    if declared is None:
        return
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, int | float) and not isinstance(item, bool) and not declared.admits(item):
            raise OptionError(f"{what}: option {key} must be {declared}, got {item!r}", key)


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
            raise OptionError(
                f"unknown option(s) {', '.join(unknown)} for {cls.kind_label} {cls.name!r}; "
                f"valid: {', '.join(sorted(known)) or 'none'}", unknown[0]
            )
        values = {}
        for key, value in options.items():
            expected = type(default_of(known[key]))
            if expected is float and type(value) is int:
                value = float(value)
            if expected is not type(None) and type(value) is not expected:
                raise OptionError(
                    f"{cls.kind_label} {cls.name!r}: option {key} must be a {expected.__name__}, got {value!r}", key
                )
            check_range(cls, key, value, f"{cls.kind_label} {cls.name!r}")
            values[key] = value
        return cls(**values)

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


def describe_options(cls: type) -> list[str]:
    """One line per option of a Configurable: name, type, default and valid range (for `unipt-bench list`)."""
    lines = []
    for f in fields(cls):  # type: ignore[arg-type]
        declared = range_of(cls, f.name)
        valid = f"  valid: {declared}" if declared else ""
        lines.append(f"{f.name} ({f.type}) = {default_of(f)!r}{valid}")
    return lines
