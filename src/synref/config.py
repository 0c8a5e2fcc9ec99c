"""JSON round-trip for the option dataclasses (diffusers style: configs saved next to outputs)."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Type, TypeVar

from .errors import InputError

C = TypeVar("C", bound="ConfigMixin")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class ConfigMixin:
    """``to_dict()`` gives a JSON-able dict (tuples as lists, nested configs as dicts);
    ``from_dict()`` inverts it and names unknown options. Mix into a dataclass."""

    #: how error messages name this config ("train config: ...").
    config_name = "config"

    def to_dict(self) -> Dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: Type[C], d: Dict[str, Any]) -> C:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"{cls.config_name}: unknown option(s) {', '.join(unknown)}")
        return cls(**d)
