"""Confident learning on the given labels alone: cleanlab's ``find_label_issues`` and, as its
maintainers suggest, ``argmax(pred_probs)`` as the correction of the flagged samples.

It is the ``cleanlab + argmax`` row of ``synref compare`` and the ``posterior`` refiner's fallback
when its model check says the anchors do not describe the images (then only the given labels and
the out-of-sample ``pred_probs`` are evidence).
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from ..optional import require

__all__ = ["confident_learning_correction", "FALLBACK_FILTER"]

#: cleanlab's ``filter_by`` of the posterior refiner's fallback. Chosen on the digits (the failing
#: model-check case: ImageNet EfficientNet-Lite0 features of 8x8 digits, glyph anchors, a 4-fold
#: linear head's pred_probs; uniform noise 0 / 10 / 20 / 40 %): label accuracy 0.999 / 0.971 /
#: 0.943 / 0.821 with ``both``, 0.996 / 0.966 / 0.933 / 0.814 with cleanlab's default
#: ``prune_by_noise_rate``, 0.997 / 0.966 / 0.921 / 0.782 with ``confident_learning``.
FALLBACK_FILTER = "both"


def confident_learning_correction(labels: np.ndarray, pred_probs: np.ndarray, **cleanlab_kwargs: Any
                                  ) -> Tuple[np.ndarray, np.ndarray]:
    """``(corrected (N,), flagged (N,) bool)``: cleanlab's ``find_label_issues(labels, pred_probs,
    **cleanlab_kwargs)`` (``pred_probs`` (N, C) out-of-sample) and ``argmax(pred_probs)`` for the
    flagged samples."""
    find_label_issues = require("cleanlab.filter", "confident learning (cleanlab)").find_label_issues
    given = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(pred_probs, dtype=np.float32)
    flagged = np.asarray(find_label_issues(given, probs, **cleanlab_kwargs), dtype=bool)
    corrected = given.copy()
    corrected[flagged] = probs[flagged].argmax(axis=1)
    return corrected, flagged
