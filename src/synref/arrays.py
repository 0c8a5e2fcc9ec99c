"""Array helpers shared by the feature, training and refinement code, written so that a
memory-mapped ``(N, D)`` feature matrix is never copied whole."""
from __future__ import annotations

import warnings
from typing import Iterator, Optional

import numpy as np
import torch

__all__ = ["l2_normalize", "row_norms", "as_tensor", "row_chunks", "UnitRows", "bytes_served", "count_bytes_served"]

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


#: bytes of feature rows served by :class:`UnitRows` since the process started (the benchmark's
#: "bytes read": a memory-mapped file is read by touching its pages, which no I/O counter sees).
_BYTES_SERVED = [0]


def bytes_served() -> int:
    """Bytes of rows :class:`UnitRows` has handed out in this process (blocks and gathers)."""
    return _BYTES_SERVED[0]


def count_bytes_served(nbytes: int) -> None:
    """Count ``nbytes`` of rows read in place (by faiss, from the matrix under a :class:`UnitRows`)."""
    _BYTES_SERVED[0] += int(nbytes)


class UnitRows:
    """Unit-length float32 rows of a feature matrix, read in blocks and never copied whole.

    The rows are ``base`` (N0, D) (an ndarray or a read-only ``np.memmap``), optionally
    selected by ``index`` (N,) int (a row subset: skipped files, one fold's samples), then
    followed by ``extra`` (M, D) rows (planted anchors). Rows whose norm is not 1 are scaled
    per block (zero rows stay zero), so unnormalised user embeddings need no normalised copy
    (``norms`` (N0,): the row norms when already computed).
    What is read is counted (:func:`bytes_served`).
    """

    def __init__(self, base: np.ndarray, index: Optional[np.ndarray] = None,
                 extra: Optional[np.ndarray] = None, *, atol: float = 1e-4,
                 norms: Optional[np.ndarray] = None) -> None:
        if isinstance(base, UnitRows):  # a view of a view: compose the row selections
            if base.extra is not None and (index is not None or extra is not None):
                raise ValueError("rows of a UnitRows with extra rows cannot be selected again")
            if base.extra is not None:
                extra = base.extra
            if base.index is not None:
                index = base.index if index is None else base.index[np.asarray(index, dtype=np.int64)]
            base, norms = base.base, base._norms
        else:
            base = np.asarray(base) if not isinstance(base, np.ndarray) else base
            if base.ndim != 2:
                raise ValueError(f"features: expected (N, D), got shape {tuple(base.shape)}")
            norms = row_norms(base) if norms is None else np.asarray(norms, np.float32)
            norms = None if (len(norms) == 0 or np.all(np.abs(norms - 1.0) <= atol)) else norms
        self.base = base
        self._norms = norms
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        self.extra = None if extra is None else l2_normalize(np.asarray(extra, dtype=np.float32))
        if self.extra is not None and self.extra.shape[1:] != base.shape[1:]:
            raise ValueError(f"extra rows have {self.extra.shape[1]} columns, the features {base.shape[1]}")
        self.num_base = len(base) if self.index is None else len(self.index)

    #: array-like enough for code that reads ``x[start:stop]`` blocks (``len``, ``shape``, ``ndim``)
    ndim = 2
    dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.num_base + (0 if self.extra is None else len(self.extra))

    def __getitem__(self, rows: slice) -> np.ndarray:
        """Unit rows ``rows`` (a slice with step 1): :meth:`block`."""
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("UnitRows supports contiguous slices only; use take() to gather rows")
        start, stop, _ = rows.indices(len(self))
        return self.block(start, max(start, stop))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """All rows as one (N, D) array: a copy, for code that cannot stream."""
        out = self.block(0, len(self))
        return out if dtype is None else out.astype(dtype)

    @property
    def dim(self) -> int:
        return int(self.base.shape[1])

    @property
    def shape(self) -> tuple:
        return (len(self), self.dim)

    def _base_rows(self, rows: np.ndarray) -> np.ndarray:
        """Unit float32 rows of ``base`` at positions ``rows`` (sorted or not) of its own numbering."""
        block = np.asarray(self.base[rows], dtype=np.float32)
        _BYTES_SERVED[0] += block.nbytes
        if self._norms is not None:
            block = block / np.maximum(self._norms[rows], 1e-12)[:, None]
        return block

    def block(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, D) float32 unit rows ``start:stop`` (a view of ``base`` when possible)."""
        stop = min(int(stop), len(self))
        parts = []
        if start < self.num_base:
            end = min(stop, self.num_base)
            if self.index is None:
                block = np.asarray(self.base[start:end], dtype=np.float32)
                _BYTES_SERVED[0] += block.nbytes
                if self._norms is not None:
                    block = block / np.maximum(self._norms[start:end], 1e-12)[:, None]
                parts.append(block)
            else:
                parts.append(self._base_rows(self.index[start:end]))
        if stop > self.num_base and self.extra is not None:
            parts.append(self.extra[max(start - self.num_base, 0):stop - self.num_base])
        return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else \
            np.zeros((0, self.dim), np.float32)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), D) float32 unit rows at positions ``rows`` (a gather)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        in_base = rows < self.num_base
        if in_base.any():
            pos = rows[in_base] if self.index is None else self.index[rows[in_base]]
            order = np.argsort(pos, kind="stable")  # read a memory map in file order
            got = np.empty((len(pos), self.dim), np.float32)
            got[order] = self._base_rows(pos[order])
            out[in_base] = got
        if (~in_base).any():
            assert self.extra is not None
            out[~in_base] = self.extra[rows[~in_base] - self.num_base]
        return out

    def blocks(self, width: int = 0, *, span: Optional[slice] = None,
               elements: Optional[int] = None) -> Iterator[tuple]:
        """``(start, stop, rows (stop - start, D) float32)`` over ``span`` (default all rows) in
        blocks of at most ``elements`` (default :data:`BLOCK_ELEMENTS`) over ``max(D, width)`` columns."""
        lo, hi = (0, len(self)) if span is None else (span.start or 0, min(span.stop, len(self)))
        for rows in row_chunks(hi - lo, max(self.dim, int(width)), elements):
            start, stop = lo + rows.start, lo + rows.stop
            yield start, stop, self.block(start, stop)
