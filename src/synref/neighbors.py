"""The k-nearest-neighbour graph of a feature matrix (cosine similarity of unit rows), exact for
small N and approximate (a faiss HNSW index) above :data:`EXACT_MAX_ROWS`.

    graph = knn_graph(UnitRows(features), k=10)       # graph.indices (N, k) int64
    graph.describe()  # {"method": "hnsw", "m": 16, ..., "recall": 0.97, "seconds": ...}

- **exact**: query blocks against database blocks of fixed size (a (B, B) similarity block at a
  time: compute-bound sgemm, memory flat in N), a running top-k per query. N^2 D work.
- **hnsw** (what ``auto`` uses above :data:`EXACT_MAX_ROWS`): faiss ``IndexHNSWFlat`` (or
  ``IndexHNSWSQ``, 8 bits per dimension), a navigable small-world graph, about ``N log N``
  distance evaluations to build and to query; its efSearch is calibrated after the build to
  reach :data:`TARGET_RECALL` on sampled rows.
- **ivf**: faiss ``IndexIVFScalarQuantizer``: k-means cells, each query scans its ``nprobe``
  nearest cells.

Optionally the rows are first projected on their leading principal components (``dims``) and
the candidates re-ranked by the full rows (``rerank``). The approximate graph's recall@k against
the exact one is measured on sampled queries and recorded; the defaults were chosen by that
recall on real CIFAR-10 EfficientNet-Lite0 features and on the scale benchmark's synthetic
features, and by the refined label accuracy (docs/scale.md).

Under a ``torch.distributed`` process group each process queries its share of the rows
(:func:`synref.distributed.row_share`) against one index, built in process 0 and sent to the
others.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from .arrays import UnitRows, as_tensor, count_bytes_served
from .distributed import broadcast_object, process_group, row_share
from .errors import InputError
from .progress import progress as progress_bar

__all__ = ["NeighborGraph", "knn_graph", "exact_knn", "ann_knn", "graph_recall", "KNN_METHODS", "EXACT_MAX_ROWS",
           "ivf_settings", "APPROXIMATE_METHOD", "HNSW_DEFAULTS", "pca_basis", "TARGET_RECALL"]

KNN_METHODS = ("auto", "exact", "hnsw", "ivf")
#: ``auto`` builds the exact graph up to this many rows and the approximate one above (docs/scale.md).
EXACT_MAX_ROWS = 20_000
#: the approximate index ``auto`` uses above :data:`EXACT_MAX_ROWS`.
APPROXIMATE_METHOD = "hnsw"
#: rows of one exact-search block (queries and database alike): a (B, B) float32 block.
EXACT_BLOCK = 2048
#: the approximate graph's defaults: an HNSW graph (``m`` links per node, ``ef_construction``)
#: over the rows projected on their ``dims`` leading principal components, stored as float32
#: (``storage``), whose ``rerank * k`` nearest candidates per query are re-ranked by the full
#: rows. Chosen by recall@10 against the exact graph and time (docs/scale.md): 0.983 on real
#: CIFAR-10 Lite0 features (10,000 rows), 0.975 on the scale benchmark's 50,000 synthetic rows.
HNSW_DEFAULTS: Dict[str, Any] = {"dims": 128, "rerank": 3, "m": 32, "ef_construction": 40, "storage": "flat"}
#: efSearch is not fixed: after the build, :func:`ann_knn` searches ``CALIBRATION_QUERIES`` sampled
#: rows (drawn separately from those :func:`graph_recall` reports) with efSearch 32, 40, 48, ... (steps of
#: ``EF_SEARCH_STEP``, at most ``EF_SEARCH_MAX``) and keeps the first whose recall@k against the
#: exact neighbours of those rows reaches ``TARGET_RECALL`` (docs/scale.md).
TARGET_RECALL = 0.95
CALIBRATION_QUERIES = 256
EF_SEARCH_STEP = 8
EF_SEARCH_MAX = 128


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
              span: Optional[slice] = None, block: Optional[int] = None, desc: Optional[str] = None) -> np.ndarray:
    """(q, k) int64 exact neighbours (not the row itself) of the query rows ``queries`` (q,)
    (positions in ``x``) or of the rows ``span`` (default all), most similar first.

    The database is read in blocks of ``block`` rows (default :data:`EXACT_BLOCK`), once per
    block of queries."""
    block = int(block or EXACT_BLOCK)
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
    """The IVF index of :func:`ann_knn` for ``n`` rows: ``nlist`` cells, ``nprobe`` probed per
    query, ``train_rows`` sampled for the k-means (chosen by measured recall, docs/scale.md)."""
    nlist = int(min(max(round(4 * math.sqrt(n)), 16), 16384))
    nprobe = int(min(nlist, max(16, nlist // 32)))
    return {"nlist": nlist, "nprobe": nprobe, "train_rows": int(min(n, 40 * nlist))}


def pca_basis(rows: UnitRows, dims: int, seed: int, sample: int = 20_000,
              cache: Optional[Dict[Any, Tuple[np.ndarray, np.ndarray]]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(mean (D,), components (D, dims)) of a sample of ``rows``: the leading eigenvectors of its
    covariance (float32 products, float64 eigensolver). ``cache`` (a dict the caller keeps for one
    set of rows): every eigenvector is kept there, so a later call for any ``dims`` of the same
    rows, seed and sample reads them instead of computing again (the neighbour graph's and the
    self-training heads' projections share one eigendecomposition)."""
    key = (len(rows), rows.dim, int(seed), int(sample))
    if cache is not None and key in cache:
        mean, vectors = cache[key]
        return mean, np.ascontiguousarray(vectors[:, :dims])
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), min(len(rows), sample), replace=False))
    x = as_tensor(rows.take(pick))
    mean = x.mean(dim=0)
    centred = x - mean
    values, vectors = torch.linalg.eigh((centred.T @ centred).double() / max(len(pick) - 1, 1))
    order = torch.argsort(values, descending=True)
    ordered = vectors[:, order].float().numpy()
    if cache is not None:
        cache[key] = (mean.numpy(), ordered)
    return mean.numpy(), np.ascontiguousarray(ordered[:, :dims])


#: rows added to a faiss index per call (projected: 64 MB at 128 dims). At 10^6 x 128 HNSW built
#: in 156 s from 131,072-row adds against 165 s from the 3,276-row blocks of the feature stream.
ADD_ROWS = 1 << 17


def ann_knn(x: Union[UnitRows, np.ndarray], k: int, *, span: Optional[slice] = None, seed: int = 0,
            index: str = "hnsw", dims: Optional[int] = HNSW_DEFAULTS["dims"], rerank: int = HNSW_DEFAULTS["rerank"],
            nlist: Optional[int] = None, nprobe: Optional[int] = None, train_rows: Optional[int] = None, m: int = HNSW_DEFAULTS["m"],
            ef_construction: int = HNSW_DEFAULTS["ef_construction"], ef_search: Optional[int] = None,
            storage: str = HNSW_DEFAULTS["storage"], pca_cache: Optional[Dict[Any, Any]] = None,
            target_recall: float = TARGET_RECALL) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Approximate (q, k) neighbours of the rows ``span`` (default all) of ``x``; returns (indices,
    settings). One faiss index over all rows (``hnsw``: a graph, ``ivf``: k-means cells), on the
    rows projected to their ``dims`` leading principal components (None: no projection), is
    built in process 0 and shared; each query takes its ``rerank * k`` nearest candidates from
    it and keeps the k most cosine-similar by the full rows (an exact re-ranking; ``rerank=0``:
    the index's own k nearest, no full row is read again). The defaults (:data:`HNSW_DEFAULTS`) were
    chosen by measured recall and time (docs/scale.md); HNSW's ``ef_search`` (None: calibrated)
    is the smallest efSearch whose recall@k on sampled rows reaches ``target_recall`` (see
    :data:`TARGET_RECALL`; recorded under ``calibration``). ``pca_cache``: see :func:`pca_basis`."""
    from .optional import require

    faiss = require("faiss", "the approximate neighbour graph (faiss-cpu)")
    rows = _rows(x)
    n, d = len(rows), rows.dim
    span = slice(0, n) if span is None else span
    k = min(int(k), n - 1)
    dims = None if dims is None or dims >= d else int(dims)
    candidates = min(n - 1, max(k, int(rerank) * k))  # rerank 0: the index's own k nearest
    if storage not in ("sq8", "flat"):
        raise InputError(f"unknown index storage {storage!r}; choose sq8 or flat")
    settings: Dict[str, Any] = {"index": index, "dims": dims or d, "storage": storage, "candidates": candidates}
    if index == "ivf":
        settings.update(ivf_settings(n))
        settings.update({key: int(v) for key, v in (("nlist", nlist), ("nprobe", nprobe), ("train_rows", train_rows))
                         if v is not None})
    elif index == "hnsw":
        settings.update({"m": int(m), "ef_construction": int(ef_construction),
                         "ef_search": int(ef_search or max(candidates + 1, 32))})
        if not 0.0 < float(target_recall) <= 1.0:
            raise InputError(f"target_recall must be in (0, 1], got {target_recall!r}")
    else:
        raise InputError(f"unknown approximate index {index!r}; choose hnsw or ivf")
    rank, _ = process_group()
    blob = None
    clock: Dict[str, float] = {}
    t0 = time.perf_counter()
    if rank == 0:
        projection = pca_basis(rows, dims, seed, cache=pca_cache) if dims is not None else None

        def project(block: np.ndarray) -> np.ndarray:
            if projection is None:
                return np.ascontiguousarray(block)
            return np.ascontiguousarray((block - projection[0]) @ projection[1])

        width = dims or d
        train = None  # a sample of the projected rows: the IVF cells' k-means, the 8-bit ranges (not HNSW-flat)
        if index == "ivf" or storage != "flat":
            train = project(rows.take(np.sort(np.random.default_rng(seed).choice(
                n, min(n, settings.get("train_rows", 20_000)), replace=False))))
        if index == "hnsw":
            built = faiss.IndexHNSWFlat(width, settings["m"], faiss.METRIC_L2) if storage == "flat" else \
                faiss.IndexHNSWSQ(width, faiss.ScalarQuantizer.QT_8bit, settings["m"], faiss.METRIC_L2)
            built.hnsw.efConstruction = settings["ef_construction"]
        else:
            kmeans = faiss.Kmeans(width, settings["nlist"], niter=10, seed=int(seed) + 1,
                                  max_points_per_centroid=max(1, len(train) // settings["nlist"]))
            kmeans.train(train)
            quantizer = faiss.IndexFlatL2(width)
            quantizer.add(kmeans.centroids)
            built = faiss.IndexIVFFlat(quantizer, width, settings["nlist"], faiss.METRIC_L2) if storage == "flat" \
                else faiss.IndexIVFScalarQuantizer(quantizer, width, settings["nlist"], faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_L2)
        if not built.is_trained:
            built.train(train)  # the 8-bit quantiser's per-dimension ranges (and nothing else)
        del train
        # projected rows go to the index ADD_ROWS at a time: fewer, larger adds build faster
        pending: List[np.ndarray] = []
        for start, stop, block in progress_bar(rows.blocks(), desc="neighbour index", unit="block",
                                               enabled=None if n > 100_000 else False):
            pending.append(project(block))
            if stop == n or sum(len(p) for p in pending) >= ADD_ROWS:
                built.add(np.concatenate(pending) if len(pending) > 1 else pending[0])
                pending = []
        clock["build"] = time.perf_counter() - t0
        if index == "hnsw" and ef_search is None:
            t1 = time.perf_counter()
            settings["ef_search"], settings["calibration"] = _calibrate_ef_search(
                rows, built, project, k, candidates, rerank, settings["ef_search"], float(target_recall), seed)
            clock["calibration"] = time.perf_counter() - t1
        blob = (projection, built, settings.get("ef_search"), settings.get("calibration"))
    if process_group()[1] > 1:  # one index, built once, sent to the other processes
        blob = broadcast_object(None if blob is None else (blob[0], faiss.serialize_index(blob[1]), *blob[2:]))
        blob = (blob[0], faiss.deserialize_index(blob[1]), *blob[2:])
    projection, built, chosen_ef, calibration = blob
    if index == "hnsw":
        if calibration is not None:
            settings.update(ef_search=chosen_ef, calibration=calibration)
        built.hnsw.efSearch = settings["ef_search"]
    else:
        built.nprobe = settings["nprobe"]
    out = np.empty((span.stop - span.start, k), np.int64)
    clock.update(search=0.0, rerank=0.0)
    step = 4096
    for start in progress_bar(range(span.start, span.stop, step), desc=f"neighbours ({index})", unit="block",
                              enabled=None if span.stop - span.start > 4 * step else False):
        stop = min(span.stop, start + step)
        block = rows.block(start, stop)
        t1 = time.perf_counter()
        query = block if projection is None else (block - projection[0]) @ projection[1]
        _, found = built.search(np.ascontiguousarray(query, dtype=np.float32), candidates + 1)
        t2 = time.perf_counter()
        out[start - span.start:stop - span.start] = _neighbours_of(rows, block, found, np.arange(start, stop), k, rerank)
        clock["search"] += t2 - t1
        clock["rerank"] += time.perf_counter() - t2
    settings["stage_seconds"] = {key: round(v, 2) for key, v in clock.items()}
    return out, settings


def _neighbours_of(rows: UnitRows, block: np.ndarray, found: np.ndarray, own: np.ndarray, k: int,
                   rerank: int) -> np.ndarray:
    """(B, k): the neighbours of the queries ``own`` (B,) (their rows ``block`` (B, D)) from the
    index's candidates ``found`` (B, k'): re-ranked by the full rows, or the index's own k."""
    return _rerank(rows, block, found, own, k) if rerank else _drop_self(rows, found, own, k)


def _calibrate_ef_search(rows: UnitRows, built: Any, project: Any, k: int, candidates: int, rerank: int,
                         start_ef: int, target: float, seed: int) -> Tuple[int, Dict[str, Any]]:
    """(efSearch, what was measured): the smallest efSearch from ``start_ef`` up (steps of
    :data:`EF_SEARCH_STEP`, at most :data:`EF_SEARCH_MAX`) whose recall@k on
    :data:`CALIBRATION_QUERIES` sampled rows (drawn separately from :func:`graph_recall`'s) reaches
    ``target``; the largest tried when none does."""
    n = len(rows)
    pick = np.sort(np.random.default_rng([int(seed), 1]).choice(n, min(CALIBRATION_QUERIES, n), replace=False))
    exact = exact_knn(rows, k, queries=pick)
    block = rows.take(pick)
    query = np.ascontiguousarray(project(block), dtype=np.float32)
    tried: Dict[str, float] = {}
    ef = int(start_ef)
    while True:
        built.hnsw.efSearch = ef
        _, found = built.search(query, candidates + 1)
        got = _neighbours_of(rows, block, found, pick, k, rerank)
        recall = float(sum(len(np.intersect1d(g, e)) for g, e in zip(got, exact)) / max(exact.size, 1))
        tried[str(ef)] = round(recall, 4)
        if recall >= target or ef >= max(EF_SEARCH_MAX, int(start_ef)):
            break
        ef = min(ef + EF_SEARCH_STEP, max(EF_SEARCH_MAX, int(start_ef)))
    return ef, {"target_recall": target, "queries": len(pick), "recall_by_ef_search": tried,
                "reached": recall >= target}


def _drop_self(rows: UnitRows, found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """(B, k): each query's found neighbours (B, k + 1) without the query itself (or without the
    last one when the query was not among them); rows with fewer than k found are filled exactly."""
    keep = (found != own[:, None]) & (found >= 0)
    keep[keep.sum(axis=1) > k, -1] = False
    out = np.full((len(found), k), -1, np.int64)
    counts = keep.sum(axis=1)
    full = counts == k
    out[full] = found[full][keep[full]].reshape(-1, k)
    if (~full).any():
        bad = np.flatnonzero(~full)
        out[bad] = exact_knn(rows, k, queries=own[bad])
    return out


def _rerank(rows: UnitRows, block: np.ndarray, found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """(B, k): of each query's candidates ``found`` (B, k') (-1: none), the k most cosine-similar
    other rows by the full unit rows (``block`` (B, D) are the queries')."""
    found = np.where(found == own[:, None], -1, found)
    fast = _rerank_in_place(rows, block, found, k)
    if fast is not None:
        return fast
    out = np.empty((len(found), k), np.int64)
    for lo in range(0, len(found), 256):
        cand = found[lo:lo + 256]
        flat = np.unique(cand[cand >= 0])
        vectors = as_tensor(rows.take(flat))
        sim_all = as_tensor(block[lo:lo + 256]) @ vectors.T                      # (b, unique)
        pos = torch.as_tensor(np.searchsorted(flat, np.maximum(cand, 0)))
        sim = sim_all.gather(1, pos)
        sim[torch.as_tensor(cand < 0)] = -math.inf
        top = sim.topk(k, dim=1).indices.numpy()
        out[lo:lo + len(cand)] = np.take_along_axis(cand, top, axis=1)
    if (out < 0).any():  # fewer than k candidates found: fill exactly
        bad = np.flatnonzero((out < 0).any(axis=1))
        out[bad] = exact_knn(rows, k, queries=own[bad])
    return out


def _rerank_in_place(rows: UnitRows, block: np.ndarray, found: np.ndarray, k: int) -> Optional[np.ndarray]:
    """:func:`_rerank` by faiss's inner products of each query with its own candidates, read in
    place from the feature matrix (no gathered copy); None when the rows are not a float32
    C-contiguous matrix (then the gather path runs)."""
    base = rows.base
    if (base.dtype != np.float32 or not base.flags.c_contiguous or (found >= rows.num_base).any()
            or (found < 0).all(axis=1).any()):
        return None
    import faiss

    order = np.argsort(found < 0, axis=1, kind="stable")  # faiss stops at a row's first -1
    cand = np.take_along_axis(found, order, axis=1)
    ids = cand if rows.index is None else np.where(cand >= 0, rows.index[np.maximum(cand, 0)], -1)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    query = np.ascontiguousarray(block, dtype=np.float32)
    b, width = ids.shape
    values = np.empty((b, width), np.float32)
    got = np.empty((b, width), np.int64)
    faiss.knn_inner_products_by_idx(faiss.swig_ptr(query), faiss.swig_ptr(base), faiss.swig_ptr(ids), rows.dim, b,
                                    len(base), width, width, faiss.swig_ptr(values), faiss.swig_ptr(got), width)
    count_bytes_served(int((ids >= 0).sum()) * rows.dim * 4)
    valid = got >= 0
    if rows._norms is not None:
        values = values / np.maximum(rows._norms[np.maximum(got, 0)], 1e-12)
    values[~valid] = -np.inf
    top = np.argsort(-values, axis=1, kind="stable")[:, :k]
    chosen = np.take_along_axis(got, top, axis=1)
    if rows.index is not None:  # back to the view's row numbering
        chosen = _view_positions(rows.index, chosen)
    if not np.take_along_axis(valid, top, axis=1).all():  # fewer than k candidates: the gather path fills
        return None
    return chosen


def _view_positions(index: np.ndarray, base_ids: np.ndarray) -> np.ndarray:
    """Positions in the row view of ``index`` (N,) of the base rows ``base_ids`` (all present)."""
    order = np.argsort(index, kind="stable")
    return order[np.searchsorted(index, base_ids, sorter=order)]


def knn_graph(x: Union[UnitRows, np.ndarray], k: int, *, method: str = "auto", span: Optional[slice] = None,
              seed: int = 0, recall_queries: int = 256, **ann_options: Any) -> NeighborGraph:
    """The k-nearest-neighbour graph of the rows ``span`` (default: this process's share of all
    rows under a process group, else all) against all rows of ``x`` (N, D) (unit rows or not:
    cosine similarity). ``method``: ``auto`` (exact up to :data:`EXACT_MAX_ROWS` rows, else
    :data:`APPROXIMATE_METHOD`), ``exact``, ``hnsw`` or ``ivf`` (``ann_options``: see
    :func:`ann_knn`). An approximate graph's recall@k is measured on ``recall_queries`` sampled
    queries (0: not measured)."""
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
        method = "exact" if n <= EXACT_MAX_ROWS else APPROXIMATE_METHOD
    if method == "exact":
        indices = exact_knn(rows, k, span=span, desc="neighbours (exact)")
        return NeighborGraph(indices, "exact", span, seconds=time.perf_counter() - t0)
    indices, settings = ann_knn(rows, k, span=span, seed=seed, index=method, **ann_options)
    seconds = time.perf_counter() - t0
    recall = graph_recall(rows, indices, rows=span, num_queries=recall_queries, seed=seed) if recall_queries else None
    return NeighborGraph(indices, method, span, params=settings, recall=recall, seconds=seconds)
