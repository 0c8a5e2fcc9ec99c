"""Class prototypes: the mean feature of each class's anchors."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..arrays import l2_normalize
from ..errors import InputError
from ..validation import as_2d_float, check_finite, check_labels

__all__ = ["l2_normalize", "class_prototypes"]


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
    feats = as_2d_float("anchor_features", anchor_features)
    labels = check_labels(np.asarray(anchor_labels), num_classes, what="anchor_labels")
    if len(labels) != len(feats):
        raise InputError(f"{len(feats)} anchor features but {len(labels)} anchor labels")
    check_finite("anchor_features", feats)
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

