"""Option dataclasses that save and load as JSON (diffusers style: a config beside every output).

``to_dict()`` gives a JSON-able dict stamped with the config's class and the synref version
(``"_class"``, ``"_synref_version"``); nested configs, tuples and lists are plain JSON.
``from_dict()`` inverts it: nested configs are rebuilt from their field types, JSON lists become
tuples where the field is a tuple, derived fields (``field(init=False)``) are recomputed, and
an unknown option, a value of the wrong type (``"calibrate": "no"``, ``"folds": "4"``,
``"seed": true``: each field is checked against its type hint) or a file of another config class
is a one-line InputError. Every config checks its values in ``__post_init__``, so a bad one fails
when it is built (or loaded), not when it is first used.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, List, Type, TypeVar, Union

from .errors import InputError

C = TypeVar("C", bound="ConfigMixin")

__all__ = ["ConfigMixin", "CLASS_KEY", "VERSION_KEY", "load_config", "unknown_options", "check_value_type"]

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


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's bool too


def _type_problem(value: Any, hint: Any) -> str:
    """"" when ``value`` fits the type ``hint``, else what it should be ("an integer", ...)."""
    if hint is Any or hint is None or isinstance(hint, typing.TypeVar):
        return ""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return ""
        problems = [_type_problem(value, a) for a in args if a is not type(None)]
        return "" if "" in problems else " or ".join(problems) + (" or null" if type(None) in args else "")
    if hint is bool:
        return "" if _is_bool(value) else "true or false"
    if hint is int:
        return "" if isinstance(value, numbers.Integral) and not _is_bool(value) else "an integer"
    if hint is float:
        return "" if isinstance(value, numbers.Real) and not _is_bool(value) else "a number"
    if hint is str:
        return "" if isinstance(value, str) else "a string"
    if isinstance(hint, type) and issubclass(hint, ConfigMixin):
        return "" if isinstance(value, (hint, dict)) else f"a {hint.__name__} object"
    if origin is dict or hint is dict:
        return "" if isinstance(value, dict) else "an object"
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return "a list"
        items = [a for a in args if a is not Ellipsis]
        if origin is tuple and args and Ellipsis not in args and len(args) != len(value):
            return f"a list of {len(args)} items"
        for i, item in enumerate(value):
            inner = "" if not items else _type_problem(item, items[min(i, len(items) - 1)])
            if inner:
                return f"a list whose item {i} is {inner}"
        return ""
    return ""


def check_value_type(config_name: str, name: str, value: Any, hint: Any) -> None:
    """InputError (one line: the config, the option, what it must be, the value) when ``value``
    does not fit the type ``hint`` (bool only for bool, integers only for int -- no bool, no
    ``1.5``, no ``"4"`` --, numbers for float, ``Optional`` allows null)."""
    problem = _type_problem(value, hint)
    if problem:
        shown = json.dumps(value, default=repr) if isinstance(value, (bool, str, list, dict)) else repr(value)
        raise InputError(f"{config_name}: option {name} must be {problem}, got {shown}")


def unknown_options(cls: type, names: Iterable[str]) -> List[str]:
    """The ``names`` that are not options (dataclass fields) of the config class ``cls``, sorted."""
    return sorted(set(names) - {f.name for f in dataclasses.fields(cls)})


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
        unknown = unknown_options(cls, d)
        if unknown:
            raise InputError(f"{cls.config_name}: unknown option(s) {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        kwargs: Dict[str, Any] = {}
        for name, value in d.items():
            if not fields[name].init:
                continue  # derived: recomputed by __post_init__
            check_value_type(cls.config_name, name, value, hints.get(name, Any))
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
