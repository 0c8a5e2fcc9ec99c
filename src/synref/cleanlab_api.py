"""synref in the shape of cleanlab's API: the same ``labels`` / ``pred_probs`` arguments, plus
the feature-space evidence that synthetic anchors add.

Every function takes ``refiner``: ``"posterior"`` (the default: the estimated posterior of the
true class given the anchors, the neighbours and the given label decides, see
:mod:`synref.refiners.posterior`; ``target_precision`` picks the operating point; alpha,
threshold and calibrate do not apply) or ``"paper"`` (the score rule described below).

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
:func:`label_refinement` returns the whole :class:`~synref.refiners.RefinementResult` (mask,
quality, ranking and correction from one pass).

With ``pred_probs=None`` and ``alpha=1`` the decision uses the anchors alone.
``calibrate=True`` (or an explicit ``temperature``) turns the cosine into probabilities with a
temperature fitted on held-out anchors, so both terms of the score are probabilities (synref's
default preset). Every function builds an :class:`~synref.evidence.Evidence` and calls
:func:`synref.refiners.refine` (``paper``, or ``crossfit`` in one round when calibrated), which
streams the samples in chunks: no (N, C) temporaries, memory-mapped inputs work.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from .errors import InputError
from .evidence import Evidence
from .refiners import DEFAULT_ALPHA, DEFAULT_REFINER, DEFAULT_THRESHOLD, RefinementResult, fit_similarity_temperature, refine
from .validation import as_labels, check_pred_probs, infer_num_classes

__all__ = ["find_label_issues", "get_label_quality_scores", "suggest_labels", "label_refinement",
           "check_pred_probs", "RANKINGS"]

RANKINGS = ("severity", "normalized_margin", "self_confidence", "label_quality")

ArrayLike = Union[np.ndarray, Sequence]


def label_refinement(labels: ArrayLike, pred_probs: Optional[ArrayLike], *, features: np.ndarray,
                     anchor_features: Optional[np.ndarray] = None, anchor_labels: Optional[ArrayLike] = None,
                     prototypes: Optional[np.ndarray] = None, alpha: float = DEFAULT_ALPHA,
                     threshold: float = DEFAULT_THRESHOLD, calibrate: bool = False,
                     temperature: Optional[float] = None, class_names: Optional[Sequence[str]] = None,
                     chunk_rows: Optional[int] = None, num_threads: Optional[int] = None,
                     keep_scores: bool = False, refiner: str = DEFAULT_REFINER,
                     target_precision: Optional[float] = None) -> RefinementResult:
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
        refiner: ``posterior`` (the default: the estimated posterior of the true class decides;
            needs anchors, >= 2 per class; ``target_precision`` picks its operating point) or
            ``paper`` (the score rule above: alpha, threshold, calibrate, temperature,
            prototypes).
    """
    if refiner not in ("posterior", "paper"):
        raise InputError(f"unknown refiner {refiner!r}; choose posterior or paper")
    labels_arr = as_labels(labels, integral_floats=True)
    feats = np.asarray(features) if not isinstance(features, np.ndarray) else features
    if feats.ndim != 2:
        raise InputError(f"features must be 2-D (N samples, D dimensions), got shape {feats.shape}")
    if len(feats) != len(labels_arr):
        raise InputError(f"{len(labels_arr)} labels but {len(feats)} feature rows")
    probs = None if pred_probs is None else check_pred_probs(pred_probs, len(labels_arr))
    anchor_labels_arr = None if anchor_labels is None else np.asarray(anchor_labels)
    num_classes = infer_num_classes(pred_probs=probs, prototypes=prototypes, anchor_labels=anchor_labels_arr,
                                    labels=labels_arr)
    have_anchors = anchor_features is not None and anchor_labels_arr is not None
    if prototypes is None:
        if not have_anchors:
            raise InputError("give anchor_features and anchor_labels (or prototypes)")
        anchor_feats = np.asarray(anchor_features)
        if anchor_feats.ndim == 2 and anchor_feats.shape[1] != feats.shape[1]:
            raise InputError(f"anchor_features have {anchor_feats.shape[1]} dimensions, "
                             f"features have {feats.shape[1]}")
        space = (anchor_feats, anchor_labels_arr)
    else:  # each given prototype is its class's one anchor
        space = (np.asarray(prototypes), np.arange(len(prototypes)))
        if temperature is None and calibrate:
            if not have_anchors:
                raise InputError("calibrate=True needs anchor_features and anchor_labels")
            temperature = fit_similarity_temperature(anchor_features, anchor_labels_arr, num_classes,
                                                     class_names=class_names)
    evidence = Evidence(labels_arr, num_classes, space[1], features=feats, anchor_features=space[0],
                        pred_probs=probs, class_names=None if class_names is None else list(class_names))
    if refiner == "posterior":
        if prototypes is not None:
            raise InputError("refiner 'posterior' needs anchor_features and anchor_labels, not prototypes "
                             "(or give refiner='paper')")
        return refine(evidence, "posterior", keep_scores=keep_scores, target_precision=target_precision)
    options = dict(alpha=alpha, threshold=threshold, keep_scores=keep_scores, chunk_rows=chunk_rows,
                   num_threads=num_threads)
    if temperature is None and not calibrate:
        return refine(evidence, "paper", **options)
    return refine(evidence, "crossfit", rounds=1, calibrate=True, temperature=temperature, **options)


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
