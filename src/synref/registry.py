"""A tiny plug-in registry (timm style): one decorator to register, one factory to create.

>>> GENERATORS = Registry("generator")
>>> @GENERATORS.register("glyph")
... def make_glyph(**kw): ...
>>> GENERATORS.create("glyph", size=32)

A plug-in may have aliases (``register("ssl", aliases=("simclr",))``): they resolve to the same
factory; :meth:`Registry.names` lists the canonical names, :meth:`Registry.choices` every name
a user may type (the CLI's choices).

A plug-in may take an argument in its name (``register("hf", argument="model")``): then
``"hf:facebook/dinov2-small"`` resolves to the ``hf`` factory called with
``model="facebook/dinov2-small"``; :meth:`Registry.split` separates the two, and the list of
:meth:`Registry.choices` shows it as ``hf:MODEL`` and accepts any ``hf:<value>`` (``in``), so an
argparse ``choices=`` takes it.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Generic, List, Optional, Sequence, Tuple, TypeVar

from .errors import InputError

T = TypeVar("T")

__all__ = ["Registry", "Choices"]


class Choices(List[str]):
    """The names a user may type (a list, shown as is); ``in`` also accepts ``<name>:<value>`` for
    a plug-in registered with an ``argument`` (what argparse's ``choices=`` checks)."""

    def __init__(self, names: Sequence[str], registry: "Registry[Any]") -> None:
        super().__init__(names)
        self._registry = registry

    def __contains__(self, name: object) -> bool:
        return name in self._registry


class Registry(Generic[T]):
    """Maps a name to a factory callable returning a ``T``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: Dict[str, Callable[..., T]] = {}
        self._aliases: Dict[str, str] = {}
        self._arguments: Dict[str, str] = {}

    def register(self, name: str, *, aliases: Sequence[str] = (),
                 argument: Optional[str] = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Register a factory under ``name`` (and ``aliases``); with ``argument``, ``name:VALUE``
        also resolves to it, :meth:`create` passing ``VALUE`` as the keyword ``argument``."""
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            for key in (name, *aliases):
                if key in self._factories or key in self._aliases or ":" in key:
                    raise ValueError(f"{self.kind} {key!r} is registered twice or contains ':'")
            self._factories[name] = factory
            for alias in aliases:
                self._aliases[alias] = name
            if argument is not None:
                self._arguments[name] = argument
            return factory

        return decorator

    def names(self) -> List[str]:
        """The canonical names, sorted."""
        return sorted(self._factories)

    def choices(self) -> Choices:
        """Every name that resolves (canonical names and aliases, ``name:ARGUMENT`` for those that
        take one), sorted; ``in`` accepts any ``name:<value>`` of those."""
        shown = [*self._factories, *self._aliases,
                 *(f"{n}:{a.upper()}" for n, a in self._arguments.items())]
        return Choices(sorted(shown), self)

    def takes_argument(self, name: str) -> bool:
        """True when the plug-in ``name`` (without a value) takes ``name:VALUE``."""
        base = self._aliases.get(name, name)
        return base in self._arguments

    def split(self, name: str) -> Tuple[str, Optional[str]]:
        """``(canonical base name, value)`` of ``name``: ``("hf", "org/model")`` for
        ``"hf:org/model"``; ``(canonical name, None)`` for a name without a value."""
        name = str(name)
        if name in self._factories or name in self._aliases:
            return self._aliases.get(name, name), None
        base, sep, value = name.partition(":")
        if sep and (base in self._factories or base in self._aliases):
            base = self._aliases.get(base, base)
            if base not in self._arguments:
                raise InputError(f"{self.kind} {base!r} takes no ':' value, got {name!r}")
            if not value.strip():
                raise InputError(f"{self.kind} {name!r}: give a value after the colon, "
                                 f"{base}:{self._arguments[base].upper()}")
            return base, value
        raise InputError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.choices())}")

    def canonical(self, name: str) -> str:
        """The canonical name of ``name`` (itself, what the alias stands for, or
        ``<canonical base>:<value>``)."""
        base, value = self.split(name)
        return base if value is None else f"{base}:{value}"

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.split(name)
        except InputError:
            return False
        return True

    def get(self, name: str) -> Callable[..., T]:
        """The factory of ``name`` (of its base for ``name:VALUE``)."""
        return self._factories[self.split(name)[0]]

    def create(self, name: str, **kwargs: Any) -> T:
        """The plug-in ``name`` built with ``kwargs`` (and, for ``name:VALUE``, its argument =
        VALUE)."""
        base, value = self.split(name)
        if value is not None:
            keyword = self._arguments[base]
            if keyword in kwargs:
                raise InputError(f"{self.kind} {name!r}: {keyword} given twice (in the name and as an option)")
            kwargs[keyword] = value
        return self._factories[base](**kwargs)
