"""A tiny plug-in registry (timm style): one decorator to register, one factory to create.

>>> GENERATORS = Registry("generator")
>>> @GENERATORS.register("glyph")
... def make_glyph(**kw): ...
>>> GENERATORS.create("glyph", size=32)

A plug-in may have aliases (``register("ssl", aliases=("simclr",))``): they resolve to the same
factory; :meth:`Registry.names` lists the canonical names, :meth:`Registry.choices` every name
a user may type (the CLI's choices).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Generic, List, Sequence, TypeVar

from .errors import InputError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Maps a name to a factory callable returning a ``T``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: Dict[str, Callable[..., T]] = {}
        self._aliases: Dict[str, str] = {}

    def register(self, name: str, *, aliases: Sequence[str] = ()) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            for key in (name, *aliases):
                if key in self._factories or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._factories[name] = factory
            for alias in aliases:
                self._aliases[alias] = name
            return factory

        return decorator

    def names(self) -> List[str]:
        """The canonical names, sorted."""
        return sorted(self._factories)

    def choices(self) -> List[str]:
        """Every name that resolves (canonical names and aliases), sorted."""
        return sorted([*self._factories, *self._aliases])

    def canonical(self, name: str) -> str:
        """The canonical name of ``name`` (itself, or what the alias stands for)."""
        if name in self._factories:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise InputError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.choices())}")

    def __contains__(self, name: object) -> bool:
        return name in self._factories or name in self._aliases

    def get(self, name: str) -> Callable[..., T]:
        return self._factories[self.canonical(name)]

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)
