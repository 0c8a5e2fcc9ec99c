"""Label-noise models, numpy in and numpy out (labels int64 ``(N,)`` in ``[0, C)``).

- ``pmd``: PMD types I/II/III (feature-dependent noise from a model's softmax) with calibration.
- ``transitions``: uniform, asymmetric and hybrid noise, bit-exact with the community files.
- ``spec``: settings such as ``"pmd-0.35+u-0.3"`` and the :data:`NOISE_MODELS` registry.
"""
from __future__ import annotations

from .pmd import PMD_NOISE_TYPES, calibrate_pmd_factor, pmd_expected_rate, pmd_flip_probability, pmd_noise
from .spec import NOISE_MODELS, format_noise_spec, parse_noise_spec
from .transitions import (CIFAR10_ASYMMETRIC_MAP, NOISE_KINDS, apply_transition, asymmetric_noise,
                          asymmetric_transition_matrix, cifar100_asymmetric_map, default_asymmetric_map,
                          hybrid_noise, load_class_map, noise_rate, uniform_noise, uniform_transition_matrix)

__all__ = [
    "CIFAR10_ASYMMETRIC_MAP", "NOISE_KINDS", "NOISE_MODELS", "PMD_NOISE_TYPES", "apply_transition",
    "asymmetric_noise", "asymmetric_transition_matrix", "calibrate_pmd_factor", "cifar100_asymmetric_map",
    "default_asymmetric_map", "format_noise_spec", "hybrid_noise", "load_class_map", "noise_rate",
    "parse_noise_spec", "pmd_expected_rate", "pmd_flip_probability", "pmd_noise", "uniform_noise",
    "uniform_transition_matrix",
]
