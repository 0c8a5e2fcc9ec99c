"""What a refiner decided, per sample (:class:`RefinementResult`), how it decided
(:class:`Decision`, :class:`ScoreRule`), and how good it was against known clean labels
(:func:`relabel_metrics`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

import numpy as np

from ..errors import InputError

__all__ = ["RefinementResult", "Decision", "ScoreRule", "DECIDED_BY", "relabel_metrics"]

#: what can decide the changes: the score rule (``score >= threshold``), the posterior's most
#: probable class, confident learning (the posterior's fallback when its model check fails), or
#: nothing (do no harm: no label changed).
DECIDED_BY = ("score threshold", "posterior", "confident-learning", "none")


@dataclass(frozen=True)
class ScoreRule:
    """The score rule's parameters: a label changes to the best class when
    ``alpha * similarity + (1 - alpha) * pred_probs`` reaches ``threshold``."""

    alpha: float
    threshold: float


@dataclass(frozen=True)
class Decision:
    """How a refiner decided which labels change (``summary.json``'s ``decision``).

    Attributes:
        decided_by: one of :data:`DECIDED_BY`.
        rule: the score rule's alpha and threshold (score-rule refiners only; None otherwise).
        model_check: ``"passed"``, ``"failed: <why>"``, or None when the refiner has no model
            check (the score rules).
        model_fit: the model check's measured fit (the lowest over the feature spaces), or None.
        minimum_evidence: ``"met"``, or why nothing changed (too few given labels per class).
        estimated_precision: the refiner's estimate of the fraction of its changes that are right
            (the mean posterior of the changed labels), or None (nothing changed / not estimated).
        target_precision: the estimated precision the changes had to keep, or None.
        lowest_changed_score: the lowest decision score (posterior) among the changed labels, or
            None (nothing changed, or a score rule: see ``rule.threshold``).
        neighbor_graph: the kNN graph the refiner built (its facts: method, k, measured recall;
            a list with one entry per feature space for per-fold spaces), or None.
    """

    decided_by: str
    rule: Optional[ScoreRule] = None
    model_check: Optional[str] = None
    model_fit: Optional[float] = None
    minimum_evidence: str = "met"
    estimated_precision: Optional[float] = None
    target_precision: Optional[float] = None
    lowest_changed_score: Optional[float] = None
    neighbor_graph: Any = None

    def __post_init__(self) -> None:
        if self.decided_by not in DECIDED_BY:
            raise InputError(f"decision: decided_by must be one of {', '.join(DECIDED_BY)}, got {self.decided_by!r}")

    @classmethod
    def score_rule(cls, alpha: float, threshold: float) -> "Decision":
        """The decision of a score rule with ``alpha`` and ``threshold``."""
        return cls("score threshold", rule=ScoreRule(float(alpha), float(threshold)))

    @property
    def model_check_passed(self) -> bool:
        """False only when a model check ran and failed."""
        return self.model_check is None or self.model_check == "passed"

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able dict (``summary.json``'s ``decision``; ``rule`` as ``{alpha, threshold}`` or None)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Decision":
        """The decision of :meth:`to_dict` (a cached result read back); unknown keys are refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"decision: unknown key(s) {', '.join(unknown)}")
        values = dict(values)
        if values.get("rule") is not None:
            values["rule"] = ScoreRule(**values["rule"])
        return cls(**values)


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
        decision: how the changes were decided (:class:`Decision`; the score rule's alpha and
            threshold are ``decision.rule``, also read as :attr:`alpha` / :attr:`threshold`).
        info: what the refiner measured on the way (rounds, temperatures, stages, ...).
    """

    labels: np.ndarray
    refined_labels: np.ndarray
    best_class: np.ndarray
    best_score: np.ndarray
    given_score: np.ndarray
    decision: Decision
    scores: Optional[np.ndarray] = None
    info: Dict[str, object] = field(default_factory=dict)

    @property
    def alpha(self) -> Optional[float]:
        """The score rule's alpha (None when no score rule decided)."""
        return None if self.decision.rule is None else self.decision.rule.alpha

    @property
    def threshold(self) -> Optional[float]:
        """The score rule's threshold (None when no score rule decided)."""
        return None if self.decision.rule is None else self.decision.rule.threshold

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

