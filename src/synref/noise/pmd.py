"""PMD (polynomial margin diminishing) label noise: types I/II/III, expected rate, calibration.

Everything here is numpy in, numpy out; labels are int64 ``(N,)`` in ``[0, C)``.

**PMD** (polynomial margin diminishing, Zhang et al., "Learning with feature-dependent label
noise: a progressive approach", ICLR 2021) follows the authors' reference code (``label_noise``
in ``utils.py`` of github.com/pxiangwu/PLC):

* from the softmax ``eta`` ``(N, C)`` take per sample the top-1 class ``u``, the runner-up ``s``
  and the margin ``d = eta_u - eta_s`` (ties go to the lower class id);
* ``tau`` by type -- I: ``-d^2/2 + 1/2``; II: ``1 - d^3``; III: ``1 - (d^3 + d^2 + d)/3``;
* ``level = 1 - tau`` (type I: ``max(1 - tau, 0.5)``), computed in the dtype of ``eta`` like the
  reference does with its float32 softmax; then ``keep = level / factor`` in float64;
* one Bernoulli(``keep``) per sample, in sample order: 1 gives ``u``, 0 gives ``s``.

The kept label is the model's top-1 ``u``, **not** the given (clean) label: the reference
overwrites every label with ``u`` or ``s`` and uses the clean labels only to count the noise.
The reference draws ``np.random.binomial(1, keep_i, 1)`` from numpy's global RNG one sample
at a time; here the draws come from ``np.random.RandomState(seed).binomial(1, keep)``, which
yields the identical per-sample sequence (legacy binomial, one draw per element in order).
A factor smaller than ``max(level)`` makes ``keep > 1`` (the reference crashes); it is
rejected with an InputError.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np
import numpy.typing as npt

from ..errors import InputError
from .checks import check_label_array, check_rate, random_state

__all__ = ["PMD_NOISE_TYPES", "pmd_flip_probability", "pmd_noise", "pmd_expected_rate", "calibrate_pmd_factor"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

PMD_NOISE_TYPES = (1, 2, 3)
_SUM_TOL = 1e-3  # how far a softmax row may sum from 1


def _check_probs(probs: Any) -> np.ndarray:
    """Validate a softmax ``(N, C)``; keep float32/float64 as given, other dtypes -> float64."""
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[1] < 2:
        raise InputError(f"probs must be a softmax array (N, C) with C >= 2, got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.number) or np.issubdtype(p.dtype, np.complexfloating):
        raise InputError(f"probs must be real numbers, got dtype {p.dtype}")
    if p.dtype not in (np.float32, np.float64):
        p = p.astype(np.float64)
    if p.shape[0] == 0:
        return p
    bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"probs: sample {i} has negative or non-finite entries")
    sums = p.sum(axis=1, dtype=np.float64)
    off = np.abs(sums - 1.0) > _SUM_TOL
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise InputError(
            f"probs: row {i} sums to {sums[i]:.6g}, not 1 (pass softmax probabilities, "
            f"not logits)"
        )
    return p


def _check_noise_type(noise_type: int) -> int:
    if isinstance(noise_type, bool) or noise_type not in PMD_NOISE_TYPES:
        raise InputError(f"noise_type must be one of 1, 2, 3 (PMD I/II/III), got {noise_type!r}")
    return int(noise_type)


def _check_factor(factor: float) -> float:
    try:
        f = float(factor)
    except (TypeError, ValueError):
        raise InputError(f"factor must be a positive number, got {factor!r}") from None
    if not (f > 0.0) or not math.isfinite(f):
        raise InputError(f"factor must be a positive finite number, got {factor!r}")
    return f


def _top2(p: np.ndarray) -> Tuple[IntArray, IntArray, np.ndarray]:
    """Top-1 class ``u``, runner-up ``s`` (ties: lower id first) and margin ``d``, each ``(N,)``."""
    n = p.shape[0]
    rows = np.arange(n)
    u = np.argmax(p, axis=1)
    masked = p.copy()
    masked[rows, u] = -np.inf
    s = np.argmax(masked, axis=1)
    d = p[rows, u] - p[rows, s]  # dtype of p, like the reference's float32 topk values
    return u.astype(np.int64), s.astype(np.int64), d


def _pmd_level(d: np.ndarray, noise_type: int) -> np.ndarray:
    """``1 - tau(d)`` (type I: ``max(1 - tau, 0.5)``) in the dtype of ``d``, reference op order."""
    if noise_type == 1:
        tau = -(1 / 2) * d**2 + 1 / 2
        return np.maximum(1 - tau, 0.5)
    a = np.abs(d)
    if noise_type == 2:
        tau = 1 - a**3
    else:
        tau = 1 - (1 / 3) * a**3 - (1 / 3) * a**2 - (1 / 3) * a
    return 1 - tau


def _pmd_parts(
    probs: Any, noise_type: int
) -> Tuple[IntArray, IntArray, FloatArray]:
    p = _check_probs(probs)
    t = _check_noise_type(noise_type)
    u, s, d = _top2(p)
    return u, s, _pmd_level(d, t).astype(np.float64)


def _keep_probability(level: FloatArray, factor: float) -> FloatArray:
    f = _check_factor(factor)
    keep = level / f
    if keep.size and keep.max() > 1.0:
        i = int(np.argmax(keep))
        raise InputError(
            f"factor {factor!r} is too small: sample {i} would keep its top-1 label with "
            f"probability {keep[i]:.4g} > 1; use factor >= {float(level.max()):.6g}"
        )
    return keep


def pmd_flip_probability(probs: Any, noise_type: int, factor: float) -> FloatArray:
    """Probability that PMD gives each sample its runner-up class instead of its top-1.

    Args:
        probs: float ``(N, C)`` softmax of a model trained on clean labels.
        noise_type: 1, 2 or 3 (PMD type I, II, III).
        factor: the PMD constant (> 0, and >= the largest ``1 - tau``).

    Returns:
        float64 ``(N,)``: ``1 - (1 - tau)/factor`` (type I: ``1 - max(1 - tau, 0.5)/factor``).
    """
    _, _, level = _pmd_parts(probs, noise_type)
    return 1.0 - _keep_probability(level, factor)


def pmd_noise(
    probs: Any,
    *,
    noise_type: int = 1,
    factor: float,
    seed: int,
    labels: Optional[Any] = None,
) -> IntArray:
    """Sample PMD noisy labels from a model's softmax.

    Per sample one Bernoulli(``(1 - tau)/factor``) is drawn, in sample order, from
    ``np.random.RandomState(seed)``: 1 keeps the model's top-1 class ``u``, 0 gives the
    runner-up ``s`` -- exactly the reference's ``label_noise``.

    Args:
        probs: float ``(N, C)`` softmax (float32 is kept as float32 for ``tau``, like the
            reference's torch softmax).
        noise_type: 1, 2 or 3 (PMD type I, II, III).
        factor: the PMD constant; see :func:`calibrate_pmd_factor`.
        seed: seed of the numpy RandomState.
        labels: optional clean labels ``(N,)``, only validated (length and range). As in the
            reference they do not influence the result; measure the noise against them with
            :func:`noise_rate` or :func:`pmd_expected_rate`.

    Returns:
        int64 ``(N,)`` noisy labels, each ``u`` or ``s`` of its sample.
    """
    u, s, level = _pmd_parts(probs, noise_type)
    if labels is not None:
        lab = check_label_array(labels, int(np.asarray(probs).shape[1]))
        if lab.shape[0] != u.shape[0]:
            raise InputError(f"labels has {lab.shape[0]} samples but probs has {u.shape[0]} rows")
    keep = _keep_probability(level, factor)
    rng = random_state(seed)
    draw = rng.binomial(1, keep)  # == [rng.binomial(1, k, 1)[0] for k in keep]
    return np.where(draw == 1, u, s).astype(np.int64)


def _rate_terms(
    probs: Any, noise_type: int, labels: Optional[Any]
) -> Tuple[float, float, FloatArray]:
    """``A, B, level`` with expected rate ``A + B / factor``."""
    u, s, level = _pmd_parts(probs, noise_type)
    n = u.shape[0]
    if n == 0:
        raise InputError("probs has no samples")
    if labels is None:
        # flip_i = 1 - level_i / factor, measured against the top-1 labels u
        return 1.0, -float(level.mean()), level
    lab = check_label_array(labels, int(np.asarray(probs).shape[1]))
    if lab.shape[0] != n:
        raise InputError(f"labels has {lab.shape[0]} samples but probs has {n} rows")
    u_wrong = (u != lab).astype(np.float64)
    s_wrong = (s != lab).astype(np.float64)
    # P(noisy != label) = keep*[u != label] + (1 - keep)*[s != label]
    return float(s_wrong.mean()), float((level * (u_wrong - s_wrong)).mean()), level


def pmd_expected_rate(
    probs: Any, noise_type: int, factor: float, labels: Optional[Any] = None
) -> float:
    """Expected fraction of PMD labels that differ from the reference labels.

    Args:
        probs: float ``(N, C)`` softmax.
        noise_type: 1, 2 or 3.
        factor: the PMD constant.
        labels: clean labels ``(N,)``; without them the rate is measured against the model's
            top-1 classes (i.e. the mean flip probability).

    Returns:
        the expected noise rate in ``[0, 1]``.
    """
    a, b, level = _rate_terms(probs, noise_type, labels)
    _keep_probability(level, factor)  # validates factor
    return float(a + b / float(factor))


def calibrate_pmd_factor(
    probs: Any,
    *,
    noise_type: int = 1,
    target_rate: float,
    labels: Optional[Any] = None,
) -> float:
    """The PMD factor whose expected noise rate is ``target_rate`` (closed form).

    The expected rate is ``A + B/factor`` (see :func:`pmd_expected_rate`), valid for
    ``factor >= max(1 - tau)``. The reachable rates lie between the rate at that smallest
    factor and the limit for ``factor -> inf`` (every label becomes the runner-up).

    Args:
        probs: float ``(N, C)`` softmax.
        noise_type: 1, 2 or 3.
        target_rate: wanted expected noise rate in ``[0, 1]``.
        labels: clean labels ``(N,)``; without them the rate is against the top-1 classes.

    Returns:
        the factor (float > 0).

    Raises:
        InputError: when the target rate cannot be reached.
    """
    target = check_rate(target_rate, "target_rate")
    a, b, level = _rate_terms(probs, noise_type, labels)
    f_min = float(level.max())
    if b == 0.0:  # every valid factor gives the same rate
        if abs(target - a) <= 1e-12:
            return max(f_min, 1.0)
        raise InputError(
            f"target_rate {target:g} is unreachable: the expected rate is {a:.4f} for every factor"
        )
    at_min = a + b / f_min
    lo, hi = min(at_min, a), max(at_min, a)
    if not (lo - 1e-12 <= target <= hi + 1e-12) or abs(target - a) <= 1e-12:
        raise InputError(
            f"target_rate {target:g} is unreachable for PMD type {noise_type}: reachable rates "
            f"run from {at_min:.4f} (smallest valid factor {f_min:.4g}) towards {a:.4f} "
            f"(factor -> inf, not attained)"
        )
    factor = b / (target - a)
    return float(max(factor, f_min))

