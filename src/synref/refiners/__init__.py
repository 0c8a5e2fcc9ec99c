"""Refinement: evidence in, refined labels out.

    from synref.evidence import Evidence
    from synref.refiners import refine
    result = refine(Evidence(labels, num_classes, anchor_labels, features=..., anchor_features=...,
                             pred_probs=...), "paper", threshold=0.6)

- ``base``: :data:`REFINERS`, :data:`DEFAULT_REFINER`, :func:`create_refiner`, :func:`refine`
  (the one front door), :class:`Refiner`, :class:`RefinerOptions`.
- one module per refiner: ``posterior`` (synref's default: the estimated posterior of the true
  class decides), ``paper`` (the published rule), ``crossfit`` (calibrated score rule, rounds).
- ``kernel``: the streaming score / relabel kernel every refiner runs on;
  ``prototypes``, ``calibration``: anchor prototypes and the anchor-fitted temperature;
  ``result``: :class:`RefinementResult`, its :class:`Decision`, :func:`relabel_metrics`.
"""
from __future__ import annotations

from .base import (DEFAULT_REFINER, REFINERS, Refiner, RefinerOptions, create_refiner, refine, refiner_option_names,
                   refiner_used_options)
from .calibration import fit_similarity_temperature, similarity_to_probs
from .crossfit import CrossfitOptions, CrossfitRefiner
from .kernel import (DEFAULT_ALPHA, DEFAULT_THRESHOLD, prototype_accuracy, prototype_similarity, refine_by_fold,
                     refine_labels, refine_labels_chunked, relabel, score_matrix)
from .paper import PaperRefiner
from .posterior import PosteriorOptions, PosteriorRefiner
from .prototypes import class_prototypes, l2_normalize
from .result import Decision, RefinementResult, ScoreRule, relabel_metrics

__all__ = [
    "REFINERS", "DEFAULT_REFINER", "Refiner", "RefinerOptions", "create_refiner", "refine", "refiner_option_names",
    "refiner_used_options",
    "PaperRefiner", "PosteriorRefiner", "PosteriorOptions",
    "CrossfitRefiner", "CrossfitOptions", "DEFAULT_ALPHA", "DEFAULT_THRESHOLD", "RefinementResult", "Decision",
    "ScoreRule",
    "class_prototypes", "fit_similarity_temperature", "l2_normalize", "prototype_accuracy", "prototype_similarity",
    "refine_by_fold", "refine_labels", "refine_labels_chunked", "relabel", "relabel_metrics", "score_matrix",
    "similarity_to_probs",
]
