"""Synthetic-anchor label refinement: prototypes, score matrix, relabeling.

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

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .data import check_labels
from .errors import InputError

DEFAULT_ALPHA = 0.5
DEFAULT_THRESHOLD = 0.6
_CHUNK_ROWS = 65536
# Rows per chunk of the streaming kernel: a (4096, 512) float32 chunk is 8 MiB, so the norm
# pass and the sgemm read it from cache; measured best of 1024..65536 at N=1e6, D=512, C=100.
_STREAM_ROWS = 4096
# Rows of every sgemm call (see _cosine_chunk): fixed, so results do not depend on the chunking.
_GEMM_ROWS = 1024
_EPS = 1e-12


# ----------------------------------------------------------------------------- validation
def _as_2d_float(name: str, array: np.ndarray, *, rows: Optional[int] = None,
                 cols: Optional[int] = None) -> np.ndarray:
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


def _check_finite(name: str, array: np.ndarray) -> None:
    for start in range(0, len(array), _CHUNK_ROWS):
        block = array[start:start + _CHUNK_ROWS]
        finite = np.isfinite(block)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite.all(axis=1))[0])
            raise InputError(f"{name}: sample {row} has a NaN or infinite value")


def _check_unit_interval(name: str, value: float) -> float:
    value = float(value)
    if not (0.0 <= value <= 1.0):
        raise InputError(f"{name} must be in [0, 1], got {value}")
    return value


def _chunks(n: int, size: int = _CHUNK_ROWS) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` (N, D) scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


# ----------------------------------------------------------------------------- prototypes
def class_prototypes(anchor_features: np.ndarray, anchor_labels: np.ndarray, num_classes: int,
                     *, class_names: Optional[Sequence[str]] = None,
                     normalize_anchors: bool = False) -> np.ndarray:
    """One prototype per class: the mean anchor feature. Returns (C, D) float32.

    Args:
        anchor_features: (M, D) features of the synthetic anchors.
        anchor_labels: (M,) class index of each anchor.
        normalize_anchors: L2-normalise each anchor before averaging (the paper averages the
            raw features, the default).
    Raises InputError naming the first class that has no anchors.
    """
    feats = _as_2d_float("anchor_features", anchor_features)
    labels = check_labels(np.asarray(anchor_labels), num_classes, what="anchor_labels")
    if len(labels) != len(feats):
        raise InputError(f"{len(feats)} anchor features but {len(labels)} anchor labels")
    _check_finite("anchor_features", feats)
    counts = np.bincount(labels, minlength=num_classes)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        c = int(missing[0])
        name = f"{c} ({class_names[c]!r})" if class_names is not None else str(c)
        raise InputError(f"class {name} has no anchors ({missing.size} classes without anchors)")
    if normalize_anchors:
        feats = l2_normalize(feats)
    sums = np.zeros((num_classes, feats.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, feats)
    return (sums / counts[:, None]).astype(np.float32)


def prototype_similarity(features: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample to each prototype: (N, D) x (C, D) -> (N, C) float32.

    Computed as ``(features @ unit_prototypes.T) / max(|features_row|, 1e-12)`` chunk by chunk
    (the same kernel as :func:`refine_labels`, so both agree to the bit).
    """
    feats = _as_2d_float("features", features)
    unit_t = _unit_prototypes_t(_as_2d_float("prototypes", prototypes, cols=feats.shape[1]))
    out = np.empty((len(feats), unit_t.shape[1]), dtype=np.float32)
    bufs = _Buffers(min(_stream_rows(None), -(-max(len(feats), 1) // _GEMM_ROWS) * _GEMM_ROWS),
                    feats.shape[1], unit_t.shape[1])
    with _single_thread_blas():
        for sl in _chunks(len(feats), bufs.rows):
            _cosine_chunk(feats[sl], unit_t, bufs, out[sl])
    return out


def score_matrix(pred_probs: Optional[np.ndarray], similarity: np.ndarray, *,
                 alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """``alpha * similarity + (1 - alpha) * pred_probs``: (N, C) float32.

    ``pred_probs`` may be None only when ``alpha == 1`` (prototype similarity alone).
    """
    alpha = _check_unit_interval("alpha", alpha)
    if pred_probs is None:
        if alpha != 1.0:
            raise InputError("pred_probs are needed unless alpha is 1")
        return np.asarray(similarity, dtype=np.float32)
    probs = _as_2d_float("pred_probs", pred_probs, rows=similarity.shape[0], cols=similarity.shape[1])
    return (alpha * similarity + (1.0 - alpha) * probs).astype(np.float32)


# ----------------------------------------------------------------------------- result
@dataclass
class RefinementResult:
    """What refinement decided, per sample.

    Attributes:
        labels: (N,) the given (noisy) labels.
        refined_labels: (N,) labels after refinement.
        scores: (N, C) the score matrix (None if not kept, see ``keep_scores``).
        best_class: (N,) argmax of the scores.
        best_score: (N,) the best score.
        given_score: (N,) the score of the given label.
        alpha, threshold: the rule's parameters.
    """

    labels: np.ndarray
    refined_labels: np.ndarray
    best_class: np.ndarray
    best_score: np.ndarray
    given_score: np.ndarray
    alpha: float
    threshold: float
    scores: Optional[np.ndarray] = None
    info: Dict[str, object] = field(default_factory=dict)

    @property
    def changed(self) -> np.ndarray:
        """(N,) bool: the label was changed."""
        return self.refined_labels != self.labels

    @property
    def issue_mask(self) -> np.ndarray:
        """(N,) bool, cleanlab's ``find_label_issues`` shape: samples whose label is judged wrong."""
        return self.changed

    @property
    def label_quality(self) -> np.ndarray:
        """(N,) in [0, 1]: how much the given label is trusted (1 = it is the best class).

        The given label's score divided by the best score, clipped to [0, 1]; cleanlab's
        ``get_label_quality_scores`` shape (low = likely wrong).
        """
        best = np.maximum(self.best_score, 1e-12)
        return np.clip(self.given_score / best, 0.0, 1.0).astype(np.float32)

    def ranked_issues(self) -> np.ndarray:
        """Indices of the changed samples, most severe first (largest best - given score margin)."""
        idx = np.flatnonzero(self.changed)
        margin = self.best_score[idx] - self.given_score[idx]
        return idx[np.argsort(-margin, kind="stable")]

    def num_changed(self) -> int:
        return int(self.changed.sum())

    def evaluate(self, true_labels: np.ndarray) -> Dict[str, float]:
        """Label accuracy before/after and the precision/recall of the relabeling (fractions)."""
        return relabel_metrics(self.labels, self.refined_labels, true_labels)


def relabel_metrics(noisy_labels: np.ndarray, refined_labels: np.ndarray,
                    true_labels: np.ndarray) -> Dict[str, float]:
    """Fractions in [0, 1]:

    noisy_label_acc / refined_label_acc: label accuracy against the true labels;
    relabel_precision: of the changed labels, the fraction now right;
    relabel_recall: of the wrong labels, the fraction now right;
    num_changed: how many labels changed (a count).
    """
    noisy = np.asarray(noisy_labels)
    refined = np.asarray(refined_labels)
    true = np.asarray(true_labels)
    if not (noisy.shape == refined.shape == true.shape):
        raise InputError(f"label arrays differ in length: {noisy.shape}, {refined.shape}, {true.shape}")
    changed = refined != noisy
    wrong = noisy != true
    return {
        "noisy_label_acc": float(np.mean(noisy == true)) if len(true) else 0.0,
        "refined_label_acc": float(np.mean(refined == true)) if len(true) else 0.0,
        "relabel_precision": float(np.mean(refined[changed] == true[changed])) if changed.any() else 0.0,
        "relabel_recall": float(np.mean(refined[wrong] == true[wrong])) if wrong.any() else 0.0,
        "num_changed": int(changed.sum()),
    }


# ----------------------------------------------------------------------------- the rule
def relabel(labels: np.ndarray, scores: np.ndarray, *, threshold: float = DEFAULT_THRESHOLD,
            alpha: float = DEFAULT_ALPHA, keep_scores: bool = True) -> RefinementResult:
    """Apply the threshold rule to a precomputed (N, C) score matrix."""
    threshold = float(threshold)
    scores = _as_2d_float("scores", scores)
    labels = check_labels(np.asarray(labels).astype(np.int64), scores.shape[1])
    if len(labels) != len(scores):
        raise InputError(f"{len(labels)} labels but {len(scores)} score rows")
    best_class = np.empty(len(labels), dtype=np.int64)
    best_score = np.empty(len(labels), dtype=np.float32)
    given_score = np.empty(len(labels), dtype=np.float32)
    for sl in _chunks(len(labels)):
        block = scores[sl]
        best_class[sl] = block.argmax(axis=1)
        rows = np.arange(block.shape[0])
        best_score[sl] = block[rows, best_class[sl]]
        given_score[sl] = block[rows, labels[sl]]
    refined = np.where(best_score >= threshold, best_class, labels)
    return RefinementResult(labels=labels, refined_labels=refined, best_class=best_class,
                            best_score=best_score, given_score=given_score, alpha=float(alpha),
                            threshold=threshold, scores=scores if keep_scores else None)


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


def _first_bad_row(name: str, block: np.ndarray, start: int) -> None:
    finite = np.isfinite(block)
    if not finite.all():
        row = start + int(np.flatnonzero(~finite.all(axis=1))[0])
        raise InputError(f"{name}: sample {row} has a NaN or infinite value")


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
                          num_threads: Optional[int] = None) -> RefinementResult:
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
        temperature: calibrate the similarity (see :func:`fit_similarity_temperature`).
        num_threads: workers over chunks (default: the usable CPUs, at most 8, or
            ``SYNREF_NUM_THREADS``; each runs
            single-threaded BLAS on its own chunks, so the norm/score/argmax work runs in
            parallel too). 1 = the calling thread only. Results do not depend on it.
    Raises InputError on bad shapes/options and, in the same pass, naming the first sample
    whose features or pred_probs hold a NaN or infinite value.
    """
    alpha = _check_unit_interval("alpha", alpha)
    threshold = float(threshold)
    if temperature is not None and not temperature > 0:
        raise InputError(f"temperature must be > 0, got {temperature}")
    feats = _as_2d_float("features", features)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(feats):
        raise InputError(f"{labels.size} labels but {len(feats)} feature rows")
    probs: Optional[np.ndarray] = None
    if pred_probs is not None:
        probs = _as_2d_float("pred_probs", pred_probs, rows=len(feats))
        num_classes = probs.shape[1]
    elif alpha != 1.0:
        raise InputError("pred_probs are needed unless alpha is 1")
    elif prototypes is not None:
        num_classes = len(prototypes)
    else:
        if anchor_labels is None:
            raise InputError("give prototypes or anchor_features and anchor_labels")
        num_classes = int(max(np.max(anchor_labels), np.max(labels, initial=0))) + 1
    if prototypes is None:
        if anchor_features is None or anchor_labels is None:
            raise InputError("give prototypes or anchor_features and anchor_labels")
        if np.asarray(anchor_features).ndim == 2 and np.asarray(anchor_features).shape[1] != feats.shape[1]:
            raise InputError(f"anchor_features have {np.asarray(anchor_features).shape[1]} dimensions, "
                             f"features have {feats.shape[1]}")
        prototypes = class_prototypes(anchor_features, anchor_labels, num_classes, class_names=class_names)
    protos = _as_2d_float("prototypes", prototypes, cols=feats.shape[1])
    if len(protos) != num_classes:
        raise InputError(f"pred_probs has {num_classes} columns but there are {len(protos)} prototypes")
    _check_finite("prototypes", protos)
    labels = check_labels(labels.astype(np.int64), num_classes)
    unit_t = _unit_prototypes_t(protos)

    n_total = len(feats)
    rows = min(_stream_rows(chunk_rows), -(-max(n_total, 1) // _GEMM_ROWS) * _GEMM_ROWS)
    best_class = np.empty(n_total, dtype=np.int64)
    best_score = np.empty(n_total, dtype=np.float32)
    given_score = np.empty(n_total, dtype=np.float32)
    scores = np.empty((n_total, num_classes), dtype=np.float32) if keep_scores else None
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
        if probs is not None:
            p = probs[start:stop]
            np.multiply(block, alpha32, out=block)
            if p.dtype == np.float32:
                np.add(block, np.multiply(p, beta, out=bufs.tmp[:n]), out=block)
            else:  # float16/float64: the same arithmetic as score_matrix
                np.add(block, beta * p, out=block, casting="unsafe")
        # A NaN/inf anywhere makes the sums non-finite (one cheap pass); then find the culprit.
        if not (np.isfinite(np.add.reduce(norms)) and np.isfinite(np.add.reduce(block, axis=None))):
            _first_bad_row("features", feats[start:stop], start)
            if probs is not None:
                _first_bad_row("pred_probs", probs[start:stop], start)
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
    return RefinementResult(labels=labels, refined_labels=refined, best_class=best_class,
                            best_score=best_score, given_score=given_score, alpha=float(alpha),
                            threshold=threshold, scores=scores,
                            info={"temperature": temperature} if temperature is not None else {})


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


# ----------------------------------------------------------------------------- calibration
def similarity_to_probs(similarity: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax over classes of ``similarity / temperature``: (N, C) -> (N, C) float32 rows summing to 1.

    Puts prototype similarity on the same scale as a classifier's softmax, so that
    ``alpha`` weighs like against like and the threshold reads as a probability.
    """
    if not temperature > 0:
        raise InputError(f"temperature must be > 0, got {temperature}")
    sim = np.asarray(similarity, dtype=np.float32)
    out = np.empty_like(sim)
    for sl in _chunks(len(sim)):
        z = sim[sl] / np.float32(temperature)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        out[sl] = z / z.sum(axis=1, keepdims=True)
    return out


def fit_similarity_temperature(anchor_features: np.ndarray, anchor_labels: np.ndarray, num_classes: int, *,
                               seed: int = 0, grid: Optional[np.ndarray] = None,
                               class_names: Optional[Sequence[str]] = None) -> float:
    """The temperature that best calibrates prototype similarity on held-out anchors.

    Anchors are class-pure, so they give a labelled calibration set for free: they are split in
    two halves within each class; each half is scored against the prototypes of the other half,
    and the temperature minimising the negative log-likelihood of the anchors' own classes is
    chosen from a log grid (default 1e-3 .. 1). Needs at least 2 anchors per class.
    """
    feats = _as_2d_float("anchor_features", anchor_features)
    labels = check_labels(np.asarray(anchor_labels), num_classes, what="anchor_labels")
    counts = np.bincount(labels, minlength=num_classes)
    if counts.min() < 2:
        c = int(np.argmin(counts))
        name = f"{c} ({class_names[c]!r})" if class_names is not None else str(c)
        raise InputError(f"class {name} has {counts[c]} anchors; calibration needs at least 2 per class")
    rng = np.random.default_rng(seed)
    first = np.zeros(len(labels), dtype=bool)
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        first[rng.choice(idx, len(idx) // 2, replace=False)] = True
    sims, targets = [], []
    for held, ref in ((first, ~first), (~first, first)):
        prototypes = class_prototypes(feats[ref], labels[ref], num_classes)
        sims.append(prototype_similarity(feats[held], prototypes))
        targets.append(labels[held])
    sim = np.concatenate(sims).astype(np.float64)
    target = np.concatenate(targets)
    grid = np.geomspace(1e-3, 1.0, 91) if grid is None else np.asarray(grid, dtype=np.float64)
    rows = np.arange(len(target))
    nll = []
    for t in grid:
        z = sim / t
        z -= z.max(axis=1, keepdims=True)
        nll.append(float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[rows, target])))
    return float(grid[int(np.argmin(nll))])
