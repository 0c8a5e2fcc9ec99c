"""The two refinement presets, as library calls over arrays.

- ``paper``: the published method exactly. Features and softmax come from the classifier
  trained on all the noisy labels (it has seen, and partly memorised, every label it judges);
  one prototype per class; ``0.5 * cos + 0.5 * softmax``; threshold 0.6; one pass.
- ``synref`` (the default): the same score rule and the same alpha 0.5 / threshold 0.6, with
  better evidence:
  1. the feature space is not trained on the noisy labels: a self-supervised (SimCLR-style)
     encoder trained on the unlabelled real images plus the anchors (``features="ssl"``), or,
     with ``features="classifier"``, each fold classifier's own penultimate layer;
  2. prototype similarity is turned into probabilities with a temperature fitted on held-out
     anchors (they are class-pure), so both terms of the score are probabilities;
  3. the softmax comes from k-fold cross-fitting: every sample is judged by a model that never
     trained on it (as cleanlab recommends for ``pred_probs``);
  4. it iterates: round r's refined labels train round r+1's fold models, whose cleaner softmax
     re-scores the *given* labels.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch.nn as nn

from .config import ConfigMixin
from .errors import InputError
from .progress import progress as progress_bar
from .refine import (
    DEFAULT_ALPHA,
    DEFAULT_THRESHOLD,
    RefinementResult,
    class_prototypes,
    prototype_similarity,
    relabel,
    score_matrix,
)
from .refine import fit_similarity_temperature, similarity_to_probs
from .ssl import SSLConfig, train_simclr
from .train import TrainConfig, cross_fit, extract_features, predict_proba
from .train.linear import LinearHeadConfig, cross_fit_linear

FEATURE_SPACES = ("ssl", "classifier")
HEADS = ("network", "linear")


@dataclass
class CrossFitRefineConfig(ConfigMixin):
    """Options of synref's default refinement (see module docstring).

    Attributes:
        folds: k of the k-fold cross-fitting.
        rounds: refinement rounds; round r trains on round r-1's refined labels.
        alpha, threshold: the score rule's weight of prototype similarity and relabel threshold.
        model: network trained in each fold (synref.models name).
        train: training recipe of each fold model.
        features: "ssl" (self-supervised encoder on real images + anchors) or "classifier"
            (each fold model's penultimate features, prototypes per fold).
        calibrate: turn similarity into probabilities with a temperature fitted on held-out anchors.
        ssl: the self-supervised encoder's recipe (``features="ssl"``).
        head: where each round's cross-fitted softmax comes from: ``network`` (a ``model`` trained
            per fold on the images) or ``linear`` (a linear softmax head per fold on the fixed
            feature space: seconds instead of minutes; needs ``features="ssl"`` or
            ``fixed_features``).
        linear: the linear head's recipe (``head="linear"``).
        seed: base seed (fold split and model seeds derive from it).
    """

    folds: int = 4
    rounds: int = 3
    alpha: float = DEFAULT_ALPHA
    threshold: float = DEFAULT_THRESHOLD
    model: str = "small_cnn"
    train: TrainConfig = field(default_factory=TrainConfig)
    features: str = "ssl"
    calibrate: bool = True
    ssl: SSLConfig = field(default_factory=SSLConfig)
    head: str = "network"
    linear: LinearHeadConfig = field(default_factory=LinearHeadConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise InputError(f"folds must be at least 2, got {self.folds}")
        if self.rounds < 1:
            raise InputError(f"rounds must be at least 1, got {self.rounds}")
        for name in ("alpha", "threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {value}")
        if self.features not in FEATURE_SPACES:
            raise InputError(f"unknown features {self.features!r}; choose one of: {', '.join(FEATURE_SPACES)}")
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        if isinstance(self.ssl, dict):
            self.ssl = SSLConfig.from_dict(self.ssl)
        if isinstance(self.linear, dict):
            self.linear = LinearHeadConfig.from_dict(self.linear)
        if self.head not in HEADS:
            raise InputError(f"unknown head {self.head!r}; choose one of: {', '.join(HEADS)}")



def paper_refinement(model: nn.Module, images: np.ndarray, labels: np.ndarray,
                     anchor_images: np.ndarray, anchor_labels: np.ndarray, *,
                     alpha: float = DEFAULT_ALPHA, threshold: float = DEFAULT_THRESHOLD,
                     class_names: Optional[List[str]] = None) -> RefinementResult:
    """The paper's rule with the noisy-trained classifier ``model``.

    Args:
        model: classifier trained on ``labels`` (an ``ImageClassifier``).
        images: (N, H, W, C) uint8 real images; labels: (N,) their noisy labels.
        anchor_images: (M, H, W, C) uint8 anchors in the same format; anchor_labels: (M,).
    """
    pred_probs = predict_proba(model, images)
    features = extract_features(model, images)
    anchor_features = extract_features(model, anchor_images)
    prototypes = class_prototypes(anchor_features, anchor_labels, pred_probs.shape[1], class_names=class_names)
    similarity = prototype_similarity(features, prototypes)
    result = relabel(labels, score_matrix(pred_probs, similarity, alpha=alpha), threshold=threshold, alpha=alpha)
    result.info.update(preset="paper", pred_probs=pred_probs, similarity=similarity)
    return result


def crossfit_refinement(images: np.ndarray, labels: np.ndarray, anchor_images: np.ndarray,
                        anchor_labels: np.ndarray, *, num_classes: int,
                        config: Optional[CrossFitRefineConfig] = None,
                        val_images: Optional[np.ndarray] = None, val_labels: Optional[np.ndarray] = None,
                        class_names: Optional[List[str]] = None, true_labels: Optional[np.ndarray] = None,
                        fixed_features: Optional[Tuple[np.ndarray, np.ndarray]] = None,
                        progress: bool = True) -> RefinementResult:
    """synref's default: cross-fitted, iterated anchor refinement.

    Args:
        images: (N, H, W, C) uint8; labels: (N,) given labels.
        anchor_images: (M, H, W, C) uint8, same format; anchor_labels: (M,).
        val_images, val_labels: optional held-out set that picks each fold model's best epoch.
        true_labels: optional (N,) clean labels, used only to log per-round accuracy.
        fixed_features: optional precomputed ``(features (N, D), anchor_features (M, D))`` in one
            fixed space (e.g. CLIP, or cached self-supervised features); overrides ``config.features``.
    Returns the last round's RefinementResult; ``info["rounds"]`` has per-round statistics and
    ``info["pred_probs"]`` / ``info["similarity"]`` the last round's (N, C) evidence.
    """
    config = config or CrossFitRefineConfig()
    labels = np.asarray(labels, dtype=np.int64)
    anchor_labels = np.asarray(anchor_labels, dtype=np.int64)
    # Fail early (before any training) on a class without anchors.
    counts = np.bincount(anchor_labels[(anchor_labels >= 0) & (anchor_labels < num_classes)], minlength=num_classes)
    if (counts == 0).any():
        c = int(np.flatnonzero(counts == 0)[0])
        name = f"{c} ({class_names[c]!r})" if class_names else str(c)
        raise InputError(f"class {name} has no anchors")
    info: Dict[str, Any] = {"features": config.features, "calibrate": config.calibrate, "head": config.head}
    fixed_similarity: Optional[np.ndarray] = None
    space: Optional[np.ndarray] = None  # (N, D) fixed features, for the linear head
    if fixed_features is not None:
        info["features"] = "precomputed"
        space = np.asarray(fixed_features[0], dtype=np.float32)
        fixed_similarity = anchor_similarity(space, fixed_features[1], anchor_labels, num_classes,
                                              config, class_names, info)
    elif config.features == "ssl":
        ssl_config = dataclasses.replace(config.ssl, seed=config.seed)
        encoder = train_simclr(images, config=ssl_config, extra_images=anchor_images, progress=progress,
                               desc="self-supervised encoder")
        space = extract_features(encoder, images)
        fixed_similarity = anchor_similarity(space, extract_features(encoder, anchor_images),
                                              anchor_labels, num_classes, config, class_names, info)
    if config.head == "linear" and space is None:
        raise InputError('head="linear" needs a fixed feature space: features="ssl" or fixed_features')
    current = labels
    rounds: List[Dict[str, Any]] = []
    result: Optional[RefinementResult] = None
    bar = progress_bar(range(config.rounds), desc="refine rounds", unit="round", enabled=None if progress else False)
    for r in bar:
        if config.head == "linear":
            assert space is not None and fixed_similarity is not None
            pred_probs = cross_fit_linear(space, current, num_classes=num_classes, folds=config.folds,
                                          seed=config.seed + r, config=config.linear)
            similarity = fixed_similarity
        else:
            train_cfg = dataclasses.replace(config.train, seed=config.train.seed + 1000 * r)
            fitted = cross_fit(images, current, model_name=config.model, num_classes=num_classes,
                               config=train_cfg, folds=config.folds, seed=config.seed + r, progress=progress,
                               val_images=val_images, val_labels=val_labels,
                               extra_images=anchor_images if fixed_similarity is None else None)
            pred_probs = fitted.pred_probs
        if config.head == "network" and fixed_similarity is not None:
            similarity = fixed_similarity
        elif config.head == "network":  # prototypes in each fold model's own feature space
            similarity = np.zeros((len(labels), num_classes), np.float32)
            for k in range(config.folds):
                held = fitted.fold_of == k
                similarity[held] = anchor_similarity(fitted.features[held], fitted.extra_features[k], anchor_labels,
                                                      num_classes, config, class_names, info)
        scores = score_matrix(pred_probs, similarity, alpha=config.alpha)
        result = relabel(labels, scores, threshold=config.threshold, alpha=config.alpha)
        stats: Dict[str, Any] = {"round": r, "num_changed": result.num_changed()}
        if true_labels is not None:
            stats["refined_label_acc"] = float(np.mean(result.refined_labels == true_labels))
        rounds.append(stats)
        bar.set_postfix(changed=stats["num_changed"])
        current = result.refined_labels
        result.info.update(pred_probs=pred_probs, similarity=similarity)
    bar.close()
    assert result is not None
    result.info.update(preset="synref", rounds=rounds, **info)
    return result


def anchor_similarity(features: np.ndarray, anchor_features: np.ndarray, anchor_labels: np.ndarray,
                      num_classes: int, config: CrossFitRefineConfig, class_names: Optional[List[str]],
                      info: Dict[str, Any]) -> np.ndarray:
    """(N, C) cosine similarity to the anchor prototypes; as probabilities when ``config.calibrate``
    (the fitted temperature is appended to ``info["temperatures"]``)."""
    prototypes = class_prototypes(anchor_features, anchor_labels, num_classes, class_names=class_names)
    similarity = prototype_similarity(features, prototypes)
    if not config.calibrate:
        return similarity
    temperature = fit_similarity_temperature(anchor_features, anchor_labels, num_classes, seed=config.seed,
                                             class_names=class_names)
    info.setdefault("temperatures", []).append(temperature)
    return similarity_to_probs(similarity, temperature)
