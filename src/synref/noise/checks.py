"""Checks shared by the noise models (rates, seeds, label arrays), on top of :mod:`synref.validation`."""
from __future__ import annotations

import operator
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InputError
from ..validation import as_labels, check_num_classes, check_unit_interval

__all__ = ["check_rate", "check_num_classes", "random_state", "check_label_array"]

IntArray = npt.NDArray[np.int64]


def check_rate(rate: float, name: str = "rate") -> float:
    """A rate in [0, 1] (InputError naming ``name`` otherwise)."""
    return check_unit_interval(name, rate)


def random_state(seed: int) -> np.random.RandomState:
    """``np.random.RandomState(seed)`` (the legacy generator the community files were drawn with)."""
    try:
        return np.random.RandomState(operator.index(seed))
    except (TypeError, ValueError):
        raise InputError(f"seed must be an integer in [0, 2**32), got {seed!r}") from None


def check_label_array(labels: Any, num_classes: int, what: str = "labels") -> IntArray:
    """int64 ``(N,)`` labels in ``[0, num_classes)``."""
    return as_labels(labels, num_classes, what=what)
