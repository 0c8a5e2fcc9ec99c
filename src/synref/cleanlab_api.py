"""synref in the shape of cleanlab's API: the same ``labels`` / ``pred_probs`` arguments, plus
the feature-space evidence that synthetic anchors add.

Mapping to cleanlab (2.x)
-------------------------
``cleanlab.filter.find_label_issues(labels, pred_probs, ...)``
    -> :func:`find_label_issues` ``(labels, pred_probs, *, features, anchor_features,
    anchor_labels, alpha=0.5, threshold=0.6, return_indices_ranked_by=None, ...)``.
    ``labels`` (N,) ints in [0, C) and ``pred_probs`` (N, C) out-of-sample softmax are the
    arrays a cleanlab user already has (any float dtype, or lists; rows must sum to ~1).
    synref adds ``features`` (N, D) of the real images and the features/labels of synthetic
    class anchors in the same space. The mask is True for the samples synref *would relabel*:
    best class != given label and best score >= ``threshold``, with
    ``score_c = alpha * cos(features, prototype_c) + (1 - alpha) * pred_probs_c``.
    ``return_indices_ranked_by`` returns the flagged indices instead, most likely wrong first:
    ``"severity"`` / ``"normalized_margin"`` by the margin ``best - given score`` (descending:
    cleanlab's normalized margin ranks by ``given - best other``, ascending, which is the same
    order for flagged samples), ``"self_confidence"`` by the given label's score (ascending),
    ``"label_quality"`` by :func:`get_label_quality_scores` (ascending).

``cleanlab.rank.get_label_quality_scores(labels, pred_probs)``
    -> :func:`get_label_quality_scores` (same first two arguments, plus the anchors): (N,) in
    [0, 1], low = likely wrong; synref's quality is ``given score / best score`` (1 when the
    given label is the best class), clipped to [0, 1].

What cleanlab does not give: a *correction*. :func:`suggest_labels` returns the refined labels
(the best class where the mask is True, the given label elsewhere), and
:func:`label_refinement` returns the whole :class:`~synref.refine.RefinementResult` (mask,
quality, ranking and correction from one pass).

With ``pred_probs=None`` and ``alpha=1`` the decision uses the anchors alone.
``calibrate=True`` (or an explicit ``temperature``) turns the cosine into probabilities with a
temperature fitted on held-out anchors, so both terms of the score are probabilities (synref's
default preset). Every function streams the samples in chunks (see
:func:`synref.refine.refine_labels_chunked`): no (N, C) temporaries, memory-mapped inputs work.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from .errors import InputError
from .refine import (
    DEFAULT_ALPHA,
    DEFAULT_THRESHOLD,
    RefinementResult,
    class_prototypes,
    fit_similarity_temperature,
    refine_labels_chunked,
)

__all__ = ["find_label_issues", "get_label_quality_scores", "suggest_labels", "label_refinement",
           "check_pred_probs", "RANKINGS"]

RANKINGS = ("severity", "normalized_margin", "self_confidence", "label_quality")
_SUM_ROWS = 65536

ArrayLike = Union[np.ndarray, Sequence]


def check_pred_probs(pred_probs: ArrayLike, num_samples: Optional[int] = None) -> np.ndarray:
    """Validate cleanlab-style ``pred_probs``: (N, C) floats in [0, 1], rows summing to ~1.

    Lists and any float/int dtype are accepted (float16/float32/float64 arrays are kept, not
    copied; memory-mapped arrays are read in chunks). Raises InputError naming the first bad row.
    """
    probs = np.asarray(pred_probs)
    if probs.dtype == object or not (np.issubdtype(probs.dtype, np.floating)
                                     or np.issubdtype(probs.dtype, np.integer)):
        raise InputError(f"pred_probs must be numbers, got dtype {probs.dtype}")
    if probs.ndim != 2:
        raise InputError(f"pred_probs must be 2-D (N samples, C classes), got shape {probs.shape}")
    if num_samples is not None and len(probs) != num_samples:
        raise InputError(f"pred_probs has {len(probs)} rows but there are {num_samples} labels")
    if probs.shape[1] < 2:
        raise InputError(f"pred_probs needs at least 2 class columns, got {probs.shape[1]}")
    tol = 1e-2 if probs.dtype == np.float16 else 1e-3
    for start in range(0, len(probs), _SUM_ROWS):
        block = np.asarray(probs[start:start + _SUM_ROWS], dtype=np.float64)
        sums = block.sum(axis=1)
        bad = ~(np.abs(sums - 1.0) <= tol)  # NaN fails too
        low = block.min(axis=1) < -tol
        if bad.any() or low.any():
            i = int(np.flatnonzero(bad | low)[0])
            row = start + i
            if not np.isfinite(block[i]).all():
                raise InputError(f"pred_probs: sample {row} has a NaN or infinite value")
            if low[i]:
                raise InputError(f"pred_probs: sample {row} has a negative value ({block[i].min():.4g}); pass "
                                 f"softmax probabilities (e.g. scipy.special.softmax(logits, axis=1)), not logits")
            raise InputError(f"pred_probs: row {row} sums to {sums[i]:.4g}, not 1; pass softmax probabilities "
                             f"(e.g. scipy.special.softmax(logits, axis=1)), not logits or scores")
    return probs


def _check_labels_1d(labels: ArrayLike) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InputError(f"labels must be 1-D (one class index per sample), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
            raise InputError(f"labels must be integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def label_refinement(labels: ArrayLike, pred_probs: Optional[ArrayLike], *, features: np.ndarray,
                     anchor_features: Optional[np.ndarray] = None, anchor_labels: Optional[ArrayLike] = None,
                     prototypes: Optional[np.ndarray] = None, alpha: float = DEFAULT_ALPHA,
                     threshold: float = DEFAULT_THRESHOLD, calibrate: bool = False,
                     temperature: Optional[float] = None, class_names: Optional[Sequence[str]] = None,
                     chunk_rows: Optional[int] = None, num_threads: Optional[int] = None,
                     keep_scores: bool = False) -> RefinementResult:
    """Everything at once: the :class:`RefinementResult` that the other functions are views of.

    Args:
        labels: (N,) given labels in [0, C) (list or array).
        pred_probs: (N, C) out-of-sample softmax, rows summing to 1; None only with alpha == 1.
        features: (N, D) features of the samples (may be ``np.load(..., mmap_mode="r")``).
        anchor_features, anchor_labels: (M, D) and (M,) synthetic anchors in the same feature
            space (or give ``prototypes`` (C, D)).
        alpha: weight of the anchor similarity; threshold: minimum best score to relabel.
        calibrate: fit a similarity temperature on held-out anchors (needs anchors, >= 2 per
            class); ``temperature`` sets it directly.
        class_names: used in error messages.
    """
    labels_arr = _check_labels_1d(labels)
    feats = np.asarray(features) if not isinstance(features, np.ndarray) else features
    if feats.ndim != 2:
        raise InputError(f"features must be 2-D (N samples, D dimensions), got shape {feats.shape}")
    if len(feats) != len(labels_arr):
        raise InputError(f"{len(labels_arr)} labels but {len(feats)} feature rows")
    probs = None if pred_probs is None else check_pred_probs(pred_probs, len(labels_arr))
    anchor_labels_arr = None if anchor_labels is None else np.asarray(anchor_labels)
    if probs is not None:
        num_classes = probs.shape[1]
    elif prototypes is not None:
        num_classes = len(prototypes)
    elif anchor_labels_arr is not None:
        num_classes = int(max(np.max(anchor_labels_arr), np.max(labels_arr, initial=0))) + 1
    else:
        raise InputError("give anchor_features and anchor_labels (or prototypes)")
    if temperature is None and calibrate:
        if anchor_features is None or anchor_labels_arr is None:
            raise InputError("calibrate=True needs anchor_features and anchor_labels")
        temperature = fit_similarity_temperature(anchor_features, anchor_labels_arr, num_classes,
                                                 class_names=class_names)
    if prototypes is None:
        if anchor_features is None or anchor_labels_arr is None:
            raise InputError("give anchor_features and anchor_labels (or prototypes)")
        anchor_feats = np.asarray(anchor_features)
        if anchor_feats.ndim == 2 and anchor_feats.shape[1] != feats.shape[1]:
            raise InputError(f"anchor_features have {anchor_feats.shape[1]} dimensions, "
                             f"features have {feats.shape[1]}")
        prototypes = class_prototypes(anchor_feats, anchor_labels_arr, num_classes, class_names=class_names)
    result = refine_labels_chunked(labels_arr, pred_probs=probs, features=feats, prototypes=prototypes,
                                   alpha=alpha, threshold=threshold, temperature=temperature,
                                   chunk_rows=chunk_rows, num_threads=num_threads, keep_scores=keep_scores)
    return result


def rank_issues(result: RefinementResult, by: str = "severity") -> np.ndarray:
    """Indices of the samples ``result`` would relabel, most likely wrong first (see module doc)."""
    idx = np.flatnonzero(result.changed)
    if by in ("severity", "normalized_margin"):
        key = -(result.best_score[idx].astype(np.float64) - result.given_score[idx])
    elif by == "self_confidence":
        key = result.given_score[idx].astype(np.float64)
    elif by == "label_quality":
        key = result.label_quality[idx].astype(np.float64)
    else:
        raise InputError(f"unknown return_indices_ranked_by {by!r}; choose one of: {', '.join(RANKINGS)}")
    return idx[np.argsort(key, kind="stable")]


def find_label_issues(labels: ArrayLike, pred_probs: Optional[ArrayLike], *, features: np.ndarray,
                      anchor_features: Optional[np.ndarray] = None, anchor_labels: Optional[ArrayLike] = None,
                      alpha: float = DEFAULT_ALPHA, threshold: float = DEFAULT_THRESHOLD,
                      return_indices_ranked_by: Optional[str] = None, calibrate: bool = False,
                      **kwargs) -> np.ndarray:
    """cleanlab's ``filter.find_label_issues`` with anchors: (N,) bool mask of the samples synref
    would relabel, or, with ``return_indices_ranked_by``, their indices most-likely-wrong first.

    Extra keyword arguments go to :func:`label_refinement` (prototypes, temperature,
    class_names, chunk_rows, num_threads).
    """
    if return_indices_ranked_by is not None and return_indices_ranked_by not in RANKINGS:
        raise InputError(f"unknown return_indices_ranked_by {return_indices_ranked_by!r}; "
                         f"choose one of: {', '.join(RANKINGS)}")
    result = label_refinement(labels, pred_probs, features=features, anchor_features=anchor_features,
                              anchor_labels=anchor_labels, alpha=alpha, threshold=threshold,
                              calibrate=calibrate, **kwargs)
    if return_indices_ranked_by is None:
        return result.issue_mask
    return rank_issues(result, return_indices_ranked_by)


def get_label_quality_scores(labels: ArrayLike, pred_probs: Optional[ArrayLike], *, features: np.ndarray,
                             anchor_features: Optional[np.ndarray] = None,
                             anchor_labels: Optional[ArrayLike] = None, alpha: float = DEFAULT_ALPHA,
                             calibrate: bool = False, **kwargs) -> np.ndarray:
    """cleanlab's ``rank.get_label_quality_scores`` with anchors: (N,) float32 in [0, 1],
    ``given score / best score`` (1 = the given label is the best class; low = likely wrong)."""
    kwargs.setdefault("threshold", DEFAULT_THRESHOLD)  # irrelevant to the quality
    result = label_refinement(labels, pred_probs, features=features, anchor_features=anchor_features,
                              anchor_labels=anchor_labels, alpha=alpha, calibrate=calibrate, **kwargs)
    return result.label_quality


def suggest_labels(labels: ArrayLike, pred_probs: Optional[ArrayLike], *, features: np.ndarray,
                   anchor_features: Optional[np.ndarray] = None, anchor_labels: Optional[ArrayLike] = None,
                   alpha: float = DEFAULT_ALPHA, threshold: float = DEFAULT_THRESHOLD, calibrate: bool = False,
                   **kwargs) -> np.ndarray:
    """The correction cleanlab does not give: (N,) int64 refined labels (the best class where
    :func:`find_label_issues` is True, the given label elsewhere)."""
    result = label_refinement(labels, pred_probs, features=features, anchor_features=anchor_features,
                              anchor_labels=anchor_labels, alpha=alpha, threshold=threshold,
                              calibrate=calibrate, **kwargs)
    return result.refined_labels
