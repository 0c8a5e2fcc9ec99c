"""``synref refine`` as one library call: a user's labelled images in, suggested labels out.

    summary = run_refine(RefineRunConfig(data="photos/", anchors="anchors/", train=True), out="out/")

Steps: load the data (image folder, CSV manifest or CIFAR layout; optional label-file override;
bad images stop the run or, with ``skip_bad``, are listed in the summary) -> anchors (an anchor
set from ``synref generate``, or generated into ``OUT/anchors``) matched by class name ->
evidence (a saved classifier's softmax, or k-fold cross-fitted classifiers trained here; features
from the classifier or a fixed space: CLIP, a self-supervised encoder, EfficientNet-Lite0) ->
:func:`synref.refiners.refine` with the chosen refiner -> results (``refined_labels.csv``,
``scores.npy``, ``summary.json``, ``config.json``, ``report.html``; see DEVELOPERS.md).

Everything expensive is cached under ``OUT/cache`` (features per extractor, cross-fitted
evidence per configuration), and every file is written atomically, so a killed run re-run with
the same ``--out`` picks up where it stopped. ``OUT/config.json`` re-runs the folder:
``run_refine(RefineRunConfig.load("OUT/config.json"), out="OUT2")`` writes the same
``refined_labels.csv``.
"""
from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .. import __version__
from ..anchors import create_generator, generate_anchor_set, load_matched_anchors
from ..anchors.store import read_meta
from ..config import ConfigMixin
from ..data import LabeledImages, decode_images, load_dataset, load_labels_file
from ..errors import InputError
from ..evidence import CrossFitEvidenceConfig, Evidence, classifier_evidence, crossfit_evidence
from ..features import DEFAULT_CLIP_MODEL, FEATURE_EXTRACTORS, ExtractorContext, cached_features, extractor_from_context
from ..hashing import digest
from ..io import atomic_open, check_not_inside, check_output_dir, remove_stale_temp_files, write_json, write_npy
from ..models import create_model, load_classifier, read_checkpoint
from ..refiners import (DEFAULT_REFINER, REFINERS, Refiner, RefinementResult, create_refiner, refine,
                        refiner_option_names)
from ..train import TrainConfig, activation_bytes, checkpoint_folder, clear_checkpoints, estimate_fit_bytes
from ..validation import check_memory
from .report import write_report

__all__ = ["RefineRunConfig", "run_refine", "format_refine_summary", "load_images", "load_anchors",
           "build_evidence"]

#: the working size of pretrained CNN spaces (EfficientNet-Lite0) in ``synref refine``.
PRETRAINED_SIZE = 160
#: the smallest working image side (``--image-size`` and the data's own size).
MIN_IMAGE_SIZE = 4


@dataclass
class RefineRunConfig(ConfigMixin):
    """Options of one ``synref refine`` run (saved as ``OUT/config.json``; ``--config`` re-runs it).

    Attributes:
        data: "digits", an image folder, a CSV manifest (path,label) or a CIFAR python layout.
        split: which split of ``data`` (CIFAR train/test, split folders or a CSV split column).
        labels: optional label file (.npy or one per line) replacing the dataset's labels.
        anchors: an anchor-set folder from ``synref generate``; or ``generator`` (+ options,
            ``per_class``) to generate one into ``OUT/anchors``.
        classifier: a checkpoint saved with ``synref.models.save_classifier``; or ``train`` to
            train k-fold cross-fitted classifiers (``model``, ``epochs``, ``folds``; ``rounds``
            of the refiner).
        features: a :data:`~synref.features.FEATURE_EXTRACTORS` name: "classifier" (penultimate
            layer), "clip" (``clip_model``), "ssl" or "efficientnet-lite0" (ImageNet-pretrained,
            offline; 160 px).
        refiner: a :data:`~synref.refiners.REFINERS` name (default ``posterior``); its options,
            when it has them: alpha, threshold (the score rule), calibrate (similarity as
            anchor-calibrated probabilities), rounds (with ``train``), target_precision (the
            estimated precision the posterior refiner's changes must keep).
        image_size: working resolution (square); None keeps the data's (most common) size.
        skip_bad: leave unreadable images out (listed in the summary) instead of stopping.
    """

    config_name = "refine config"

    data: str = ""
    split: str = "train"
    labels: Optional[str] = None
    anchors: Optional[str] = None
    generator: Optional[str] = None
    generator_options: Dict[str, Any] = field(default_factory=dict)
    per_class: int = 100
    classifier: Optional[str] = None
    train: bool = False
    model: str = "small_cnn"
    epochs: int = 30
    folds: int = 4
    rounds: int = 1
    features: str = "classifier"
    clip_model: str = DEFAULT_CLIP_MODEL
    refiner: str = DEFAULT_REFINER
    alpha: float = 0.5
    threshold: float = 0.6
    calibrate: bool = True
    target_precision: Optional[float] = None
    image_size: Optional[int] = None
    skip_bad: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not str(self.data).strip():
            raise InputError("--data is required (an image folder, a CSV manifest, a CIFAR folder or 'digits')")
        if (self.anchors is None) == (self.generator is None):
            raise InputError("give exactly one of --anchors DIR or --generate (with --generator)")
        if (self.classifier is None) == (not self.train):
            raise InputError("give exactly one of --classifier CKPT or --train")
        if self.features not in FEATURE_EXTRACTORS:
            raise InputError(f"unknown --features {self.features!r}; choose one of: "
                             f"{', '.join(FEATURE_EXTRACTORS.choices())}")
        for name in ("alpha", "threshold"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise InputError(f"--{name} must be in [0, 1], got {value}")
        for name, minimum in (("folds", 2), ("rounds", 1), ("per_class", 1), ("epochs", 1)):
            if int(getattr(self, name)) < minimum:
                raise InputError(f"--{name.replace('_', '-')} must be at least {minimum}, got {getattr(self, name)}")
        if self.image_size is not None and int(self.image_size) < MIN_IMAGE_SIZE:
            raise InputError(f"--image-size must be at least {MIN_IMAGE_SIZE}, got {self.image_size}")
        if self.refiner not in REFINERS:
            raise InputError(f"unknown --refiner {self.refiner!r}; choose one of: {', '.join(REFINERS.choices())}")
        self.refiner_for_run()  # the refiner options go through the refiner's own config class

    def refiner_for_run(self) -> Refiner:
        """The refiner with this run's options (``rounds`` only with ``train``: a saved
        classifier cannot be refit)."""
        accepted = refiner_option_names(self.refiner)
        if self.target_precision is not None and "target_precision" not in accepted:
            raise InputError(f"--target-precision applies to the posterior refiner, not --refiner {self.refiner}")
        options = {"alpha": self.alpha, "threshold": self.threshold, "calibrate": self.calibrate,
                   "rounds": self.rounds if self.train else 1, "seed": self.seed, "keep_scores": True,
                   "target_precision": self.target_precision}
        return create_refiner(self.refiner, **{k: v for k, v in options.items() if k in accepted})

    def evidence_config(self) -> CrossFitEvidenceConfig:
        """The cross-fitted evidence of ``train`` runs."""
        train = TrainConfig(epochs=self.epochs, batch_size=64, lr=0.05,
                            milestones=[self.epochs // 2, (self.epochs * 5) // 6], gamma=0.1, warmup_epochs=1,
                            seed=self.seed)
        return CrossFitEvidenceConfig(folds=self.folds, head="network", model=self.model, train=train,
                                      features="classifier" if self.space == "classifier" else "ssl", seed=self.seed)

    @property
    def space(self) -> str:
        """The canonical feature extractor name of ``features``."""
        return FEATURE_EXTRACTORS.canonical(self.features)


# ----------------------------------------------------------------------------- steps
def load_images(config: RefineRunConfig) -> Tuple[LabeledImages, List[Dict[str, str]]]:
    """The dataset as uint8 (N, H, W, C) at the working size, and the skipped files."""
    dataset = load_dataset(config.data, split=config.split)
    if len(dataset) == 0:
        raise InputError(f"dataset {config.data} is empty")
    if config.labels is not None:
        labels = load_labels_file(config.labels, num_samples=len(dataset), num_classes=dataset.num_classes)
        dataset = dataset.with_labels(labels)
    size = None if config.image_size is None else (int(config.image_size), int(config.image_size))
    check = _working_size_check(config, dataset.num_classes)
    return decode_images(dataset, size=size, skip_bad=config.skip_bad, check=check)


def _num_anchors(config: RefineRunConfig, num_classes: int) -> int:
    """The anchors the run will hold (generated, or the set's own count; 0 when unreadable)."""
    if config.generator is not None:
        return int(config.per_class) * num_classes
    try:
        meta = read_meta(config.anchors)  # type: ignore[arg-type]
        return int(meta["per_class"]) * len(meta["class_names"])
    except InputError:
        return 0  # load_anchors names the problem


def _working_size_check(config: RefineRunConfig, num_classes: int) -> Callable[[Tuple[int, int], int, int], None]:
    """The check of the working geometry, before decoding: images of at least MIN_IMAGE_SIZE px
    and the memory of the images, the anchors and a training or inference step at that size."""
    def check(hw: Tuple[int, int], channels: int, n: int) -> None:
        if config.image_size is None and min(hw) < MIN_IMAGE_SIZE:
            raise InputError(f"the images of --data {config.data} are {hw[0]}x{hw[1]} px, smaller than the "
                             f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} px synref works at; pass --image-size "
                             f"{MIN_IMAGE_SIZE} or more to upscale them, or use larger images")
        anchors = _num_anchors(config, num_classes)
        need = float(n + anchors) * hw[0] * hw[1] * channels
        if config.classifier is not None:
            header, _ = read_checkpoint(config.classifier)
            name, what = str(header.get("name")), "the classifier's forward pass"
            model = create_model(name, num_classes=max(int(header.get("num_classes", 2)), 2), in_channels=channels)
            need += min(n, 512) * activation_bytes(model, hw, channels)
        else:
            name, what = config.model, f"training {config.model}"
            model = create_model(name, num_classes=max(num_classes, 2), in_channels=channels)
            need += estimate_fit_bytes(model, hw, channels, min(n, 64))
        check_memory(need, f"working at {hw[0]}x{hw[1]} px ({n} images, {anchors} anchors, {what})",
                     "pass a smaller --image-size (e.g. 64 or 224)")
    return check


def load_anchors(config: RefineRunConfig, dataset: LabeledImages, out: Path) -> Tuple[LabeledImages, Dict[str, Any]]:
    """Anchors relabelled to the dataset's class indices (matched by name) and brought to its
    image size and channels. Returns them and a description for the summary."""
    if config.generator is not None:
        anchor_dir = out / "anchors"
        generator = create_generator(config.generator, **config.generator_options)
        generate_anchor_set(generator, dataset.class_names, config.per_class, anchor_dir, seed=config.seed)
        source: Dict[str, Any] = {"generated": config.generator, "dir": str(anchor_dir), **config.generator_options}
    else:
        anchor_dir = Path(config.anchors)  # type: ignore[arg-type]
        source = {"dir": str(anchor_dir)}
    assert dataset.images is not None
    anchors, extra = load_matched_anchors(anchor_dir, dataset.class_names, size=dataset.images.shape[1:3],
                                          channels=dataset.images.shape[-1])
    source.update(num_anchors=len(anchors), ignored_anchor_classes=extra)
    return anchors, source


def fixed_space(config: RefineRunConfig, dataset: LabeledImages, anchors: LabeledImages, cache: Path,
                model: Any = None) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(features (N, D), anchor features (M, D)) in one fixed space, cached; None when the
    features come from each cross-fitted fold model (``classifier`` without a saved one)."""
    if config.space == "classifier" and model is None:
        return None
    context = ExtractorContext(images=dataset.images, extra_images=anchors.images, ssl_config={"seed": config.seed},
                               size=PRETRAINED_SIZE, clip_model=config.clip_model, model=model)
    extractor = extractor_from_context(config.space, context)
    features = np.asarray(cached_features(extractor, dataset.images, cache_dir=cache))
    anchor_features = np.asarray(cached_features(extractor, anchors.images, cache_dir=cache))
    return features, anchor_features


def build_evidence(config: RefineRunConfig, dataset: LabeledImages, anchors: LabeledImages, cache: Path
                   ) -> Tuple[Evidence, Dict[str, Any]]:
    """The run's evidence (a saved classifier's, or cross-fitted) and a description of it."""
    num_classes = dataset.num_classes
    if config.classifier is not None:
        model = load_classifier(config.classifier)
        if model.num_classes != num_classes:
            raise InputError(f"--classifier {config.classifier} has {model.num_classes} classes, "
                             f"the data has {num_classes}")
        if model.in_channels != dataset.images.shape[-1]:  # type: ignore[union-attr]
            raise InputError(f"--classifier {config.classifier} takes {model.in_channels}-channel images, "
                             f"the data has {dataset.images.shape[-1]}")  # type: ignore[union-attr]
        space = fixed_space(config, dataset, anchors, cache, model)
        assert space is not None
        evidence = classifier_evidence(model, dataset.images, dataset.labels, None, anchors.labels, features=space[0],
                                       anchor_features=space[1], class_names=dataset.class_names, seed=config.seed)
        return evidence, {"classifier": str(config.classifier)}
    space = fixed_space(config, dataset, anchors, cache)
    evidence = crossfit_evidence(dataset.images, dataset.labels, anchors.images, anchors.labels,
                                 num_classes=num_classes, config=config.evidence_config(), fixed_features=space,
                                 class_names=dataset.class_names)
    return evidence, {"classifier": f"{config.folds}-fold cross-fitted {config.model}, {config.rounds} round(s)"}


def _score(config: RefineRunConfig, dataset: LabeledImages, anchors: LabeledImages,
           cache: Path) -> Tuple[RefinementResult, Dict[str, Any]]:
    refiner = config.refiner_for_run()
    if config.classifier is not None:
        evidence, info = build_evidence(config, dataset, anchors, cache)
        result = refine(evidence, refiner)
        info.update(temperatures=result.info.get("temperatures", []))
        return result, info
    # Cross-fitted classifiers trained here: cache the refinement per configuration and data.
    key = digest(dataset.labels, dataset.images, anchors.images, anchors.labels, config.evidence_config().to_dict(),
                 refiner.name, refiner.options.to_dict(), config.space,
                 config.clip_model if config.space == "clip" else None)
    evidence_file = cache / f"crossfit-{key}.npz"
    if evidence_file.is_file():
        with np.load(evidence_file) as saved:
            scores, refined = saved["scores"], saved["refined_labels"]
            info = json.loads(str(saved["info"]))
        rows = np.arange(len(scores))
        best = scores.argmax(axis=1)
        result = RefinementResult(labels=dataset.labels, refined_labels=refined, best_class=best,
                                  best_score=scores[rows, best], given_score=scores[rows, dataset.labels],
                                  alpha=float(info["alpha"]), threshold=float(info["threshold"]), scores=scores)
        info["resumed"] = True
        return result, info
    evidence, info = build_evidence(config, dataset, anchors, cache)
    result = refine(evidence, refiner)
    info.update(temperatures=result.info.get("temperatures", []), rounds=result.info.get("rounds", []),
                alpha=result.alpha, threshold=result.threshold)
    with atomic_open(evidence_file, "wb") as handle:
        np.savez(handle, scores=result.scores, refined_labels=result.refined_labels, info=np.array(json.dumps(info)))
    return result, info


# ----------------------------------------------------------------------------- outputs
def _write_csv(path: Path, dataset: LabeledImages, result: RefinementResult) -> None:
    names = dataset.class_names
    quality = result.label_quality
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "id", "path", "given_label", "given_class", "suggested_label", "suggested_class",
                     "best_score", "given_score", "label_quality", "changed"])
    paths = dataset.paths or [""] * len(dataset)
    for i in range(len(dataset)):
        given, suggested = int(result.labels[i]), int(result.refined_labels[i])
        writer.writerow([i, dataset.ids[i], paths[i], given, names[given], suggested, names[suggested],
                         f"{result.best_score[i]:.6f}", f"{result.given_score[i]:.6f}", f"{quality[i]:.6f}",
                         "yes" if given != suggested else "no"])
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(buffer.getvalue())


def run_refine(config: RefineRunConfig, *, out: Path) -> Dict[str, Any]:
    """Run ``synref refine``; write the results folder ``out``; return the summary dict."""
    out = Path(out)
    check_output_dir(out)
    check_not_inside(out, config.data)
    remove_stale_temp_files(out)
    started = time.time()
    dataset, skipped = load_images(config)
    anchors, anchor_info = load_anchors(config, dataset, out)
    cache = out / "cache"
    with checkpoint_folder(cache / "checkpoints"):  # a killed training resumes at its last epoch
        result, info = _score(config, dataset, anchors, cache)
    clear_checkpoints(cache / "checkpoints")

    num_classes = dataset.num_classes
    changed = result.changed
    transitions = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(transitions, (result.labels[changed], result.refined_labels[changed]), 1)
    temperatures = info.get("temperatures") or []
    summary: Dict[str, Any] = {
        "data": str(config.data), "split": config.split, "labels_file": config.labels,
        "num_samples": len(dataset), "num_classes": num_classes, "class_names": dataset.class_names,
        "image_size": list(dataset.images.shape[1:3]), "channels": int(dataset.images.shape[-1]),  # type: ignore
        "anchors": anchor_info, "num_anchors": len(anchors), "features": config.features,
        "classifier": info.get("classifier"), "refiner": config.refiner,
        "refiner_options": config.refiner_for_run().options.to_dict(),
        # the score rule's alpha / threshold (the posterior refiner: no alpha; threshold = the
        # lowest posterior among the changes)
        "alpha": None if np.isnan(result.alpha) else float(result.alpha), "threshold": float(result.threshold),
        "temperature": float(np.mean(temperatures)) if temperatures else None,
        "num_changed": int(changed.sum()),
        "counts_before": np.bincount(result.labels, minlength=num_classes).tolist(),
        "counts_after": np.bincount(result.refined_labels, minlength=num_classes).tolist(),
        "transitions": transitions.tolist(), "skipped": skipped, "rounds": info.get("rounds", []),
        "resumed": bool(info.get("resumed", False)),
        "seconds": round(time.time() - started, 2), "synref_version": __version__,
    }
    write_npy(cache / "images.npy", dataset.images)
    with atomic_open(cache / "anchors.npz", "wb") as handle:
        np.savez(handle, images=anchors.images, labels=anchors.labels)
    write_npy(out / "scores.npy", result.scores)
    _write_csv(out / "refined_labels.csv", dataset, result)
    config.save(out / "config.json")
    write_json(out / "summary.json", summary)
    write_report(out)
    return summary


def format_refine_summary(summary: Dict[str, Any], out: Path) -> str:
    lines = [f"{summary['num_changed']} of {summary['num_samples']} labels changed "
             f"({100 * summary['num_changed'] / max(summary['num_samples'], 1):.1f} %), "
             f"features {summary['features']}, alpha {summary['alpha']}, threshold {summary['threshold']}"]
    if summary["skipped"]:
        lines.append(f"skipped {len(summary['skipped'])} files (unreadable images, special files or linked "
                     f"folders; listed in summary.json)")
    lines.append(f"wrote {out / 'refined_labels.csv'}, {out / 'summary.json'}, {out / 'report.html'} "
                 f"in {summary['seconds']:.1f} s")
    return "\n".join(lines)
