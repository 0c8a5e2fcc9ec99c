"""The k-nearest-neighbour graph of a feature matrix (cosine similarity of unit rows), exact for
small N and approximate (a faiss IVF index) above :data:`EXACT_MAX_ROWS`.

    graph = knn_graph(UnitRows(features), k=10)       # graph.indices (N, k) int64
    graph.describe()  # {"method": "ivf", "nlist": ..., "nprobe": ..., "recall": 0.97, ...}

- **exact**: query blocks against database blocks of fixed size (a (B, B) similarity block at a
  time: compute-bound sgemm, memory flat in N), a running top-k per query. N^2 D work.
- **ivf**: faiss ``IndexIVFFlat`` (inner product) over the unit rows: ``nlist`` k-means cells
  trained on a sample, each query scans its ``nprobe`` nearest cells. About ``N (nlist + nprobe
  N / nlist) D`` work. Its recall@k against the exact graph is measured on ``recall_queries``
  sampled queries and recorded; the settings were chosen by that recall and by the refined
  label accuracy (docs/scale.md).

Under a ``torch.distributed`` process group each process queries its share of the rows
(:func:`synref.distributed.row_share`) against one index: the coarse cells are trained in
process 0 and broadcast, so every process holds the same index.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from .arrays import UnitRows, as_tensor
from .distributed import broadcast_object, process_group, row_share
from .errors import InputError
from .progress import progress as progress_bar

__all__ = ["NeighborGraph", "knn_graph", "exact_knn", "ivf_knn", "graph_recall", "KNN_METHODS", "EXACT_MAX_ROWS",
           "ivf_settings"]

KNN_METHODS = ("auto", "exact", "ivf")
#: ``auto`` builds the exact graph up to this many rows and the IVF graph above (docs/scale.md).
EXACT_MAX_ROWS = 20_000
#: rows of one exact-search block (queries and database alike): a (B, B) float32 block.
EXACT_BLOCK = 2048


@dataclass
class NeighborGraph:
    """``indices`` (n, k) int64: row i's k most cosine-similar other rows, most similar first
    (n = the queried rows: all, or this process's share ``rows``)."""

    indices: np.ndarray
    method: str
    rows: slice
    params: Dict[str, Any] = field(default_factory=dict)
    recall: Optional[float] = None
    seconds: float = 0.0

    def describe(self) -> Dict[str, Any]:
        """What ``summary.json`` records of the graph."""
        return {"method": self.method, "k": int(self.indices.shape[1]), **self.params,
                "recall": None if self.recall is None else round(float(self.recall), 4),
                "seconds": round(self.seconds, 3)}


def _rows(x: Union[UnitRows, np.ndarray]) -> UnitRows:
    return x if isinstance(x, UnitRows) else UnitRows(x)


def exact_knn(x: Union[UnitRows, np.ndarray], k: int, *, queries: Optional[np.ndarray] = None,
              span: Optional[slice] = None, block: int = EXACT_BLOCK, desc: Optional[str] = None) -> np.ndarray:
    """(q, k) int64 exact neighbours (not the row itself) of the query rows ``queries`` (q,)
    (positions in ``x``) or of the rows ``span`` (default all), most similar first.

    The database is read in blocks of ``block`` rows, once per block of queries."""
    rows = _rows(x)
    n = len(rows)
    if queries is None:
        span = slice(0, n) if span is None else span
        queries = np.arange(span.start, span.stop)
    queries = np.asarray(queries, dtype=np.int64)
    k = min(int(k), n - 1)
    out = np.empty((len(queries), k), np.int64)
    if k <= 0 or len(queries) == 0:
        return out[:, :max(k, 0)]
    starts = range(0, len(queries), block)
    for qs in progress_bar(starts, desc=desc or "neighbours (exact)", unit="block",
                           enabled=None if len(starts) > 4 and desc is not None else False):
        q_idx = queries[qs:qs + block]
        contiguous = len(q_idx) > 0 and q_idx[-1] - q_idx[0] == len(q_idx) - 1
        q = as_tensor(rows.block(int(q_idx[0]), int(q_idx[-1]) + 1) if contiguous else rows.take(q_idx))
        best_sim = torch.full((len(q_idx), k), -math.inf)
        best_idx = torch.zeros((len(q_idx), k), dtype=torch.int64)
        self_idx = torch.as_tensor(q_idx)
        for start in range(0, n, block):
            stop = min(n, start + block)
            sim = q @ as_tensor(rows.block(start, stop)).T
            mine = (self_idx >= start) & (self_idx < stop)
            if mine.any():
                sim[torch.nonzero(mine).flatten(), self_idx[mine] - start] = -math.inf
            cand_sim = torch.cat([best_sim, sim], dim=1)
            cand_idx = torch.cat([best_idx, torch.arange(start, stop).expand(len(q_idx), -1)], dim=1)
            top = cand_sim.topk(k, dim=1)
            best_sim, best_idx = top.values, cand_idx.gather(1, top.indices)
        out[qs:qs + len(q_idx)] = best_idx.numpy()
    return out


def graph_recall(x: Union[UnitRows, np.ndarray], indices: np.ndarray, *, rows: slice, num_queries: int = 256,
                 seed: int = 0) -> float:
    """Mean recall@k of ``indices`` (the neighbours of ``rows``) against the exact graph,
    measured on ``num_queries`` sampled query rows."""
    n_rows = rows.stop - rows.start
    pick = np.sort(np.random.default_rng(seed).choice(n_rows, min(num_queries, n_rows), replace=False))
    exact = exact_knn(x, indices.shape[1], queries=rows.start + pick)
    hits = [len(np.intersect1d(indices[p], e)) for p, e in zip(pick, exact)]
    return float(np.sum(hits) / max(exact.size, 1))


def ivf_settings(n: int) -> Dict[str, int]:
    """The IVF index of :func:`ivf_knn` for ``n`` rows: ``nlist`` cells, ``nprobe`` probed per
    query, ``train_rows`` sampled for the k-means (chosen by measured recall, docs/scale.md)."""
    nlist = int(min(max(round(4 * math.sqrt(n)), 16), 16384))
    nprobe = int(min(nlist, max(16, nlist // 32)))
    return {"nlist": nlist, "nprobe": nprobe, "train_rows": int(min(n, 40 * nlist))}


def ivf_knn(x: Union[UnitRows, np.ndarray], k: int, *, span: Optional[slice] = None, seed: int = 0,
            nlist: Optional[int] = None, nprobe: Optional[int] = None, train_rows: Optional[int] = None
            ) -> tuple:
    """Approximate (q, k) neighbours of the rows ``span`` (default all) with a faiss IVF-Flat
    inner-product index over all rows of ``x``; returns (indices, settings). The k-means cells
    are trained in process 0 on ``train_rows`` sampled rows and shared with every process."""
    from .optional import require

    faiss = require("faiss", "the approximate neighbour graph (faiss-cpu)")
    rows = _rows(x)
    n, d = len(rows), rows.dim
    span = slice(0, n) if span is None else span
    settings = ivf_settings(n)
    settings.update({key: int(v) for key, v in (("nlist", nlist), ("nprobe", nprobe), ("train_rows", train_rows))
                     if v is not None})
    k = min(int(k), n - 1)
    rank, _ = process_group()
    centroids = None
    if rank == 0:
        sample = np.sort(np.random.default_rng(seed).choice(n, settings["train_rows"], replace=False))
        kmeans = faiss.Kmeans(d, settings["nlist"], niter=10, seed=int(seed) + 1, spherical=True,
                              max_points_per_centroid=max(1, settings["train_rows"] // settings["nlist"]))
        kmeans.train(np.ascontiguousarray(rows.take(sample)))
        centroids = kmeans.centroids
    centroids = broadcast_object(centroids)
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    index = faiss.IndexIVFFlat(quantizer, d, settings["nlist"], faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True
    for _, _, block in rows.blocks():
        index.add(np.ascontiguousarray(block))
    index.nprobe = settings["nprobe"]
    out = np.empty((span.stop - span.start, k), np.int64)
    step = 8192
    for start in progress_bar(range(span.start, span.stop, step), desc="neighbours (ivf)", unit="block",
                              enabled=None if span.stop - span.start > 4 * step else False):
        stop = min(span.stop, start + step)
        _, found = index.search(np.ascontiguousarray(rows.block(start, stop)), k + 1)
        own = np.arange(start, stop)[:, None]
        keep = found != own
        # drop the row itself (or the last candidate when the row was not found): k per row
        keep[keep.sum(axis=1) > k, -1] = False
        picked = found[keep].reshape(stop - start, k)
        out[start - span.start:stop - span.start] = picked
    if (out < 0).any():  # fewer than k rows in the probed cells: fill exactly
        bad = np.flatnonzero((out < 0).any(axis=1))
        out[bad] = exact_knn(rows, k, queries=span.start + bad)
    return out, settings


def knn_graph(x: Union[UnitRows, np.ndarray], k: int, *, method: str = "auto", span: Optional[slice] = None,
              seed: int = 0, recall_queries: int = 256, **ivf_options: Any) -> NeighborGraph:
    """The k-nearest-neighbour graph of the rows ``span`` (default: this process's share of all
    rows under a process group, else all) against all rows of ``x`` (N, D) (unit rows or not:
    cosine similarity). ``method``: ``auto`` (exact up to :data:`EXACT_MAX_ROWS` rows, else
    ``ivf``), ``exact`` or ``ivf``. The ivf graph's recall@k is measured on ``recall_queries``
    sampled queries (0: not measured)."""
    if method not in KNN_METHODS:
        raise InputError(f"unknown neighbour graph method {method!r}; choose one of: {', '.join(KNN_METHODS)}")
    rows = _rows(x)
    n = len(rows)
    if n < 2:
        raise InputError(f"a neighbour graph needs at least 2 rows, got {n}")
    if span is None:
        span = row_share(n, *process_group())
    t0 = time.perf_counter()
    if method == "auto":
        method = "exact" if n <= EXACT_MAX_ROWS else "ivf"
    if method == "exact":
        indices = exact_knn(rows, k, span=span, desc="neighbours (exact)")
        return NeighborGraph(indices, "exact", span, seconds=time.perf_counter() - t0)
    indices, settings = ivf_knn(rows, k, span=span, seed=seed, **ivf_options)
    seconds = time.perf_counter() - t0
    recall = graph_recall(rows, indices, rows=span, num_queries=recall_queries, seed=seed) if recall_queries else None
    return NeighborGraph(indices, "ivf", span, params=settings, recall=recall, seconds=seconds)
