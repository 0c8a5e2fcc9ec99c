"""Which evidence and which refiner: the one recipe that ``synref refine`` (:class:`~synref.apps.
refine_run.RefineRunConfig`), the experiments (:class:`~synref.experiments.protocol.Protocol`:
``synref demo``, ``compare``, ``bench``) and the library hold.

- :class:`EvidenceSpec`: where the features and the out-of-sample softmax come from (the
  encoder, cross-fitted linear heads or networks, or one classifier's own softmax).
- :class:`RefinerSpec`: a :data:`~synref.refiners.REFINERS` name and the options set for it; an
  option the refiner does not take or does not use is refused by name when the spec is built.
- :func:`build_evidence`: the one function that builds :class:`~synref.evidence.Evidence` from a
  spec and the data (features streamed from image files, computed in memory, or given).
- :func:`build_refiner`: the one function that creates the refiner of a spec.

    evidence = build_evidence(EvidenceSpec(encoder="efficientnet-lite0"), data, anchors, cache=Path("cache"))
    result = refine(evidence, build_refiner(RefinerSpec("posterior", {"target_precision": 0.9})))
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .config import ConfigMixin
from .errors import InputError
from .evidence import (HEADS, CrossFitEvidenceConfig, Evidence, check_anchor_classes, classifier_evidence,
                       crossfit_evidence, linear_head_evidence)
from .features import (DEFAULT_CLIP_MODEL, DEFAULT_ENCODER, ExtractorContext, cached_features, check_space_name,
                       compute_features, extractor_from_context)
from .models import MODELS
from .refiners import REFINERS, DEFAULT_REFINER, Refiner, create_refiner, refiner_option_names, refiner_used_options
from .train import LinearHeadConfig, SSLConfig, TrainConfig

__all__ = ["EvidenceSpec", "RefinerSpec", "build_evidence", "build_refiner", "encode", "fixed_space", "EncodedSpace",
           "EVIDENCE_SOURCES", "TUNINGS", "GIVEN_ENCODER", "PRETRAINED_SIZE", "fold_schedule", "describe_evidence"]

#: where the evidence comes from: ``crossfit`` (every sample's softmax from a head that never
#: trained on it: k-fold cross-fitting) or ``classifier`` (one classifier's own softmax and
#: features: a saved checkpoint, or an experiment's Standard model, in-sample: the paper's recipe).
EVIDENCE_SOURCES = ("crossfit", "classifier")
#: how a frozen encoder's evidence is used: ``frozen`` (as it is) or ``finetune`` (then a
#: cross-fitted fine-tuned backbone's softmax joins as a separate view:
#: :mod:`synref.tuned_evidence`, ``--evidence finetune`` of refine, bench and compare).
TUNINGS = ("frozen", "finetune")
#: the encoder name of embeddings brought by the user (no encoder runs).
GIVEN_ENCODER = "given"
#: the input side of pretrained CNN encoders when a spec names none (image files are decoded
#: straight to it).
PRETRAINED_SIZE = 160


def fold_schedule(epochs: int, seed: int = 0) -> TrainConfig:
    """The small-data recipe of a network trained on a few thousand images (``synref refine
    --train``'s fold networks, the digits protocol's Standard model at 30 epochs): SGD, batch 64,
    lr 0.05, momentum 0.9, weight decay 5e-4, x0.1 at 1/2 and 5/6 of the epochs, 1 warm-up epoch,
    crop padding, no flips."""
    return TrainConfig(epochs=epochs, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4,
                       milestones=[epochs // 2, (epochs * 5) // 6], gamma=0.1, warmup_epochs=1, hflip=False,
                       seed=seed)


@dataclass
class EvidenceSpec(ConfigMixin):
    """Which evidence a refiner gets (saved in every config that re-runs a result).

    Attributes:
        source: one of :data:`EVIDENCE_SOURCES`.
        encoder: the feature space: a :data:`~synref.features.FEATURE_EXTRACTORS` name (a frozen,
            label-free encoder such as ``efficientnet-lite0``, ``clip`` or ``hf:ID_OR_FOLDER``;
            ``ssl``: a SimCLR encoder trained here on the images and the anchors),
            ``classifier`` (each fold network's own penultimate space; with source
            ``classifier``, that classifier's), or ``given`` (embeddings brought by the user).
        head: source ``crossfit``: ``linear`` (a linear softmax head per fold on the encoder's
            features: seconds) or ``network`` (a ``model`` per fold trained on the images with
            ``train``: minutes).
        folds: k of the cross-fitting.
        model, train: the fold network and its recipe (head ``network``; ``train`` None: the
            holder's default, e.g. a protocol's Standard recipe, else :func:`fold_schedule` (30)).
        linear: the linear heads' recipe (head ``linear``).
        ssl, ssl_model: the SimCLR recipe and network of encoder ``ssl`` (``ssl`` None: the
            holder's default, else ``SSLConfig()``).
        encoder_size: input side of pretrained CNN encoders (None: the encoder's own, else
            :data:`PRETRAINED_SIZE`).
        clip_model: the CLIP model of encoder ``clip``.
        tuning: one of :data:`TUNINGS` (``finetune``: pretrained evidence refined again with a
            fine-tuned backbone's out-of-fold softmax; its options are the run's).
    """

    config_name = "evidence"

    source: str = "crossfit"
    encoder: str = DEFAULT_ENCODER
    head: str = "linear"
    folds: int = 4
    model: str = "small_cnn"
    train: Optional[TrainConfig] = None
    linear: LinearHeadConfig = field(default_factory=LinearHeadConfig)
    ssl: Optional[SSLConfig] = None
    ssl_model: str = "small_cnn"
    encoder_size: Optional[int] = None
    clip_model: str = DEFAULT_CLIP_MODEL
    tuning: str = "frozen"

    def __post_init__(self) -> None:
        if self.tuning not in TUNINGS:
            raise InputError(f"--evidence must be one of {', '.join(TUNINGS)}, got {self.tuning!r}")
        if self.source not in EVIDENCE_SOURCES:
            raise InputError(f"{self.config_name}: source must be one of {', '.join(EVIDENCE_SOURCES)}, "
                             f"got {self.source!r}")
        if self.head not in HEADS:
            raise InputError(f"{self.config_name}: head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.encoder != GIVEN_ENCODER:
            self.encoder = check_space_name(self.encoder, f"{self.config_name} encoder")
        for name in ("model", "ssl_model"):
            if getattr(self, name) not in MODELS:
                raise InputError(f"{self.config_name}: unknown {name} {getattr(self, name)!r}; choose one of: "
                                 f"{', '.join(MODELS.names())}")
        if int(self.folds) < 2:
            raise InputError(f"{self.config_name}: folds must be at least 2, got {self.folds}")
        if self.source == "crossfit" and self.head == "linear" and self.encoder == "classifier":
            raise InputError(f"{self.config_name}: a linear head needs a fixed feature space (an encoder), not "
                             "each fold network's own (encoder classifier goes with head network)")
        if self.encoder_size is not None and int(self.encoder_size) < 1:
            raise InputError(f"{self.config_name}: encoder_size must be at least 1, got {self.encoder_size}")

    @property
    def trains_networks(self) -> bool:
        """True when building it trains networks on the images (they must be in memory)."""
        return self.source == "crossfit" and self.head == "network"

    @property
    def frozen_encoder(self) -> bool:
        """True when the features come from a frozen pretrained encoder (computed once and
        cacheable: not ``ssl``, not the networks' own, not given)."""
        return self.encoder not in ("classifier", GIVEN_ENCODER, "ssl")

    @property
    def fixed_encoder(self) -> bool:
        """True when the features are one fixed space an encoder computes (not the fold networks'
        or the classifier's own, not given)."""
        return self.encoder not in ("classifier", GIVEN_ENCODER)


def describe_evidence(spec: EvidenceSpec) -> str:
    """One line saying what the evidence of ``spec`` is (results pages, summaries)."""
    if spec.source == "classifier":
        space = "its penultimate features" if spec.encoder == "classifier" else f"{spec.encoder} features"
        return f"one classifier's own softmax (in-sample) and {space}"
    if spec.encoder == "classifier":
        space = "each fold network's own features"
    elif spec.encoder == "ssl":
        space = "a SimCLR encoder trained on the images + anchors"
    elif spec.encoder == GIVEN_ENCODER:
        space = "the given features"
    else:
        space = f"frozen {spec.encoder} features" + (f" ({spec.encoder_size} px)" if spec.encoder_size else "")
    head = "a linear softmax head" if spec.head == "linear" else f"a {spec.model}"
    return f"{space} + {spec.folds}-fold cross-fitted softmax of {head}"


# ------------------------------------------------------------------------------ refiner
@dataclass
class RefinerSpec(ConfigMixin):
    """A refiner and the options set for it (the refiner's ``Options`` class fills the rest).

    Attributes:
        name: a :data:`~synref.refiners.REFINERS` name.
        options: option -> value; an option the refiner does not take, or takes but does not use
            (``alpha`` / ``threshold`` with ``posterior``), is an InputError naming it and the
            refiners it applies to.
    """

    config_name = "refiner"

    name: str = DEFAULT_REFINER
    options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in REFINERS:
            raise InputError(f"unknown refiner {self.name!r}; choose one of: {', '.join(REFINERS.choices())}")
        self.name = REFINERS.canonical(self.name)
        self.options = dict(self.options)
        check_refiner_options(self.name, self.options)
        build_refiner(self)  # the values go through the refiner's own config class

    def value(self, option: str) -> Any:
        """The value of ``option``: set, or the refiner's default."""
        if option in self.options:
            return self.options[option]
        return getattr(REFINERS.get(self.name).Options(), option)  # type: ignore[attr-defined]


def refiners_using(option: str) -> List[str]:
    """The refiners that use ``option``."""
    return [name for name in REFINERS.names() if option in refiner_used_options(name)]


def check_refiner_options(name: str, options: Dict[str, Any], flags: Optional[Dict[str, str]] = None) -> None:
    """InputError naming the first of ``options`` that the refiner ``name`` does not take or does
    not use, and the refiners it applies to (``flags``: option -> how the user wrote it)."""
    used = refiner_used_options(name)
    for option in options:
        if option in used:
            continue
        shown = (flags or {}).get(option, option)
        users = refiners_using(option)
        if not users and option not in refiner_option_names(name):
            raise InputError(f"refiner {name}: unknown option {shown}; it takes: {', '.join(sorted(used))}")
        raise InputError(f"{shown} does not apply to refiner {name}; it applies to refiner "
                         f"{' / '.join(users) or '(none)'}")


def build_refiner(spec: RefinerSpec, **overrides: Any) -> Refiner:
    """The refiner of ``spec``: the one place a refiner is created from a spec. ``overrides`` are
    a caller's own settings (``keep_scores``, ``rounds`` of a one-round row), not user options."""
    return create_refiner(spec.name, **{**spec.options, **overrides})


# ------------------------------------------------------------------------------ features
@dataclass
class EncodedSpace:
    """Features of a dataset and its anchors in one encoder's space (:func:`encode`).

    Attributes:
        features: (N, D) float32, memory-mapped from the cache for streamed sets (all-zero rows
            for the files left out with ``skip_bad``).
        anchor_features: (M, D) float32.
        skipped: ``{"index", "file", "reason"}`` of the unreadable files left out.
        resumed: the features were (partly) computed by an earlier run.
        seconds: wall time of the dataset's features.
        file: the cache file of the features ("" without a cache).
        image_size: [H, W] the files were decoded at (None for arrays).
    """

    features: Any
    anchor_features: np.ndarray
    skipped: List[Dict[str, Any]] = field(default_factory=list)
    resumed: bool = False
    seconds: float = 0.0
    file: str = ""
    image_size: Optional[List[int]] = None


def _extractor(spec: EvidenceSpec, *, images: Any = None, anchors: Any = None, model: Any = None,
               device: Optional[str] = None, ssl: Optional[SSLConfig] = None):
    context = ExtractorContext(images=images, extra_images=anchors, ssl_config=ssl or spec.ssl or SSLConfig(),
                               ssl_model=spec.ssl_model, size=spec.encoder_size or PRETRAINED_SIZE,
                               clip_model=spec.clip_model, model=model, device=device)
    return extractor_from_context(spec.encoder, context)


def encode(spec: EvidenceSpec, data: Any, anchors: Any, cache: Optional[Path], *, rank: int = 0, world: int = 1,
           barrier: Optional[Callable[[], Any]] = None, device: Optional[str] = None, skip_bad: bool = False,
           batch_size: int = 64, workers: int = 2, chunk_size: int = 4096) -> EncodedSpace:
    """The features of ``data`` and ``anchors`` (:class:`~synref.data.LabeledImages`) in the
    frozen encoder of ``spec``. Path-backed sets are **streamed**: decoded a batch at a time
    (``workers`` threads) at the encoder's input side with 3 channels, in chunks of
    ``chunk_size`` rows cached under ``cache`` (a killed run resumes at the first missing chunk;
    under a launch of ``world`` processes each computes its share of the chunks); arrays go to
    the encoder as they are. Call it in every process of a launch: each gets the same arrays."""
    side = int(spec.encoder_size) if spec.encoder_size is not None else PRETRAINED_SIZE
    extractor = _extractor(dataclasses.replace(spec, encoder_size=side), device=device)
    if spec.encoder_size is None and extractor.input_side:  # an hf: model's own input size
        side = int(extractor.input_side)
    options = dict(cache_dir=cache, process_index=rank, num_processes=world, barrier=barrier, batch_size=batch_size,
                   chunk_size=chunk_size, num_workers=workers)

    def geometry(images: Any) -> Dict[str, Any]:
        return {"size": (side, side), "channels": 3} if images.is_path_backed else {}

    started = time.time()
    computed = compute_features(extractor, data, skip_bad=skip_bad, **geometry(data), **options)
    seconds = time.time() - started
    anchor_set = compute_features(extractor, anchors, **geometry(anchors), **options)
    path = Path(getattr(computed.features, "filename", "") or "")
    resumed = path.is_file() and path.stat().st_mtime < started
    return EncodedSpace(computed.features, np.asarray(anchor_set.features), list(computed.skipped), bool(resumed),
                        round(seconds, 3), str(path) if str(path) != "." else "",
                        [side, side] if data.is_path_backed else None)


def fixed_space(spec: EvidenceSpec, images: np.ndarray, anchor_images: np.ndarray, cache: Optional[Path], *,
                model: Any = None, device: Optional[str] = None, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(features (N, D), anchor features (M, D)) of in-memory ``images`` and ``anchor_images``
    in the fixed space of ``spec`` (an encoder; ``classifier`` with ``model``: that model's
    penultimate space), cached under ``cache`` when given."""
    ssl = dataclasses.replace(spec.ssl or SSLConfig(), seed=seed)
    extractor = _extractor(spec, images=images, anchors=anchor_images, model=model, device=device, ssl=ssl)
    if cache is None:
        return extractor.extract(images), extractor.extract(anchor_images)
    return (np.asarray(cached_features(extractor, images, cache_dir=cache)),
            np.asarray(cached_features(extractor, anchor_images, cache_dir=cache)))


# ------------------------------------------------------------------------------ evidence
def build_evidence(spec: EvidenceSpec, data: Any, anchors: Any, cache: Optional[Path] = None, *, rank: int = 0,
                   world: int = 1, seed: int = 0, labels: Optional[np.ndarray] = None,
                   features: Optional[Tuple[Any, np.ndarray]] = None, classifier: Any = None, val: Any = None,
                   device: Optional[str] = None, barrier: Optional[Callable[[], Any]] = None) -> Evidence:
    """The evidence of ``spec`` for ``data`` (its ``labels``, ``class_names`` and, unless the
    features are given, its images or files) and ``anchors`` (their ``labels`` and images): the
    one place evidence is built.

    Args:
        cache: folder of cached features (None: nothing is written).
        rank, world, barrier: this process and the launch (a path-backed ``data`` is streamed,
            its feature chunks split between the processes; see :func:`encode`).
        seed: fold splits, the fold networks' and encoders' seeds.
        labels: (N,) the given labels (default ``data.labels``).
        features: precomputed ``(features (N, D), anchor features (M, D))`` in the spec's fixed
            space (streamed by :func:`encode`, given by the user, cached by an experiment).
        classifier: the trained classifier of source ``classifier``.
        val: a clean validation set (``images``, ``labels``) that picks each fold network's epoch.
        device: where networks train and encoders run.
    """
    labels = np.asarray(data.labels if labels is None else labels)
    num_classes = len(data.class_names)
    check_anchor_classes(anchors.labels, num_classes, data.class_names)
    images = getattr(data, "images", None)
    anchor_images = getattr(anchors, "images", None)
    if spec.source == "classifier":
        if classifier is None:
            raise InputError("evidence source classifier needs a classifier (a checkpoint or a trained model)")
        if features is None and spec.encoder == "classifier" and cache is None:
            return classifier_evidence(classifier, images, labels, anchor_images, anchors.labels,
                                       class_names=data.class_names, seed=seed)
        space = features if features is not None else fixed_space(spec, images, anchor_images, cache,
                                                                  model=classifier, device=device, seed=seed)
        return classifier_evidence(classifier, images, labels, None, anchors.labels, features=space[0],
                                   anchor_features=space[1], class_names=data.class_names, seed=seed)
    if features is None and spec.fixed_encoder:
        if images is None:  # image files: streamed into the encoder
            encoded = encode(spec, data, anchors, cache, rank=rank, world=world, barrier=barrier, device=device)
            features = (encoded.features, encoded.anchor_features)
        else:
            features = fixed_space(spec, images, anchor_images, cache, device=device, seed=seed)
    if spec.head == "linear":
        if features is None:
            raise InputError("a linear head needs features: a fixed encoder, or given features")
        return linear_head_evidence(features[0], labels, np.asarray(features[1]), anchors.labels,
                                    num_classes=num_classes, folds=spec.folds, seed=seed, config=spec.linear,
                                    class_names=data.class_names, description={"features": spec.encoder})
    train = dataclasses.replace(spec.train or fold_schedule(30), seed=seed)
    if device is not None:
        train = dataclasses.replace(train, device=device)
    config = CrossFitEvidenceConfig(folds=spec.folds, head="network", model=spec.model, train=train,
                                    linear=spec.linear, features="classifier", seed=seed)
    return crossfit_evidence(images, labels, anchor_images, anchors.labels, num_classes=num_classes, config=config,
                             val_images=None if val is None else val.images,
                             val_labels=None if val is None else val.labels, fixed_features=features,
                             class_names=data.class_names)
