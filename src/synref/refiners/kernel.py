"""The streaming kernel of every refiner: prototype similarity, the score matrix, relabeling.

The paper's rule (ICIP 2025, "Noisy Label Refinement with Semantically Reliable Synthetic
Images"): for a real image with features ``f`` (D,), softmax ``p`` (C,) and noisy label ``y``,

    score_c = alpha * cos(f, prototype_c) + (1 - alpha) * p_c
    c* = argmax_c score_c;  new label = c* if score_{c*} >= threshold else y

with ``prototype_c`` the mean feature of the class-``c`` anchors. Everything here is
vectorised and processes the N samples in chunks, so N in the millions fits in memory.

Scale: :func:`refine_labels_chunked` (which :func:`refine_labels` runs on) streams the samples
once, in chunks of a few thousand rows that stay in cache: row norms, one sgemm of the raw
features against the (D, C) unit prototypes, the cosine as that product divided by the row norm
(C columns to scale instead of D), the score mix, argmax, best and given score, and the NaN/inf
check, all fused per chunk; with ``keep_scores=False`` nothing of size (N, C) is allocated.
Features may be a read-only ``np.load(..., mmap_mode="r")`` array: chunks are read in place.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..validation import (CHUNK_ROWS, as_2d_float, check_finite, check_labels, check_unit_interval, chunks,
                          first_bad_row, infer_num_classes)
from .prototypes import class_prototypes, l2_normalize
from .result import Decision, RefinementResult

DEFAULT_ALPHA = 0.5
DEFAULT_THRESHOLD = 0.6
_CHUNK_ROWS = CHUNK_ROWS
# Rows per chunk of the streaming kernel: a (4096, 512) float32 chunk is 8 MiB, so the norm
# pass and the sgemm read it from cache; measured best of 1024..65536 at N=1e6, D=512, C=100.
_STREAM_ROWS = 4096
# Rows of every sgemm call (see _cosine_chunk): fixed, so results do not depend on the chunking.
_GEMM_ROWS = 1024
_EPS = 1e-12


def prototype_similarity(features: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample to each prototype: (N, D) x (C, D) -> (N, C) float32.

    Computed as ``(features @ unit_prototypes.T) / max(|features_row|, 1e-12)`` chunk by chunk
    (the same kernel as :func:`refine_labels`, so both agree to the bit).
    """
    feats = as_2d_float("features", features)
    unit_t = _unit_prototypes_t(as_2d_float("prototypes", prototypes, cols=feats.shape[1]))
    out = np.empty((len(feats), unit_t.shape[1]), dtype=np.float32)
    bufs = _Buffers(min(_stream_rows(None), -(-max(len(feats), 1) // _GEMM_ROWS) * _GEMM_ROWS),
                    feats.shape[1], unit_t.shape[1])
    with _single_thread_blas():
        for sl in chunks(len(feats), bufs.rows):
            _cosine_chunk(feats[sl], unit_t, bufs, out[sl])
    return out


def score_matrix(pred_probs: Optional[np.ndarray], similarity: np.ndarray, *,
                 alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """``alpha * similarity + (1 - alpha) * pred_probs``: (N, C) float32.

    ``pred_probs`` may be None only when ``alpha == 1`` (prototype similarity alone).
    """
    alpha = check_unit_interval("alpha", alpha)
    if pred_probs is None:
        if alpha != 1.0:
            raise InputError("pred_probs are needed unless alpha is 1")
        return np.asarray(similarity, dtype=np.float32)
    probs = as_2d_float("pred_probs", pred_probs, rows=similarity.shape[0], cols=similarity.shape[1])
    return (alpha * similarity + (1.0 - alpha) * probs).astype(np.float32)


# ----------------------------------------------------------------------------- the rule
def relabel(labels: np.ndarray, scores: np.ndarray, *, threshold: float = DEFAULT_THRESHOLD,
            alpha: float = DEFAULT_ALPHA, keep_scores: bool = True) -> RefinementResult:
    """Apply the threshold rule to a precomputed (N, C) score matrix."""
    threshold = float(threshold)
    scores = as_2d_float("scores", scores)
    labels = check_labels(np.asarray(labels).astype(np.int64), scores.shape[1])
    if len(labels) != len(scores):
        raise InputError(f"{len(labels)} labels but {len(scores)} score rows")
    best_class = np.empty(len(labels), dtype=np.int64)
    best_score = np.empty(len(labels), dtype=np.float32)
    given_score = np.empty(len(labels), dtype=np.float32)
    for sl in chunks(len(labels)):
        block = scores[sl]
        best_class[sl] = block.argmax(axis=1)
        rows = np.arange(block.shape[0])
        best_score[sl] = block[rows, best_class[sl]]
        given_score[sl] = block[rows, labels[sl]]
    refined = np.where(best_score >= threshold, best_class, labels)
    return RefinementResult(labels=labels, refined_labels=refined, best_class=best_class,
                            best_score=best_score, given_score=given_score,
                            decision=Decision.score_rule(alpha, threshold), scores=scores if keep_scores else None)


def refine_labels(labels: np.ndarray, *, pred_probs: Optional[np.ndarray], features: np.ndarray,
                  anchor_features: np.ndarray, anchor_labels: np.ndarray,
                  alpha: float = DEFAULT_ALPHA, threshold: float = DEFAULT_THRESHOLD,
                  prototypes: Optional[np.ndarray] = None,
                  class_names: Optional[Sequence[str]] = None,
                  keep_scores: bool = True) -> RefinementResult:
    """Refine noisy labels with synthetic anchors (the paper's rule, vectorised and chunked).

    Args:
        labels: (N,) given labels in [0, C).
        pred_probs: (N, C) softmax of a classifier (None allowed only with alpha == 1).
        features: (N, D) features of the real images.
        anchor_features: (M, D) features of the anchors, in the same feature space.
        anchor_labels: (M,) class of each anchor.
        alpha: weight of the prototype similarity; threshold: minimum best score to relabel.
        prototypes: (C, D) to use instead of anchor means (e.g. adapted prototypes).
        keep_scores: keep the (N, C) score matrix on the result (memory: 4*N*C bytes).
    Returns a RefinementResult. Runs on :func:`refine_labels_chunked` (same result, to the bit).
    """
    return refine_labels_chunked(labels, pred_probs=pred_probs, features=features,
                                 anchor_features=anchor_features, anchor_labels=anchor_labels,
                                 prototypes=prototypes, alpha=alpha, threshold=threshold,
                                 class_names=class_names, keep_scores=keep_scores)


# ----------------------------------------------------------------------------- streaming kernel
class _Buffers:
    """Per-worker scratch reused across chunks: nothing of size (N, .) is allocated per chunk."""

    def __init__(self, rows: int, dim: int, num_classes: int) -> None:
        self.rows = rows
        self.dim = dim
        self.norms = np.empty(rows, dtype=np.float32)
        self.sim = np.empty((rows, num_classes), dtype=np.float32)
        self.tmp = np.empty((rows, num_classes), dtype=np.float32)
        self.pad_out = np.empty((_GEMM_ROWS, num_classes), dtype=np.float32)
        self.arange = np.arange(rows)
        self._feats: Optional[np.ndarray] = None
        self._pad: Optional[np.ndarray] = None

    def feats(self, n: int) -> np.ndarray:
        if self._feats is None:  # only for features that are not C-contiguous float32
            self._feats = np.empty((self.rows, self.dim), dtype=np.float32)
        return self._feats[:n]

    def pad(self) -> np.ndarray:
        if self._pad is None:  # only for the last, partial block
            self._pad = np.zeros((_GEMM_ROWS, self.dim), dtype=np.float32)
        return self._pad


def _unit_prototypes_t(prototypes: np.ndarray) -> np.ndarray:
    """(C, D) prototypes -> (D, C) C-contiguous float32 with unit columns (the sgemm's B)."""
    return np.ascontiguousarray(l2_normalize(prototypes).T)


def _stream_rows(chunk_rows: Optional[int]) -> int:
    """Rows per chunk: a multiple of the sgemm block (default ``_STREAM_ROWS``)."""
    rows = int(chunk_rows) if chunk_rows is not None else min(_CHUNK_ROWS, _STREAM_ROWS)
    if rows < 1:
        raise InputError(f"chunk_rows must be at least 1, got {chunk_rows}")
    return -(-rows // _GEMM_ROWS) * _GEMM_ROWS


def _cosine_chunk(x: np.ndarray, unit_t: np.ndarray, bufs: _Buffers, out: np.ndarray) -> np.ndarray:
    """Cosine of rows ``x`` (n, D) to the unit prototypes ``unit_t`` (D, C), written to ``out``
    (n, C) float32. Returns the (n,) row norms (before the eps floor: NaN/inf flag a bad row).

    ``x`` must start at a multiple of ``_GEMM_ROWS`` in the full array. BLAS's sgemm rounds a row
    differently depending on the call's row count, so every call has exactly ``_GEMM_ROWS`` rows
    (the array's last partial block is zero-padded): a sample's similarity is then the same bits
    whatever the chunking or the number of workers.
    """
    n = len(x)
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        buf = bufs.feats(n)
        np.copyto(buf, x, casting="unsafe")
        x = buf
    norms = bufs.norms[:n]
    np.einsum("ij,ij->i", x, x, out=norms)
    np.sqrt(norms, out=norms)
    full = n - n % _GEMM_ROWS
    for start in range(0, full, _GEMM_ROWS):
        np.dot(x[start:start + _GEMM_ROWS], unit_t, out=out[start:start + _GEMM_ROWS])
    if full < n:
        pad = bufs.pad()
        pad[:n - full] = x[full:]
        np.dot(pad, unit_t, out=bufs.pad_out)
        out[full:] = bufs.pad_out[:n - full]
    np.divide(out, np.maximum(norms, np.float32(_EPS))[:, None], out=out)
    return norms


class _single_thread_blas:
    """BLAS limited to one thread (threadpoolctl) for the kernel's fixed-shape sgemm calls;
    parallelism comes from the worker threads instead."""

    def __enter__(self) -> "_single_thread_blas":
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            self._ctx = None
        else:
            self._ctx = threadpool_limits(limits=1, user_api="blas")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ctx is not None:
            self._ctx.restore_original_limits()


def _softmax_rows(z: np.ndarray, temperature: float) -> None:
    """In place, exactly as :func:`similarity_to_probs` computes one chunk."""
    np.divide(z, np.float32(temperature), out=z)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)


def refine_labels_chunked(labels: np.ndarray, *, pred_probs: Optional[np.ndarray], features: np.ndarray,
                          prototypes: Optional[np.ndarray] = None,
                          anchor_features: Optional[np.ndarray] = None,
                          anchor_labels: Optional[np.ndarray] = None,
                          alpha: float = DEFAULT_ALPHA, threshold: float = DEFAULT_THRESHOLD,
                          chunk_rows: Optional[int] = None, keep_scores: bool = False,
                          temperature: Optional[float] = None,
                          class_names: Optional[Sequence[str]] = None,
                          num_threads: Optional[int] = None, keep_similarity: bool = False) -> RefinementResult:
    """The paper's rule in one streaming pass over the samples (for N in the millions).

    ``score = alpha * s + (1 - alpha) * pred_probs`` with ``s`` the cosine to the class
    prototypes, or ``similarity_to_probs(cosine, temperature)`` when ``temperature`` is given
    (synref's calibrated score). Same result as
    ``relabel(labels, score_matrix(pred_probs, s, alpha=alpha), threshold=threshold)``.

    Args:
        labels: (N,) given labels in [0, C).
        pred_probs: (N, C) float softmax (any float dtype, may be memory-mapped); None only
            with alpha == 1.
        features: (N, D) features; float32 C-contiguous arrays (e.g. ``np.load(path,
            mmap_mode="r")``) are read in place, other dtypes converted chunk by chunk.
        prototypes: (C, D) class prototypes, or give ``anchor_features`` (M, D) and
            ``anchor_labels`` (M,) to use the anchor means.
        chunk_rows: rows per chunk (default 4096: the chunk stays in cache), rounded up to a
            multiple of 1024. The result is the same to the bit for any value.
        keep_scores: also return the (N, C) float32 score matrix (4*N*C bytes).
        keep_similarity: also return the (N, C) float32 similarity term (calibrated when
            ``temperature`` is given) as ``info["similarity"]``.
        temperature: calibrate the similarity (see :func:`fit_similarity_temperature`).
        num_threads: workers over chunks (default: the usable CPUs, at most 8, or
            ``SYNREF_NUM_THREADS``; each runs
            single-threaded BLAS on its own chunks, so the norm/score/argmax work runs in
            parallel too). 1 = the calling thread only. Results do not depend on it.
    Raises InputError on bad shapes/options and, in the same pass, naming the first sample
    whose features or pred_probs hold a NaN or infinite value.
    """
    alpha = check_unit_interval("alpha", alpha)
    threshold = float(threshold)
    if temperature is not None and not temperature > 0:
        raise InputError(f"temperature must be > 0, got {temperature}")
    feats = as_2d_float("features", features)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(feats):
        raise InputError(f"{labels.size} labels but {len(feats)} feature rows")
    probs: Optional[np.ndarray] = None
    if pred_probs is not None:
        probs = as_2d_float("pred_probs", pred_probs, rows=len(feats))
    elif alpha != 1.0:
        raise InputError("pred_probs are needed unless alpha is 1")
    num_classes = infer_num_classes(pred_probs=probs, prototypes=prototypes, anchor_labels=anchor_labels,
                                    labels=labels)
    if prototypes is None:
        if anchor_features is None or anchor_labels is None:
            raise InputError("give prototypes or anchor_features and anchor_labels")
        if np.asarray(anchor_features).ndim == 2 and np.asarray(anchor_features).shape[1] != feats.shape[1]:
            raise InputError(f"anchor_features have {np.asarray(anchor_features).shape[1]} dimensions, "
                             f"features have {feats.shape[1]}")
        prototypes = class_prototypes(anchor_features, anchor_labels, num_classes, class_names=class_names)
    protos = as_2d_float("prototypes", prototypes, cols=feats.shape[1])
    if len(protos) != num_classes:
        raise InputError(f"pred_probs has {num_classes} columns but there are {len(protos)} prototypes")
    check_finite("prototypes", protos)
    labels = check_labels(labels.astype(np.int64), num_classes)
    unit_t = _unit_prototypes_t(protos)

    n_total = len(feats)
    rows = min(_stream_rows(chunk_rows), -(-max(n_total, 1) // _GEMM_ROWS) * _GEMM_ROWS)
    best_class = np.empty(n_total, dtype=np.int64)
    best_score = np.empty(n_total, dtype=np.float32)
    given_score = np.empty(n_total, dtype=np.float32)
    scores = np.empty((n_total, num_classes), dtype=np.float32) if keep_scores else None
    similarity = np.empty((n_total, num_classes), dtype=np.float32) if keep_similarity else None
    alpha32, beta = np.float32(alpha), 1.0 - alpha

    def run(start: int, stop: int, bufs: _Buffers) -> None:
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # bad rows raise below
            _run(start, stop, bufs)

    def _run(start: int, stop: int, bufs: _Buffers) -> None:
        n = stop - start
        block = scores[start:stop] if scores is not None else bufs.sim[:n]
        norms = _cosine_chunk(feats[start:stop], unit_t, bufs, block)
        if temperature is not None:
            _softmax_rows(block, temperature)
        if similarity is not None:
            similarity[start:stop] = block
        if probs is not None:
            p = probs[start:stop]
            np.multiply(block, alpha32, out=block)
            if p.dtype == np.float32:
                np.add(block, np.multiply(p, beta, out=bufs.tmp[:n]), out=block)
            else:  # float16/float64: the same arithmetic as score_matrix
                np.add(block, beta * p, out=block, casting="unsafe")
        # A NaN/inf anywhere makes the sums non-finite (one cheap pass); then find the culprit.
        if not (np.isfinite(np.add.reduce(norms)) and np.isfinite(np.add.reduce(block, axis=None))):
            first_bad_row("features", feats[start:stop], start)
            if probs is not None:
                first_bad_row("pred_probs", probs[start:stop], start)
        best = np.argmax(block, axis=1, out=best_class[start:stop])
        idx = bufs.arange[:n]
        best_score[start:stop] = block[idx, best]
        given_score[start:stop] = block[idx, labels[start:stop]]

    starts = list(range(0, n_total, rows))
    workers = _num_workers(num_threads, len(starts))
    with _single_thread_blas():
        if workers <= 1:
            bufs = _Buffers(rows, feats.shape[1], num_classes)
            for start in starts:
                run(start, min(start + rows, n_total), bufs)
        else:
            _run_threaded(run, starts, rows, n_total, workers, feats.shape[1], num_classes)
    refined = np.where(best_score >= threshold, best_class, labels)
    info: Dict[str, object] = {"temperature": temperature} if temperature is not None else {}
    if similarity is not None:
        info["similarity"] = similarity
    return RefinementResult(labels=labels, refined_labels=refined, best_class=best_class,
                            best_score=best_score, given_score=given_score,
                            decision=Decision.score_rule(alpha, threshold), scores=scores, info=info)


def refine_by_fold(labels: np.ndarray, *, pred_probs: Optional[np.ndarray], features: np.ndarray,
                   fold_ids: Optional[np.ndarray], prototypes: Sequence[np.ndarray],
                   temperatures: Sequence[Optional[float]], alpha: float = DEFAULT_ALPHA,
                   threshold: float = DEFAULT_THRESHOLD, keep_scores: bool = False, keep_similarity: bool = False,
                   chunk_rows: Optional[int] = None, num_threads: Optional[int] = None) -> RefinementResult:
    """:func:`refine_labels_chunked` when every fold has its own feature space: the samples of
    fold k (``fold_ids == k``) are scored against ``prototypes[k]`` (C, D) with
    ``temperatures[k]``; with ``fold_ids=None`` there is one space (``prototypes[0]``). The same
    bits as scoring each fold's rows alone (the kernel's result does not depend on the chunking)."""
    kw = dict(alpha=alpha, threshold=threshold, keep_scores=keep_scores, keep_similarity=keep_similarity,
              chunk_rows=chunk_rows, num_threads=num_threads)
    if fold_ids is None:
        return refine_labels_chunked(labels, pred_probs=pred_probs, features=features, prototypes=prototypes[0],
                                     temperature=temperatures[0], **kw)
    labels = np.asarray(labels, dtype=np.int64)
    fold_ids = np.asarray(fold_ids)
    if len(fold_ids) != len(labels) or (len(fold_ids) and not 0 <= fold_ids.min() <= fold_ids.max() < len(prototypes)):
        raise InputError(f"fold_ids must be {len(labels)} fold indices in [0, {len(prototypes)})")
    n, c = len(labels), int(np.shape(prototypes[0])[0])
    best_class = np.empty(n, dtype=np.int64)
    best_score = np.empty(n, dtype=np.float32)
    given_score = np.empty(n, dtype=np.float32)
    refined = np.empty(n, dtype=np.int64)
    scores = np.empty((n, c), dtype=np.float32) if keep_scores else None
    similarity = np.empty((n, c), dtype=np.float32) if keep_similarity else None
    for k in range(len(prototypes)):
        held = np.flatnonzero(fold_ids == k)
        if held.size == 0:
            continue
        part = refine_labels_chunked(labels[held], pred_probs=None if pred_probs is None else pred_probs[held],
                                     features=features[held], prototypes=prototypes[k],
                                     temperature=temperatures[k], **kw)
        best_class[held], best_score[held] = part.best_class, part.best_score
        given_score[held], refined[held] = part.given_score, part.refined_labels
        if scores is not None:
            scores[held] = part.scores
        if similarity is not None:
            similarity[held] = part.info["similarity"]
    info: Dict[str, object] = {"similarity": similarity} if similarity is not None else {}
    return RefinementResult(labels=labels, refined_labels=refined, best_class=best_class, best_score=best_score,
                            given_score=given_score, decision=Decision.score_rule(alpha, threshold),
                            scores=scores, info=info)


def _num_workers(num_threads: Optional[int], num_chunks: int) -> int:
    if num_threads is None:
        env = os.environ.get("SYNREF_NUM_THREADS")
        if env:
            try:
                num_threads = int(env)
            except ValueError:
                raise InputError(f"SYNREF_NUM_THREADS must be an integer, got {env!r}") from None
        else:
            try:
                cpus = len(os.sched_getaffinity(0))
            except AttributeError:  # pragma: no cover - not Linux
                cpus = os.cpu_count() or 1
            num_threads = min(8, cpus)
    if num_threads < 1:
        raise InputError(f"num_threads must be at least 1, got {num_threads}")
    # Threads pay only with at least two chunks per worker.
    return max(1, min(num_threads, num_chunks // 2))


def _run_threaded(run, starts: List[int], rows: int, n_total: int, workers: int, dim: int,
                  num_classes: int) -> None:
    """Chunks dealt round-robin to ``workers`` threads (numpy releases the GIL in sgemm and the
    ufuncs, so the workers run in parallel; the caller holds BLAS at one thread)."""

    def worker(k: int) -> None:
        bufs = _Buffers(rows, dim, num_classes)
        for start in starts[k::workers]:
            run(start, min(start + rows, n_total), bufs)

    with ThreadPoolExecutor(workers) as pool:
        for fut in [pool.submit(worker, k) for k in range(workers)]:
            fut.result()



def prototype_accuracy(features: np.ndarray, labels: np.ndarray, anchor_features: np.ndarray,
                       anchor_labels: np.ndarray, num_classes: int) -> float:
    """Accuracy of ``argmax`` cosine similarity to the anchor class prototypes (how well a
    feature space lets the anchors name the real images' classes)."""
    protos = class_prototypes(anchor_features, anchor_labels, num_classes)
    sim = prototype_similarity(features, protos)
    return float(np.mean(sim.argmax(1) == np.asarray(labels)))
