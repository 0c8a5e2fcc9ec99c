"""What a refiner decided, per sample (:class:`RefinementResult`), and how good it was
against known clean labels (:func:`relabel_metrics`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from ..errors import InputError

__all__ = ["RefinementResult", "relabel_metrics"]


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

