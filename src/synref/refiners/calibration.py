"""Anchor-calibrated similarity: a temperature fitted on held-out anchors turns cosine
similarity into class probabilities (so ``alpha`` weighs like against like)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import InputError
from ..validation import as_2d_float, check_labels, chunks
from .kernel import prototype_similarity
from .prototypes import class_prototypes

__all__ = ["similarity_to_probs", "fit_similarity_temperature"]


def similarity_to_probs(similarity: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax over classes of ``similarity / temperature``: (N, C) -> (N, C) float32 rows summing to 1.

    Puts prototype similarity on the same scale as a classifier's softmax, so that
    ``alpha`` weighs like against like and the threshold reads as a probability.
    """
    if not temperature > 0:
        raise InputError(f"temperature must be > 0, got {temperature}")
    sim = np.asarray(similarity, dtype=np.float32)
    out = np.empty_like(sim)
    for sl in chunks(len(sim)):
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
    feats = as_2d_float("anchor_features", anchor_features)
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

