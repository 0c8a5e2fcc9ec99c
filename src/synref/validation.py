"""Input checks shared by every public function (cleanlab's ``internal/validation`` habit).

Each check returns the value in its canonical form (int64 labels, a uint8 NHWC array, an
``(H, W)`` tuple, ...) or raises a one-line :class:`~synref.errors.InputError` naming the
option, the array and, for arrays, the first offending sample.
"""
from __future__ import annotations

import operator
import os
from typing import Any, Iterator, Optional, Tuple

import numpy as np

from .errors import InputError

__all__ = [
    "as_image_array", "check_labels", "as_labels", "check_classes_present", "infer_num_classes", "as_2d_float", "check_finite",
    "check_unit_interval", "check_pred_probs", "check_count", "check_seed", "check_split_seed", "check_num_classes",
    "check_size", "check_optional_size", "check_channels", "check_optional_channels", "first_bad_row",
    "chunks", "CHUNK_ROWS", "available_memory", "check_memory", "format_bytes",
]

Size = Tuple[int, int]
#: rows per block of the checks that stream over large (possibly memory-mapped) arrays.
CHUNK_ROWS = 65536


# ------------------------------------------------------------------------------- images
def as_image_array(images: Any, what: str = "images") -> np.ndarray:
    """``images`` as a uint8 ``(N, H, W, C)`` array, C in {1, 3} (an ``(N, H, W)`` array gains
    C = 1); anything else raises InputError naming ``what``."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise InputError(f"{what} must be uint8 (N, H, W, C) with C in 1 or 3, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise InputError(f"{what} must be uint8 (N, H, W, C), got dtype {arr.dtype}")
    return arr


def check_size(size: Any, what: str = "size") -> Size:
    """``32`` -> ``(32, 32)``; ``(H, W)`` -> ``(H, W)``; positive ints, else InputError."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw: Tuple[int, ...] = (int(size), int(size))
    else:
        try:
            hw = tuple(int(s) for s in size)
        except (TypeError, ValueError):
            raise InputError(f"{what} must be an int or (height, width), got {size!r}") from None
        if len(hw) != 2:
            raise InputError(f"{what} must be an int or (height, width), got {size!r}")
    if min(hw) < 1:
        raise InputError(f"{what} must be positive, got {size!r}")
    return (hw[0], hw[1])


def check_optional_size(size: Any, what: str = "size") -> Optional[Size]:
    return None if size is None else check_size(size, what)


def check_channels(channels: Any, what: str = "channels") -> int:
    if isinstance(channels, bool) or channels not in (1, 3):
        raise InputError(f"{what} must be 1 or 3, got {channels!r}")
    return int(channels)


def check_optional_channels(channels: Any, what: str = "channels") -> Optional[int]:
    return None if channels is None else check_channels(channels, what)


# ------------------------------------------------------------------------------- labels
def check_labels(labels: np.ndarray, num_classes: int, *, what: str = "labels") -> np.ndarray:
    """Raise InputError naming the first sample whose label is outside ``[0, num_classes)``."""
    labels = np.asarray(labels)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"{what}: sample {i} has label {labels[i]}, outside [0, {num_classes}) "
            f"({bad.size} such samples)"
        )
    return labels


def as_labels(labels: Any, num_classes: Optional[int] = None, *, n: Optional[int] = None,
              what: str = "labels", integral_floats: bool = False) -> np.ndarray:
    """``labels`` as int64 ``(N,)``: 1-D, integers (or, with ``integral_floats``, floats with
    integer values, as cleanlab accepts), ``n`` of them when given, in ``[0, num_classes)``
    when ``num_classes`` is given."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InputError(f"{what} must be 1-D (one class index per sample), got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise InputError(f"{what}: expected {n} labels, got {len(arr)}")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        integral = (integral_floats and np.issubdtype(arr.dtype, np.floating)
                    and bool(np.all(arr == np.round(arr))))
        if not integral:
            raise InputError(f"{what} must be integers (integer class indices), got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if num_classes is not None:
        check_labels(arr, num_classes, what=what)
    return arr


def check_classes_present(labels: np.ndarray, class_names: Optional[Any], what: str) -> None:
    """InputError unless the labels (N,) hold at least 2 classes: finding wrong labels needs
    something to confuse them with (a one-class set is refused, not "checked")."""
    present = np.unique(np.asarray(labels))
    if present.size < 2:
        only = (f"class {class_names[int(present[0])]!r}" if present.size and class_names is not None
                else "one class" if present.size else "no labels")
        raise InputError(f"{what}: every label is {only}; label refinement needs at least 2 classes")


def infer_num_classes(*, pred_probs: Optional[np.ndarray] = None, prototypes: Optional[np.ndarray] = None,
                      anchor_labels: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None) -> int:
    """C from the first that is given: ``pred_probs`` columns, ``prototypes`` rows, else the
    largest anchor or given label + 1."""
    if pred_probs is not None:
        return int(np.shape(pred_probs)[1])
    if prototypes is not None:
        return int(len(prototypes))
    if anchor_labels is None:
        raise InputError("give anchor_features and anchor_labels (or prototypes)")
    given = np.asarray(labels) if labels is not None else np.zeros(0, np.int64)
    return int(max(np.max(anchor_labels), np.max(given, initial=0))) + 1


def check_num_classes(num_classes: Any, minimum: int = 2) -> int:
    try:
        c = operator.index(num_classes)
    except TypeError:
        raise InputError(f"num_classes must be an integer, got {num_classes!r}") from None
    if c < minimum:
        raise InputError(f"num_classes must be >= {minimum}, got {c}")
    return c


# ------------------------------------------------------------------------------- arrays
def as_2d_float(name: str, array: Any, *, rows: Optional[int] = None, cols: Optional[int] = None) -> np.ndarray:
    """A 2-D float array (float dtypes, memory maps and :class:`~synref.arrays.UnitRows` views
    kept as they are; others -> float32)."""
    from .arrays import UnitRows

    if not isinstance(array, UnitRows):
        array = np.asarray(array)
    if array.ndim != 2:
        raise InputError(f"{name} must be 2-D, got shape {array.shape}")
    if rows is not None and array.shape[0] != rows:
        raise InputError(f"{name} has {array.shape[0]} rows, expected {rows}")
    if cols is not None and array.shape[1] != cols:
        raise InputError(f"{name} has {array.shape[1]} columns, expected {cols}")
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    return array


def first_bad_row(name: str, block: np.ndarray, start: int = 0) -> None:
    """InputError naming the first row of ``block`` (offset ``start``) with a NaN or inf."""
    finite = np.isfinite(block)
    if not finite.all():
        row = start + int(np.flatnonzero(~finite.all(axis=1))[0])
        raise InputError(f"{name}: sample {row} has a NaN or infinite value")


def check_finite(name: str, array: np.ndarray) -> None:
    """InputError naming the first sample of ``array`` (N, D) with a NaN or inf; block by block."""
    for start in range(0, len(array), CHUNK_ROWS):
        first_bad_row(name, array[start:start + CHUNK_ROWS], start)


def check_pred_probs(pred_probs: Any, num_samples: Optional[int] = None, *, name: str = "pred_probs") -> np.ndarray:
    """Validate a softmax ``(N, C)``: numbers, C >= 2, rows in [0, 1] summing to ~1.

    Lists and any float/int dtype are accepted (float16/float32/float64 arrays are kept, not
    copied; memory-mapped arrays are read in blocks). Raises InputError naming the first bad row.
    """
    probs = np.asarray(pred_probs)
    if probs.dtype == object or not (np.issubdtype(probs.dtype, np.floating)
                                     or np.issubdtype(probs.dtype, np.integer)):
        raise InputError(f"{name} must be numbers, got dtype {probs.dtype}")
    if probs.ndim != 2:
        raise InputError(f"{name} must be 2-D (N samples, C classes), got shape {probs.shape}")
    if num_samples is not None and len(probs) != num_samples:
        raise InputError(f"{name} has {len(probs)} rows but there are {num_samples} labels")
    if probs.shape[1] < 2:
        raise InputError(f"{name} needs at least 2 class columns, got {probs.shape[1]}")
    tol = 1e-2 if probs.dtype == np.float16 else 1e-3
    for start in range(0, len(probs), CHUNK_ROWS):
        block = np.asarray(probs[start:start + CHUNK_ROWS], dtype=np.float64)
        sums = block.sum(axis=1)
        bad = ~(np.abs(sums - 1.0) <= tol)  # NaN fails too
        low = block.min(axis=1) < -tol
        if bad.any() or low.any():
            i = int(np.flatnonzero(bad | low)[0])
            row = start + i
            if not np.isfinite(block[i]).all():
                raise InputError(f"{name}: sample {row} has a NaN or infinite value")
            if low[i]:
                raise InputError(f"{name}: sample {row} has a negative value ({block[i].min():.4g}); pass "
                                 f"softmax probabilities (e.g. scipy.special.softmax(logits, axis=1)), not logits")
            raise InputError(f"{name}: row {row} sums to {sums[i]:.4g}, not 1; pass softmax probabilities "
                             f"(e.g. scipy.special.softmax(logits, axis=1)), not logits or scores")
    return probs


# ------------------------------------------------------------------------------- numbers
def check_unit_interval(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1] (NaN and non-numbers refused)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not (0.0 <= v <= 1.0):
        raise InputError(f"{name} must be in [0, 1], got {value!r}")
    return v


def check_count(value: Any, option: str, minimum: int = 1, maximum: Optional[int] = None) -> int:
    """An integer >= ``minimum`` (and <= ``maximum`` when given; bools refused), else InputError
    naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{option} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise InputError(f"{option} must be an integer in [{minimum}, {maximum}], got {value!r}")
    return int(value)


def check_seed(seed: Any, option: str = "seed") -> int:
    return check_count(seed, option, minimum=0)


#: the largest seed the data splits accept (scikit-learn's ``random_state`` range).
MAX_SPLIT_SEED = 2**32 - 1


def check_split_seed(seed: Any, option: str = "seed") -> int:
    """A seed that also seeds data splits: an integer in ``[0, 2**32 - 1]``."""
    return check_count(seed, option, minimum=0, maximum=MAX_SPLIT_SEED)


def chunks(n: int, size: int = CHUNK_ROWS) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``size`` rows."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


# ------------------------------------------------------------------------------- resources
def available_memory() -> Optional[int]:
    """Bytes of memory this process can still use: the kernel's MemAvailable (Linux), else the
    free physical pages; None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_memory(needed: float, what: str, advice: str) -> None:
    """InputError (one line: ``what``, the estimate, the machine's memory, ``advice``) when the
    estimated ``needed`` bytes exceed the memory available now. Nothing is checked when the
    available memory is unknown."""
    available = available_memory()
    if available is not None and needed > available:
        raise InputError(f"{what} needs about {format_bytes(needed)} of memory, more than the "
                         f"{format_bytes(available)} available on this machine; {advice}")
