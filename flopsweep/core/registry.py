"""One registry per kind of option: names to entries, a name registered twice refused, an unknown name a
:class:`~flopsweep.core.errors.ConfigError` that names the config key and lists the known ones."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from flopsweep.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """The entries of one kind of option, keyed by name, in the order they were added. ``key`` is the config key
    that chooses among them (``optimizer.name``): errors name it."""

    def __init__(self, key: str):
        self.key = key
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.key}: {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator: ``@REGISTRY.register("name")`` adds what it decorates under ``name``."""
        return lambda entry: self.add(name, entry)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(self.key, name, f"must be one of {', '.join(self._entries)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())
