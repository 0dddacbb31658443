"""Classes chosen by name from configuration: eviction policies, memory monitors, attention
backends, SScheduler targets. A new implementation is one class plus one ``@registry.register``."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

C = TypeVar("C", bound=type)


class Registry(Generic[C]):
    """Name -> class, in registration order. ``register`` is a class decorator that also sets
    ``cls.name``; registering a name twice is an error (the same class again is allowed only with
    ``allow_same_class``, for modules that may be executed twice)."""

    def __init__(self, kind: str, allow_same_class: bool = False) -> None:
        self.kind = kind
        self.allow_same_class = allow_same_class
        self._classes: dict[str, C] = {}

    def register(self, name: str) -> Callable[[C], C]:
        def add(cls: C) -> C:
            known = self._classes.get(name)
            if known is not None and not (self.allow_same_class and known is cls):
                raise ValueError(f"{self.kind} {name!r} is already registered")
            cls.name = name
            self._classes[name] = cls
            return cls

        return add

    def names(self) -> list[str]:
        return list(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def lookup(self, name: str, sort_names: bool = False) -> C:
        """The class registered as ``name``; ``ValueError`` listing the known names otherwise."""
        try:
            return self._classes[name]
        except (KeyError, TypeError):
            names = sorted(self._classes) if sort_names else self.names()
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(names)}") from None
