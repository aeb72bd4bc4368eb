"""One small registry class; methods, backbones, tasks and trackers register where they are defined."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries (classes or factories); `register` is a decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._families: dict[str, Callable[[str], T]] = {}  # "prefix:" -> resolver of the rest of a name
        self._resolved: dict[str, T] = {}

    def family(self, prefix: str, resolver: Callable[[str], T]) -> None:
        """Names `prefix<rest>` resolve through `resolver(rest)` (which raises UserError for an unknown rest):
        entries made on demand, e.g. one per tuner type of an installed library."""
        self._families[prefix] = resolver

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def named(self, name: str) -> Callable[[T], T]:
        """Class decorator: register the class under `name` and set its `name` attribute."""

        def add(cls: T) -> T:
            cls.name = name  # type: ignore[attr-defined]
            return self.register(name)(cls)

        return add

    def get(self, name: str) -> T:
        prefix = next((p for p in self._families if name.startswith(p)), None)
        if prefix is not None:
            if name not in self._resolved:
                self._resolved[name] = self._families[prefix](name[len(prefix):])
            return self._resolved[name]
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(sorted(self._entries))}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[T]:
        """The registered entries and the family entries resolved so far."""
        return [*(self._entries[n] for n in self.names()), *self._resolved.values()]

    def __contains__(self, name: object) -> bool:
        """A family name counts as known; `get` says why when its rest is not."""
        return name in self._entries or (isinstance(name, str) and any(name.startswith(p) for p in self._families))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
