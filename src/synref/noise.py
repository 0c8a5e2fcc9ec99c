"""Label-noise models: PMD (types I/II/III) with calibration, uniform, asymmetric and hybrid.

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

**Uniform / asymmetric** follow the reference's ``build_uniform_P``,
``noisify_cifar10_asymmetric``, ``noisify_cifar100_asymmetric`` and ``multiclass_noisify``
(float64 transition matrix; diagonal ``1 - rate``; one
``RandomState(seed).multinomial(1, P[y_i])`` per sample in order, also for rows that cannot
change). This reproduces the community hybrid label files bit for bit.
"""
from __future__ import annotations

import csv
import io
import json
import math
import operator
import types
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from .data import check_labels
from .errors import InputError

__all__ = [
    "CIFAR10_ASYMMETRIC_MAP",
    "NOISE_KINDS",
    "PMD_NOISE_TYPES",
    "apply_transition",
    "asymmetric_noise",
    "asymmetric_transition_matrix",
    "calibrate_pmd_factor",
    "cifar100_asymmetric_map",
    "default_asymmetric_map",
    "hybrid_noise",
    "load_class_map",
    "noise_rate",
    "pmd_expected_rate",
    "pmd_flip_probability",
    "pmd_noise",
    "uniform_noise",
    "uniform_transition_matrix",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
PathLike = Union[str, Path]

PMD_NOISE_TYPES = (1, 2, 3)
NOISE_KINDS = ("uniform", "asymmetric")

#: CIFAR-10 asymmetric noise (class ids of CIFAR-10): truck->automobile, bird->airplane,
#: deer->horse, cat<->dog. Read-only; ``dict(CIFAR10_ASYMMETRIC_MAP)`` gives a copy.
CIFAR10_ASYMMETRIC_MAP: Mapping[int, int] = types.MappingProxyType(
    {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}
)

_SUM_TOL = 1e-3  # how far a softmax row may sum from 1


# ----------------------------------------------------------------------------------- checks
def _check_rate(rate: float, name: str = "rate") -> float:
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number in [0, 1], got {rate!r}") from None
    if not (0.0 <= r <= 1.0):  # also rejects NaN
        raise InputError(f"{name} must be in [0, 1], got {rate!r}")
    return r


def _check_num_classes(num_classes: int, minimum: int = 2) -> int:
    try:
        c = operator.index(num_classes)
    except TypeError:
        raise InputError(f"num_classes must be an integer, got {num_classes!r}") from None
    if c < minimum:
        raise InputError(f"num_classes must be >= {minimum}, got {c}")
    return c


def _check_seed(seed: int) -> np.random.RandomState:
    try:
        return np.random.RandomState(operator.index(seed))
    except (TypeError, ValueError):
        raise InputError(f"seed must be an integer in [0, 2**32), got {seed!r}") from None


def _check_label_array(labels: Any, num_classes: int, what: str = "labels") -> IntArray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InputError(f"{what} must be 1-D (N,), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{what} must be integers, got dtype {arr.dtype}")
    check_labels(arr, num_classes, what=what)
    return arr.astype(np.int64, copy=False)


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


# ------------------------------------------------------------------------------------- PMD
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
        lab = _check_label_array(labels, int(np.asarray(probs).shape[1]))
        if lab.shape[0] != u.shape[0]:
            raise InputError(f"labels has {lab.shape[0]} samples but probs has {u.shape[0]} rows")
    keep = _keep_probability(level, factor)
    rng = _check_seed(seed)
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
    lab = _check_label_array(labels, int(np.asarray(probs).shape[1]))
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
    target = _check_rate(target_rate, "target_rate")
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


# ------------------------------------------------------------------------- class maps / P
def cifar100_asymmetric_map() -> Dict[int, int]:
    """CIFAR-100 asymmetric map: 20 blocks of 5 consecutive ids, ``i ->`` next id in its block
    (cyclic: ``4 -> 0``, ``9 -> 5``, ...)."""
    return {i: (i // 5) * 5 + (i % 5 + 1) % 5 for i in range(100)}


def default_asymmetric_map(num_classes: int) -> Dict[int, int]:
    """The standard asymmetric class map for 10 (CIFAR-10) or 100 (CIFAR-100) classes."""
    c = _check_num_classes(num_classes)
    if c == 10:
        return dict(CIFAR10_ASYMMETRIC_MAP)
    if c == 100:
        return cifar100_asymmetric_map()
    raise InputError(
        f"no default asymmetric class map for num_classes={c} (only 10 = CIFAR-10 and "
        f"100 = CIFAR-100); pass a class map (class_map=..., e.g. from load_class_map)"
    )


def _check_class_map(class_map: Mapping[Any, Any], num_classes: int) -> Dict[int, int]:
    if not isinstance(class_map, Mapping):
        kind = type(class_map).__name__
        raise InputError(f"class_map must be a mapping {{src: dst}}, got {kind}")
    out: Dict[int, int] = {}
    for k, v in class_map.items():
        try:
            src, dst = operator.index(k), operator.index(v)
        except TypeError:
            raise InputError(f"class_map: entry {k!r}: {v!r} is not a pair of integers") from None
        for x in (src, dst):
            if not 0 <= x < num_classes:
                raise InputError(
                    f"class_map: entry {src}: {dst} has class {x} outside [0, {num_classes})"
                )
        if src == dst:
            raise InputError(f"class_map: entry {src}: {dst} maps a class to itself")
        out[src] = dst
    return out


def uniform_transition_matrix(num_classes: int, rate: float) -> FloatArray:
    """Uniform (symmetric) noise: float64 ``(C, C)``, ``1 - rate`` on the diagonal,
    ``rate / (C - 1)`` elsewhere."""
    c = _check_num_classes(num_classes)
    r = _check_rate(rate)
    P = np.full((c, c), r / (c - 1), dtype=np.float64)
    np.fill_diagonal(P, 1.0 - r)
    return P


def asymmetric_transition_matrix(
    num_classes: int, rate: float, class_map: Mapping[int, int]
) -> FloatArray:
    """Asymmetric noise: float64 ``(C, C)`` identity, except ``P[src, src] = 1 - rate`` and
    ``P[src, dst] = rate`` for every ``src -> dst`` in ``class_map``."""
    c = _check_num_classes(num_classes)
    r = _check_rate(rate)
    cmap = _check_class_map(class_map, c)
    P = np.eye(c, dtype=np.float64)
    for src, dst in cmap.items():
        P[src, src] = 1.0 - r
        P[src, dst] = r
    return P


class _JsonPairs(list):  # type: ignore[type-arg]
    """The key/value pairs of one JSON object, in file order."""


def _parse_int(text: str) -> int:
    t = text.strip()
    return int(t)  # ValueError on anything but a plain integer


def load_class_map(path: PathLike, num_classes: int) -> Dict[int, int]:
    """Read an asymmetric class map ``{src: dst}`` from a file.

    Accepted formats: JSON object ``{"3": 5, "5": 3}`` (``.json`` or content starting with
    ``{``), or text/CSV with one ``src,dst`` pair per line (comma or whitespace separated;
    blank lines, ``#`` comments and a non-numeric header line are skipped).

    Raises:
        InputError: naming the file (and line/entry) for unreadable files, bad entries,
            duplicate sources, self-maps and ids outside ``[0, num_classes)``.
    """
    c = _check_num_classes(num_classes)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: class map file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read class map ({e})") from None

    pairs: List[Tuple[int, int, str]] = []  # src, dst, where (for messages)
    if p.suffix.lower() == ".json" or text.lstrip().startswith("{"):

        try:  # keep the pairs (a plain dict would silently drop duplicate keys)
            obj = json.loads(text, object_pairs_hook=_JsonPairs)
        except json.JSONDecodeError as e:
            raise InputError(f"{p}: invalid JSON at line {e.lineno}: {e.msg}") from None
        if not isinstance(obj, _JsonPairs):
            raise InputError(f"{p}: expected a JSON object {{\"src\": dst, ...}}")
        for k, v in obj:
            where = f"entry {json.dumps(k)}"
            try:
                if isinstance(v, bool) or not isinstance(v, (int, str)):
                    raise ValueError
                src, dst = _parse_int(k), _parse_int(str(v))
            except ValueError:
                raise InputError(
                    f"{p}: {where}: {json.dumps(v)} is not an integer class id pair"
                ) from None
            pairs.append((src, dst, where))
    else:
        header_allowed = True
        for lineno, line in enumerate(text.splitlines(), start=1):
            body = line.split("#", 1)[0].strip()
            if not body:
                continue
            fields = next(csv.reader(io.StringIO(body))) if "," in body else body.split()
            fields = [f.strip() for f in fields]
            where = f"line {lineno}"
            try:
                if len(fields) != 2:
                    raise ValueError
                src, dst = _parse_int(fields[0]), _parse_int(fields[1])
            except ValueError:
                if header_allowed and len(fields) == 2 and not any(
                    f.lstrip("+-").isdigit() for f in fields
                ):
                    header_allowed = False
                    continue
                raise InputError(
                    f"{p}: {where}: expected 'src,dst' with two integer class ids, "
                    f"got {line.strip()!r}"
                ) from None
            header_allowed = False
            pairs.append((src, dst, where))

    if not pairs:
        raise InputError(f"{p}: class map has no entries")
    out: Dict[int, int] = {}
    for src, dst, where in pairs:
        for x in (src, dst):
            if not 0 <= x < c:
                raise InputError(f"{p}: {where}: class id {x} outside [0, {c})")
        if src == dst:
            raise InputError(f"{p}: {where}: maps class {src} to itself")
        if src in out:
            raise InputError(f"{p}: {where}: class {src} is mapped twice")
        out[src] = dst
    return out


# ------------------------------------------------------------------------------- sampling
def apply_transition(labels: Any, P: Any, *, seed: int) -> IntArray:
    """Resample every label from the row of the transition matrix for its current class.

    Exactly the community ``multiclass_noisify``: ``rng = np.random.RandomState(seed)``, then
    for each sample in order ``rng.multinomial(1, P[y_i])`` (a draw for every sample, also
    where the row is one-hot). About 0.1 s per 50,000 samples.

    Args:
        labels: int ``(N,)`` in ``[0, C)``.
        P: float ``(C, C)`` row-stochastic matrix; it is used as float64.
        seed: seed of the numpy RandomState.

    Returns:
        int64 ``(N,)`` new labels.
    """
    M = np.asarray(P)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] < 1:
        raise InputError(f"transition matrix must be square (C, C), got shape {M.shape}")
    M = M.astype(np.float64, copy=False)
    if not np.isfinite(M).all() or (M < 0).any():
        raise InputError("transition matrix has negative or non-finite entries")
    row_sums = M.sum(axis=1)
    off = np.abs(row_sums - 1.0) > 1e-9
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise InputError(f"transition matrix: row {i} sums to {row_sums[i]:.12g}, not 1")
    y = _check_label_array(labels, M.shape[0])
    rng = _check_seed(seed)
    rows = [np.ascontiguousarray(M[c]) for c in range(M.shape[0])]
    out = np.empty(y.shape[0], dtype=np.int64)
    multinomial = rng.multinomial
    for i, c in enumerate(y.tolist()):
        out[i] = multinomial(1, rows[c]).argmax()
    return out


def uniform_noise(labels: Any, *, rate: float, num_classes: int, seed: int) -> IntArray:
    """Uniform noise: each label moves with probability ``rate`` to one of the other ``C - 1``
    classes uniformly. ``labels`` int ``(N,)`` -> int64 ``(N,)``."""
    P = uniform_transition_matrix(num_classes, rate)
    return apply_transition(labels, P, seed=seed)


def asymmetric_noise(
    labels: Any,
    *,
    rate: float,
    num_classes: int,
    seed: int,
    class_map: Optional[Mapping[int, int]] = None,
) -> IntArray:
    """Asymmetric noise: each label of a class ``src`` in ``class_map`` becomes ``dst`` with
    probability ``rate``; other classes are untouched. ``class_map`` defaults to
    :func:`default_asymmetric_map`. ``labels`` int ``(N,)`` -> int64 ``(N,)``."""
    cmap = default_asymmetric_map(num_classes) if class_map is None else class_map
    P = asymmetric_transition_matrix(num_classes, rate, cmap)
    return apply_transition(labels, P, seed=seed)


def hybrid_noise(
    labels: Any,
    *,
    kind: str,
    rate: float,
    num_classes: int,
    seed: int,
    class_map: Optional[Mapping[int, int]] = None,
) -> IntArray:
    """Apply uniform or asymmetric noise on top of given (e.g. PMD) labels.

    "35% PMD + 30% U" with seed 77 is
    ``hybrid_noise(pmd_labels, kind="uniform", rate=0.3, num_classes=C, seed=77)``.

    Args:
        labels: int ``(N,)`` labels to corrupt further.
        kind: ``"uniform"`` or ``"asymmetric"``.
        rate, num_classes, seed, class_map: as in :func:`uniform_noise` /
            :func:`asymmetric_noise` (``class_map`` only with ``kind="asymmetric"``).

    Returns:
        int64 ``(N,)``.
    """
    if kind == "uniform":
        if class_map is not None:
            raise InputError("class_map only applies to kind='asymmetric'")
        return uniform_noise(labels, rate=rate, num_classes=num_classes, seed=seed)
    if kind == "asymmetric":
        return asymmetric_noise(
            labels, rate=rate, num_classes=num_classes, seed=seed, class_map=class_map
        )
    raise InputError(f"unknown noise kind {kind!r}; valid kinds: {', '.join(NOISE_KINDS)}")


def noise_rate(noisy: Any, clean: Any) -> float:
    """Fraction of samples whose noisy label differs from the clean one (``(N,)`` each)."""
    a, b = np.asarray(noisy), np.asarray(clean)
    for name, x in (("noisy", a), ("clean", b)):
        if x.ndim != 1:
            raise InputError(f"{name} labels must be 1-D (N,), got shape {x.shape}")
    if a.shape != b.shape:
        raise InputError(f"noisy has {a.shape[0]} labels but clean has {b.shape[0]}")
    if a.size == 0:
        raise InputError("noise_rate needs at least one label")
    return float(np.mean(a != b))
