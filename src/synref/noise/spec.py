"""Noise settings as strings, and the registry of noise kinds they name.

A setting chains kinds with rates: ``"pmd-0.35+u-0.3"`` is 30 % uniform noise on top of 35 % PMD
(``a`` = asymmetric). :data:`NOISE_MODELS` maps each kind (and its short alias) to a function
``apply(labels, rate, *, num_classes, seed, probs=None, pmd_type=1, class_map=None)`` ->
``(noisy labels, description)``; PMD needs ``probs``, the softmax of a model trained on the clean
labels (:func:`synref.experiments.recipes.inject_noise` trains it).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..registry import Registry
from .pmd import calibrate_pmd_factor, pmd_noise
from .transitions import hybrid_noise

__all__ = ["NOISE_MODELS", "NoiseModel", "parse_noise_spec", "format_noise_spec"]

NoiseModel = Callable[..., Tuple[np.ndarray, Dict[str, Any]]]
NOISE_MODELS: Registry[Tuple[np.ndarray, Dict[str, Any]]] = Registry("noise kind")
_SHORT: Dict[str, str] = {}


def _register(name: str, short: str) -> Callable[[NoiseModel], NoiseModel]:
    _SHORT[name] = short
    return NOISE_MODELS.register(name, aliases=(short,) if short != name else ())


@_register("pmd", "pmd")
def _pmd(labels: np.ndarray, rate: float, *, num_classes: int, seed: int, probs: Optional[np.ndarray] = None,
         pmd_type: int = 1, **_: Any) -> Tuple[np.ndarray, Dict[str, Any]]:
    """PMD at ``rate``: the factor calibrated on ``probs`` (the clean-label model's softmax)."""
    if probs is None:
        raise InputError("PMD noise needs probs: the softmax of a model trained on the clean labels")
    factor = calibrate_pmd_factor(probs, noise_type=pmd_type, target_rate=rate, labels=labels)
    noisy = pmd_noise(probs, noise_type=pmd_type, factor=factor, seed=seed)
    return noisy, {"kind": "pmd", "type": pmd_type, "target_rate": rate, "factor": factor}


def _hybrid(kind: str) -> NoiseModel:
    def apply(labels: np.ndarray, rate: float, *, num_classes: int, seed: int,
              class_map: Optional[Dict[int, int]] = None, **_: Any) -> Tuple[np.ndarray, Dict[str, Any]]:
        noisy = hybrid_noise(labels, kind=kind, rate=rate, num_classes=num_classes, seed=seed,
                             class_map=class_map if kind == "asymmetric" else None)
        return noisy, {"kind": kind, "rate": rate}

    apply.__doc__ = f"{kind} noise at ``rate`` (the community files' sampling)."
    return apply


_register("uniform", "u")(_hybrid("uniform"))
_register("asymmetric", "a")(_hybrid("asymmetric"))


def parse_noise_spec(spec: str, rate: Optional[float] = None) -> List[Tuple[str, float]]:
    """Parse a noise setting into ``[(kind, rate), ...]`` applied in order.

    ``"pmd"`` with ``rate=0.7`` -> ``[("pmd", 0.7)]``; ``"pmd-0.35+u-0.3"`` ->
    ``[("pmd", 0.35), ("uniform", 0.3)]``; kinds: those of :data:`NOISE_MODELS`.
    """
    spec = str(spec).strip().lower()
    if not spec:
        raise InputError("empty noise setting")
    steps: List[Tuple[str, float]] = []
    for part in spec.split("+"):
        m = re.fullmatch(r"([a-z]+)(?:-([0-9.]+))?", part.strip())
        if not m or m.group(1) not in NOISE_MODELS:
            kinds = ", ".join(f"{name} ({_SHORT[name]})" if _SHORT[name] != name else name
                              for name in NOISE_MODELS.names())
            raise InputError(f"unknown noise kind {part!r} in {spec!r}; use {kinds}, e.g. 'pmd-0.35+u-0.3'")
        kind = NOISE_MODELS.canonical(m.group(1))
        if m.group(2) is not None:
            try:
                value = float(m.group(2))
            except ValueError:
                raise InputError(f"bad rate {m.group(2)!r} in noise setting {spec!r}") from None
        elif rate is not None and len(spec.split("+")) == 1:
            value = float(rate)
        else:
            raise InputError(f"noise setting {spec!r} needs a rate, e.g. '{kind}-0.3'")
        if not 0.0 <= value <= 1.0:
            raise InputError(f"noise rate must be in [0, 1], got {value} in {spec!r}")
        steps.append((kind, value))
    if any(kind == "pmd" for kind, _ in steps[1:]):
        raise InputError(f"PMD must come first in a hybrid noise setting, got {spec!r}")
    return steps


def format_noise_spec(steps: Sequence[Tuple[str, float]]) -> str:
    """``[("pmd", 0.35), ("uniform", 0.3)]`` -> ``"pmd-0.35+u-0.3"``."""
    return "+".join(f"{_SHORT[k]}-{r:g}" for k, r in steps)
