"""Name -> factory registries (strategies, schedulers, backends). Errors list the valid names."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from attntune.model.config import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A small ordered name -> object mapping whose lookup error names every valid choice."""

    def __init__(self, kind: str, presets: Mapping[str, object] | None = None):
        """``presets``: further names valid where this kind is named, each standing for something
        that is not an entry here (strategy ``bohb`` is tpe + hyperband); errors list them too."""
        self.kind = kind
        self.presets = presets if presets is not None else {}
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj
        return obj

    def get(self, name: str, key: str | None = None) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            valid = [*self._items, *(n for n in self.presets if n not in self._items)]
            raise ConfigError(f"{key or self.kind}: {name!r} is not a known {self.kind} (valid: {', '.join(valid)})") from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
