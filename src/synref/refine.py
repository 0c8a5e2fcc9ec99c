"""Synthetic-anchor label refinement: prototypes, score matrix, relabeling.

The paper's rule (ICIP 2025, "Noisy Label Refinement with Semantically Reliable Synthetic
Images"): for a real image with features ``f`` (D,), softmax ``p`` (C,) and noisy label ``y``,

    score_c = alpha * cos(f, prototype_c) + (1 - alpha) * p_c
    c* = argmax_c score_c;  new label = c* if score_{c*} >= threshold else y

with ``prototype_c`` the mean feature of the class-``c`` anchors. Everything here is
vectorised and processes the N samples in chunks, so N in the millions fits in memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .data import check_labels
from .errors import InputError

DEFAULT_ALPHA = 0.5
DEFAULT_THRESHOLD = 0.6
_CHUNK_ROWS = 65536


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
    """Cosine similarity of each sample to each prototype: (N, D) x (C, D) -> (N, C) float32."""
    feats = _as_2d_float("features", features)
    protos = l2_normalize(_as_2d_float("prototypes", prototypes, cols=feats.shape[1]))
    out = np.empty((len(feats), len(protos)), dtype=np.float32)
    for sl in _chunks(len(feats)):
        out[sl] = l2_normalize(feats[sl]) @ protos.T
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
    Returns a RefinementResult.
    """
    _check_unit_interval("alpha", alpha)
    feats = _as_2d_float("features", features)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(feats):
        raise InputError(f"{labels.size} labels but {len(feats)} feature rows")
    if pred_probs is not None:
        num_classes = _as_2d_float("pred_probs", pred_probs, rows=len(feats)).shape[1]
    elif prototypes is not None:
        num_classes = len(prototypes)
    else:
        num_classes = int(max(np.max(anchor_labels), np.max(labels, initial=0))) + 1
    if prototypes is None:
        if np.asarray(anchor_features).ndim == 2 and np.asarray(anchor_features).shape[1] != feats.shape[1]:
            raise InputError(f"anchor_features have {np.asarray(anchor_features).shape[1]} dimensions, "
                             f"features have {feats.shape[1]}")
        prototypes = class_prototypes(anchor_features, anchor_labels, num_classes, class_names=class_names)
    _check_finite("features", feats)
    if pred_probs is not None:
        _check_finite("pred_probs", np.asarray(pred_probs))
    similarity = prototype_similarity(feats, prototypes)
    scores = score_matrix(pred_probs, similarity, alpha=alpha)
    return relabel(labels, scores, threshold=threshold, alpha=alpha, keep_scores=keep_scores)


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
