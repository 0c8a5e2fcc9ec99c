"""Builders of :class:`~synref.evidence.Evidence`, one per way synref gets it.

- :func:`crossfit_evidence`: synref's cross-fitted evidence (what ``synref refine --train``,
  the demo, the bench and compare use): a fixed space (given, or a SimCLR encoder trained here)
  or each fold model's own space, and the out-of-sample softmax of a ``network`` per fold or a
  ``linear`` head per fold; ``refit`` retrains on new labels for the next round.
- :func:`linear_head_evidence`: a cross-fitted linear head on fixed features.
- :func:`network_evidence`: cross-fitted networks on images (per-fold spaces or a fixed one).
- :func:`classifier_evidence`: one trained (or saved) classifier's in-sample softmax and
  features, as the paper uses them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..config import ConfigMixin
from ..errors import InputError
from ..models import MODELS, ImageClassifier, extract_features, load_classifier, predict_proba
from ..train import (LinearHeadConfig, SSLConfig, TrainConfig, cross_fit, cross_fit_linear, train_simclr)
from ..validation import as_labels
from .evidence import Evidence

__all__ = ["CrossFitEvidenceConfig", "crossfit_evidence", "linear_head_evidence", "network_evidence",
           "classifier_evidence", "check_anchor_classes", "FEATURE_SPACES", "HEADS"]

#: where the features of :func:`crossfit_evidence` come from when no fixed space is given.
FEATURE_SPACES = ("ssl", "classifier")
#: where its cross-fitted softmax comes from.
HEADS = ("network", "linear")

FixedSpace = Tuple[np.ndarray, np.ndarray]


@dataclass
class CrossFitEvidenceConfig(ConfigMixin):
    """How :func:`crossfit_evidence` is made.

    Attributes:
        folds: k of the k-fold cross-fitting.
        head: ``network`` (a ``model`` trained per fold on the images) or ``linear`` (a linear
            softmax head per fold on the fixed space: seconds instead of minutes).
        model, train: the network of each fold and its recipe (``head="network"``).
        linear: the linear head's recipe (``head="linear"``).
        features: without a given fixed space: ``ssl`` (a SimCLR encoder trained here on the
            unlabelled real images + anchors; never sees a label) or ``classifier`` (each fold
            network's own penultimate space, anchors passed through every fold model).
        ssl: the SimCLR recipe (``features="ssl"``).
        seed: fold splits (``seed + round``) and the encoder's seed derive from it.
    """

    config_name = "cross-fit evidence config"

    folds: int = 4
    head: str = "network"
    model: str = "small_cnn"
    train: TrainConfig = field(default_factory=TrainConfig)
    linear: LinearHeadConfig = field(default_factory=LinearHeadConfig)
    features: str = "ssl"
    ssl: SSLConfig = field(default_factory=SSLConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise InputError(f"folds must be at least 2, got {self.folds}")
        if self.features not in FEATURE_SPACES:
            raise InputError(f"unknown features {self.features!r}; choose one of: {', '.join(FEATURE_SPACES)}")
        if self.head not in HEADS:
            raise InputError(f"unknown head {self.head!r}; choose one of: {', '.join(HEADS)}")
        if self.model not in MODELS:
            raise InputError(f"unknown model {self.model!r}; choose one of: {', '.join(MODELS.names())}")


def check_anchor_classes(anchor_labels: np.ndarray, num_classes: int,
                         class_names: Optional[Sequence[str]] = None) -> None:
    """InputError naming the first class without anchors (checked before any training)."""
    anchor_labels = np.asarray(anchor_labels, dtype=np.int64)
    counts = np.bincount(anchor_labels[(anchor_labels >= 0) & (anchor_labels < num_classes)], minlength=num_classes)
    if (counts == 0).any():
        c = int(np.flatnonzero(counts == 0)[0])
        name = f"{c} ({class_names[c]!r})" if class_names else str(c)
        raise InputError(f"class {name} has no anchors")


def linear_head_evidence(features: np.ndarray, labels: np.ndarray, anchor_features: np.ndarray,
                         anchor_labels: np.ndarray, *, num_classes: int, folds: int = 4, seed: int = 0,
                         config: Optional[LinearHeadConfig] = None, class_names: Optional[List[str]] = None,
                         description: Optional[Dict[str, Any]] = None) -> Evidence:
    """Evidence in a fixed space (``features`` (N, D), may be a memory map; ``anchor_features``
    (M, D)) with the out-of-sample softmax of a linear head per fold
    (:func:`~synref.train.cross_fit_linear`, fold split ``seed + round``), computed when a
    refiner first reads it (:meth:`Evidence.resolve_pred_probs`); ``refit`` fits the heads again
    on new labels."""
    desc = {"head": "linear", **(description or {})}  # pred_probs_view: "same", Evidence's default

    def fit(train_labels: np.ndarray, round_: int) -> Evidence:
        def pred_probs() -> np.ndarray:  # computed on first use: the posterior refiner rarely reads them
            return cross_fit_linear(features, train_labels, num_classes=num_classes, folds=folds,
                                    seed=seed + round_, config=config)

        return Evidence(train_labels, num_classes, anchor_labels, features=features, anchor_features=anchor_features,
                        pred_probs_fn=pred_probs, class_names=class_names, refit=fit, seed=seed, description=desc)

    return fit(as_labels(labels, num_classes), 0)


def network_evidence(images: np.ndarray, labels: np.ndarray, anchor_images: np.ndarray, anchor_labels: np.ndarray,
                     *, num_classes: int, model: str = "small_cnn", train: Optional[TrainConfig] = None,
                     folds: int = 4, seed: int = 0, val_images: Optional[np.ndarray] = None,
                     val_labels: Optional[np.ndarray] = None, space: Optional[FixedSpace] = None,
                     class_names: Optional[List[str]] = None,
                     description: Optional[Dict[str, Any]] = None) -> Evidence:
    """Evidence from ``folds`` networks (:func:`~synref.train.cross_fit`): every sample's softmax
    from the model that held it out. Features: the fixed ``space`` ``(features (N, D), anchor
    features (M, D))`` when given, else each fold model's own penultimate space (``fold_ids``
    set; the anchors go through every fold model). Round r of ``refit`` trains with
    ``train.seed + 1000 r`` on the fold split ``seed + r``. ``val_*`` pick each fold's best epoch."""
    train = train if train is not None else TrainConfig()
    # pred_probs of networks on the pixels are a separate view of a fixed space, the same view as
    # the fold networks' own penultimate features
    desc = {"head": "network", "pred_probs_view": "same" if space is None else "separate", **(description or {})}

    def fit(train_labels: np.ndarray, round_: int) -> Evidence:
        config = dataclasses.replace(train, seed=train.seed + 1000 * round_)
        fitted = cross_fit(images, train_labels, model_name=model, num_classes=num_classes, config=config,
                           folds=folds, seed=seed + round_, val_images=val_images, val_labels=val_labels,
                           extra_images=anchor_images if space is None else None)
        if space is None:
            return Evidence(train_labels, num_classes, anchor_labels, features=fitted.features,
                            anchor_features=fitted.extra_features, pred_probs=fitted.pred_probs,
                            fold_ids=fitted.fold_of, class_names=class_names, refit=fit, seed=seed, description=desc)
        return Evidence(train_labels, num_classes, anchor_labels, features=space[0], anchor_features=space[1],
                        pred_probs=fitted.pred_probs, class_names=class_names, refit=fit, seed=seed, description=desc)

    return fit(as_labels(labels, num_classes), 0)


def ssl_space(images: np.ndarray, anchor_images: np.ndarray, config: SSLConfig) -> FixedSpace:
    """``(features (N, D), anchor features (M, D))`` of a SimCLR encoder trained on the
    unlabelled ``images`` plus the anchors (it never sees a label)."""
    encoder = train_simclr(images, config=config, extra_images=anchor_images, desc="self-supervised encoder")
    return extract_features(encoder, images), extract_features(encoder, anchor_images)


def crossfit_evidence(images: np.ndarray, labels: np.ndarray, anchor_images: np.ndarray, anchor_labels: np.ndarray,
                      *, num_classes: int, config: Optional[CrossFitEvidenceConfig] = None,
                      val_images: Optional[np.ndarray] = None, val_labels: Optional[np.ndarray] = None,
                      fixed_features: Optional[FixedSpace] = None,
                      class_names: Optional[List[str]] = None) -> Evidence:
    """synref's cross-fitted evidence (see :class:`CrossFitEvidenceConfig`).

    Args:
        images: (N, H, W, C) uint8; labels: (N,) given labels.
        anchor_images: (M, H, W, C) uint8, same format; anchor_labels: (M,).
        val_images, val_labels: optional held-out set that picks each fold network's best epoch.
        fixed_features: optional precomputed ``(features (N, D), anchor_features (M, D))`` in
            one fixed space (e.g. CLIP or EfficientNet features); overrides ``config.features``.
    A class without anchors raises InputError before any training.
    """
    config = config if config is not None else CrossFitEvidenceConfig()
    labels = as_labels(labels, num_classes)
    anchor_labels = np.asarray(anchor_labels, dtype=np.int64)
    check_anchor_classes(anchor_labels, num_classes, class_names)
    space: Optional[FixedSpace] = None
    if fixed_features is not None:
        space = (np.asarray(fixed_features[0], dtype=np.float32), fixed_features[1])
        features = "precomputed"
    elif config.features == "ssl":
        space = ssl_space(images, anchor_images, dataclasses.replace(config.ssl, seed=config.seed))
        features = "ssl"
    else:
        features = "classifier"
    if config.head == "linear":
        if space is None:
            raise InputError('head="linear" needs a fixed feature space: features="ssl" or fixed_features')
        return linear_head_evidence(space[0], labels, space[1], anchor_labels, num_classes=num_classes,
                                    folds=config.folds, seed=config.seed, config=config.linear,
                                    class_names=class_names, description={"features": features})
    return network_evidence(images, labels, anchor_images, anchor_labels, num_classes=num_classes, model=config.model,
                            train=config.train, folds=config.folds, seed=config.seed, val_images=val_images,
                            val_labels=val_labels, space=space, class_names=class_names,
                            description={"features": features})


def classifier_evidence(classifier: Union[ImageClassifier, str], images: np.ndarray, labels: np.ndarray,
                        anchor_images: Optional[np.ndarray], anchor_labels: np.ndarray, *,
                        features: Optional[np.ndarray] = None, anchor_features: Optional[np.ndarray] = None,
                        class_names: Optional[List[str]] = None, seed: int = 0) -> Evidence:
    """One classifier's evidence (a model, or the path of a :func:`~synref.models.save_classifier`
    checkpoint): its softmax on ``images`` and, unless a fixed space (``features``,
    ``anchor_features``) is given, its penultimate features of the images and the anchors. When
    the classifier trained on these labels the evidence is in-sample (the paper's rule uses it
    so); no ``refit``."""
    model = load_classifier(classifier) if isinstance(classifier, (str, bytes)) or hasattr(classifier, "__fspath__") \
        else classifier
    num_classes = int(model.num_classes)
    pred_probs = predict_proba(model, images)
    if features is None:
        if anchor_images is None:
            raise InputError("classifier evidence needs anchor_images (or features and anchor_features)")
        features = extract_features(model, images)
        anchor_features = extract_features(model, anchor_images)
    return Evidence(labels, num_classes, anchor_labels, features=features, anchor_features=anchor_features,
                    pred_probs=pred_probs, class_names=class_names, seed=seed,
                    description={"head": "classifier (in-sample)"})  # pred_probs_view: "same", the default
