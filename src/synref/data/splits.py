"""Deterministic, stratified index splits (train / val / test)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from ..errors import InputError, one_line
from ..validation import MAX_SPLIT_SEED, check_split_seed

__all__ = ["split_indices"]


def split_indices(labels: np.ndarray, *, fractions: Optional[Sequence[float]] = None,
                  sizes: Optional[Sequence[int]] = None, seed: int = 0,
                  stratify: bool = True) -> List[np.ndarray]:
    """Deterministic (stratified) index splits, e.g. train/val/test.

    Give ``fractions`` (summing to 1) or ``sizes`` (summing to at most N; the rest is left
    out). Returns one sorted int64 index array per part; the parts are disjoint. Stratified
    with sklearn's ``train_test_split``, so class proportions match across parts.
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    n = len(labels)
    if (fractions is None) == (sizes is None):
        raise InputError("split_indices needs exactly one of fractions or sizes")
    if fractions is not None:
        fr = np.asarray(fractions, dtype=np.float64)
        if fr.ndim != 1 or fr.size == 0 or (fr < 0).any() or abs(fr.sum() - 1.0) > 1e-6:
            raise InputError(f"fractions must be non-negative and sum to 1, got {list(fractions)}")
        raw = fr * n
        counts = np.floor(raw).astype(np.int64)
        for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
            counts[i] += 1
    else:
        counts = np.asarray(sizes, dtype=np.int64)
        if counts.ndim != 1 or counts.size == 0 or (counts < 0).any() or counts.sum() > n:
            raise InputError(f"sizes must be non-negative and sum to at most {n}, got {list(sizes)}")
    seed = check_split_seed(seed)
    if seed + len(counts) - 1 > MAX_SPLIT_SEED:
        raise InputError(f"seed must be at most {MAX_SPLIT_SEED - len(counts) + 1} for {len(counts)} parts, got {seed}")
    pool = np.arange(n, dtype=np.int64)
    parts: List[np.ndarray] = []
    for k, count in enumerate(counts):
        count = int(count)
        if count == 0:
            parts.append(np.empty(0, dtype=np.int64))
            continue
        if count == len(pool):
            parts.append(np.sort(pool))
            pool = pool[:0]
            continue
        try:
            take, pool = train_test_split(pool, train_size=count, test_size=len(pool) - count,
                                          random_state=seed + k,
                                          stratify=labels[pool] if stratify else None)
        except ValueError as exc:
            raise InputError(f"cannot split {len(pool)} samples into {count} + {len(pool) - count}"
                             f"{' stratified' if stratify else ''}: {one_line(exc)}"
                             f"{' (try stratify=False)' if stratify else ''}") from None
        parts.append(np.sort(take))
    return parts
