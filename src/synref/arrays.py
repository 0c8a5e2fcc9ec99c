"""Array helpers shared by the feature, training and refinement code, written so that a
memory-mapped ``(N, D)`` feature matrix is never copied whole."""
from __future__ import annotations

import warnings
from typing import Iterator, Optional

import numpy as np
import torch

__all__ = ["l2_normalize", "row_norms", "as_tensor", "row_chunks"]

#: float32 elements of one temporary block (16 MB): bounds what chunked passes allocate.
BLOCK_ELEMENTS = 1 << 22


def row_chunks(n: int, width: int, elements: Optional[int] = None) -> Iterator[slice]:
    """Slices of ``range(n)`` whose blocks of ``width`` columns hold at most ``elements``
    (default :data:`BLOCK_ELEMENTS`)."""
    step = max(1, int(elements or BLOCK_ELEMENTS) // max(int(width), 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def row_norms(x: np.ndarray) -> np.ndarray:
    """(N,) float32 L2 norms of the rows of ``x`` (N, D), without an (N, D) temporary."""
    out = np.empty(len(x), np.float32)
    for rows in row_chunks(len(x), x.shape[1]):
        block = np.asarray(x[rows], dtype=np.float32)
        out[rows] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return out


def l2_normalize(x: np.ndarray, eps: float = 1e-12, *, atol: float = 1e-4) -> np.ndarray:
    """Rows of ``x`` (N, D) scaled to unit length, float32 (zero rows stay zero). When the rows
    already are (float32, every norm within ``atol`` of 1, as the encoders write them), ``x``
    itself is returned, not a copy: treat the result as read-only."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        norms = np.linalg.norm(x, axis=-1, keepdims=True)
        return x / np.maximum(norms, eps)
    norms = row_norms(x)
    if np.all(np.abs(norms - 1.0) <= atol):
        return x
    return x / np.maximum(norms, eps)[:, None]


def as_tensor(x: np.ndarray) -> torch.Tensor:
    """A float32 torch view of ``x`` (no copy when it is float32 already; read-only memory maps
    are only read)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(np.asarray(x, dtype=np.float32))
