"""Option dataclasses that save and load as JSON (diffusers style: a config beside every output).

``to_dict()`` gives a JSON-able dict stamped with the config's class and the synref version
(``"_class"``, ``"_synref_version"``); nested configs, tuples and lists are plain JSON.
``from_dict()`` inverts it: nested configs are rebuilt from their field types, JSON lists become
tuples where the field is a tuple, derived fields (``field(init=False)``) are recomputed, and
an unknown option or a file of another config class is a one-line InputError. Every config
checks its values in ``__post_init__``, so a bad one fails when it is built (or loaded), not
when it is first used.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Dict, Type, TypeVar, Union

from .errors import InputError

C = TypeVar("C", bound="ConfigMixin")

__all__ = ["ConfigMixin", "CLASS_KEY", "VERSION_KEY", "load_config"]

CLASS_KEY = "_class"
VERSION_KEY = "_synref_version"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _config_class(annotation: Any) -> Any:
    """The ConfigMixin class inside ``annotation`` (``X`` or ``Optional[X]``), else None."""
    candidates = typing.get_args(annotation) if typing.get_origin(annotation) is Union else (annotation,)
    for cand in candidates:
        if isinstance(cand, type) and issubclass(cand, ConfigMixin):
            return cand
    return None


def _is_tuple(annotation: Any) -> bool:
    candidates = typing.get_args(annotation) if typing.get_origin(annotation) is Union else (annotation,)
    return any(typing.get_origin(c) is tuple or c is tuple for c in candidates)


class ConfigMixin:
    """Mix into a dataclass: ``to_dict`` / ``from_dict`` / ``save`` / ``load`` (see module doc)."""

    #: how error messages name this config ("train config: ...").
    config_name = "config"

    def to_dict(self) -> Dict[str, Any]:
        from . import __version__

        d = _jsonable(dataclasses.asdict(self))  # type: ignore[call-overload]
        return {CLASS_KEY: type(self).__name__, VERSION_KEY: __version__, **d}

    @classmethod
    def from_dict(cls: Type[C], d: Dict[str, Any]) -> C:
        if not isinstance(d, dict):
            raise InputError(f"{cls.config_name}: expected a JSON object, got {type(d).__name__}")
        d = dict(d)
        stamped = d.pop(CLASS_KEY, None)
        d.pop(VERSION_KEY, None)
        if stamped is not None and stamped != cls.__name__:
            raise InputError(f"{cls.config_name}: this is a {stamped} config, not a {cls.__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise InputError(f"{cls.config_name}: unknown option(s) {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        kwargs: Dict[str, Any] = {}
        for name, value in d.items():
            if not fields[name].init:
                continue  # derived: recomputed by __post_init__
            sub = _config_class(hints.get(name))
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value)
            elif isinstance(value, list) and _is_tuple(hints.get(name)):
                value = tuple(value)
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise InputError(f"{cls.config_name}: {exc}") from None

    def save(self, path: Union[str, Path]) -> None:
        """Write ``to_dict()`` as JSON, atomically."""
        from .io import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls: Type[C], path: Union[str, Path]) -> C:
        """The config saved at ``path`` (a one-line InputError naming the file when it cannot be
        read or is not this config)."""
        return cls.from_dict(read_config_file(path))


def read_config_file(path: Union[str, Path]) -> Dict[str, Any]:
    from .io import read_json_object

    return read_json_object(path, "config file")


def load_config(path: Union[str, Path], cls: Type[C]) -> C:
    """``cls.load(path)``, with errors naming ``path``."""
    try:
        return cls.load(path)
    except InputError as exc:
        message = str(exc)
        raise InputError(message if str(path) in message else f"{path}: {message}") from None
