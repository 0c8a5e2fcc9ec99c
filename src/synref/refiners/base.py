"""The refiner plug-in: options that round-trip, the :data:`REFINERS` registry, one front door.

A refiner turns :class:`~synref.evidence.Evidence` into a
:class:`~synref.refiners.result.RefinementResult`. Each one is a class in its own module,
registered by name, with an ``Options`` config class (alpha, threshold and its own settings)::

    @REFINERS.register("mine")
    class MyRefiner(Refiner):
        Options = MyOptions
        def refine(self, evidence, *, true_labels=None): ...

:func:`refine` is what every entry point calls (``synref refine``, the demo, compare, bench,
the cleanlab-shaped API): ``refine(evidence, "paper", threshold=0.6)``.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, FrozenSet, Optional, Type, Union

import numpy as np

from ..config import ConfigMixin
from ..errors import InputError
from ..evidence import Evidence
from ..registry import Registry
from ..validation import check_unit_interval
from .kernel import DEFAULT_ALPHA, DEFAULT_THRESHOLD
from .result import RefinementResult

__all__ = ["REFINERS", "DEFAULT_REFINER", "Refiner", "RefinerOptions", "create_refiner", "refine",
           "refiner_option_names", "refiner_used_options"]

#: the refiner ``refine(evidence)`` and ``synref refine`` use when none is named.
DEFAULT_REFINER = "posterior"

REFINERS: Registry["Refiner"] = Registry("refiner")


@dataclass
class RefinerOptions(ConfigMixin):
    """Options every refiner takes.

    Attributes:
        alpha: weight of the anchor similarity in ``alpha * sim + (1 - alpha) * pred_probs``.
        threshold: relabel when the best class's score reaches it.
        keep_scores: keep the (N, C) score matrix (and the similarity term) on the result.
        chunk_rows, num_threads: how the streaming kernel runs (the result does not depend on them).
    """

    config_name = "refiner options"

    alpha: float = DEFAULT_ALPHA
    threshold: float = DEFAULT_THRESHOLD
    keep_scores: bool = True
    chunk_rows: Optional[int] = None
    num_threads: Optional[int] = None

    def __post_init__(self) -> None:
        self.alpha = check_unit_interval("alpha", self.alpha)
        self.threshold = check_unit_interval("threshold", self.threshold)
        for name in ("chunk_rows", "num_threads"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise InputError(f"{self.config_name}: {name} must be at least 1, got {value}")


class Refiner(ABC):
    """Evidence in, refined labels out. Subclasses set ``name`` and ``Options`` and implement
    :meth:`refine`."""

    name: str = "base"
    Options: Type[RefinerOptions] = RefinerOptions
    #: options of ``Options`` this refiner takes but does not use (a command refuses them when set).
    unused_options: FrozenSet[str] = frozenset()

    def __init__(self, options: Optional[RefinerOptions] = None) -> None:
        options = options if options is not None else self.Options()
        if not isinstance(options, self.Options):
            raise InputError(f"refiner {self.name!r} takes {self.Options.__name__}, got {type(options).__name__}")
        self.options = options

    @abstractmethod
    def refine(self, evidence: Evidence, *, true_labels: Optional[np.ndarray] = None) -> RefinementResult:
        """The refined labels of ``evidence.labels``. ``true_labels`` (N,), when known, are only
        logged (per-round label accuracy); no decision may use them."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"


def refiner_option_names(name: str) -> FrozenSet[str]:
    """The options the refiner ``name`` takes (the fields of its ``Options`` class)."""
    return frozenset(f.name for f in dataclasses.fields(REFINERS.get(name).Options))  # type: ignore[attr-defined]


def refiner_used_options(name: str) -> FrozenSet[str]:
    """The options the refiner ``name`` uses: its ``Options`` fields less its ``unused_options``."""
    return refiner_option_names(name) - REFINERS.get(name).unused_options  # type: ignore[attr-defined]


def create_refiner(name: str, **options: Any) -> Refiner:
    """The registered refiner ``name`` with ``options`` checked by its ``Options`` class (an
    unknown option is an InputError naming it)."""
    cls = REFINERS.get(name)
    opts = cls.Options.from_dict(options)  # type: ignore[attr-defined]
    return cls(opts)


def refine(evidence: Evidence, refiner: Union[str, Refiner] = DEFAULT_REFINER, *,
           true_labels: Optional[np.ndarray] = None, **options: Any) -> RefinementResult:
    """Refine ``evidence`` with ``refiner`` (a :data:`REFINERS` name built with ``options``, or a
    :class:`Refiner`): the one front door to refinement."""
    if not isinstance(evidence, Evidence):
        raise InputError(f"refine needs an Evidence, got {type(evidence).__name__}")
    if isinstance(refiner, Refiner):
        if options:
            raise InputError("give options to create_refiner, not with a built refiner")
        return refiner.refine(evidence, true_labels=true_labels)
    return create_refiner(refiner, **options).refine(evidence, true_labels=true_labels)
