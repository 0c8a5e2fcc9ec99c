"""``paper``: the published rule (Li, Mao, Matsui, ICIP 2025), bit for bit.

``score_c = alpha * cos(f, prototype_c) + (1 - alpha) * pred_probs_c`` with the raw cosine to
the mean-anchor prototypes (per fold when the evidence has per-fold spaces); relabel to the best
class when its score reaches ``threshold`` (0.5 / 0.6 in the paper); one pass.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import InputError
from ..evidence import Evidence
from .base import REFINERS, Refiner, RefinerOptions
from .kernel import refine_by_fold
from .prototypes import class_prototypes
from .result import RefinementResult

__all__ = ["PaperRefiner", "fold_prototypes"]


def fold_prototypes(evidence: Evidence) -> list:
    """The (C, D) prototypes of each space of ``evidence``: one, or one per fold."""
    if evidence.features is None or evidence.anchor_features is None:
        raise InputError("this refiner needs evidence.features and evidence.anchor_features")
    spaces = [evidence.anchor_features] if evidence.fold_ids is None else list(evidence.anchor_features)
    return [class_prototypes(a, evidence.anchor_labels, evidence.num_classes, class_names=evidence.class_names)
            for a in spaces]


@REFINERS.register("paper")
class PaperRefiner(Refiner):
    """The paper's rule on the evidence as given (see the module docstring)."""

    name = "paper"
    Options = RefinerOptions

    def refine(self, evidence: Evidence, *, true_labels: Optional[np.ndarray] = None) -> RefinementResult:
        o = self.options
        prototypes = fold_prototypes(evidence)
        result = refine_by_fold(evidence.labels, pred_probs=evidence.resolve_pred_probs(), features=evidence.features,
                                fold_ids=evidence.fold_ids, prototypes=prototypes,
                                temperatures=[None] * len(prototypes), alpha=o.alpha, threshold=o.threshold,
                                keep_scores=o.keep_scores, keep_similarity=o.keep_scores,
                                chunk_rows=o.chunk_rows, num_threads=o.num_threads)
        result.info.update(refiner=self.name, preset=self.name, pred_probs=evidence.resolve_pred_probs(),
                           **evidence.description)
        return result
