"""``synref refine`` as one library call: a user's labelled images in, suggested labels out.

    summary = run_refine(RefineRunConfig(data="photos/", anchors="anchors/", train=True), out="out/")

Steps: load the data (image folder, CSV manifest or CIFAR layout; optional label-file override;
bad images stop the run or, with ``skip_bad``, are listed in the summary) -> anchors (an anchor
set from ``synref generate``, or generated into ``OUT/anchors``) matched by class name ->
pred_probs and features (a saved classifier, or k-fold cross-fitted classifiers trained here;
features from the classifier, CLIP or a self-supervised encoder) -> the score rule -> results
(``refined_labels.csv``, ``scores.npy``, ``summary.json``, ``report.html``; see DEVELOPERS.md).

Everything expensive is cached under ``OUT/cache`` (features per extractor, cross-fitted
evidence per configuration), and every file is written atomically, so a killed run re-run with
the same ``--out`` picks up where it stopped.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import __version__
from .config import ConfigMixin
from .data import LabeledImages, load_dataset, load_labels_file, materialize
from .errors import InputError
from .io import atomic_open, write_json, write_npy
from .pipeline import check_output_dir
from .presets import CrossFitRefineConfig, anchor_similarity, crossfit_refinement
from .refine import RefinementResult, relabel, score_matrix
from .train import TrainConfig

FEATURE_CHOICES = ("classifier", "clip", "ssl", "efficientnet-lite0")
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"


@dataclass
class RefineRunConfig(ConfigMixin):
    """Options of one ``synref refine`` run (saved as ``OUT/config.json``).

    Attributes:
        data: "digits", an image folder, a CSV manifest (path,label) or a CIFAR python layout.
        split: which split of ``data`` (CIFAR train/test, split folders or a CSV split column).
        labels: optional label file (.npy or one per line) replacing the dataset's labels.
        anchors: an anchor-set folder from ``synref generate``; or ``generator`` (+ options,
            ``per_class``) to generate one into ``OUT/anchors``.
        classifier: a checkpoint saved with ``synref.features.save_classifier``; or ``train`` to
            train k-fold cross-fitted classifiers (``model``, ``epochs``, ``folds``, ``rounds``).
        features: "classifier" (penultimate layer), "clip" (``clip_model``), "ssl" or
            "efficientnet-lite0" (ImageNet-pretrained, offline; 160 px).
        alpha, threshold: the score rule; calibrate: similarity as anchor-calibrated probabilities.
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
    alpha: float = 0.5
    threshold: float = 0.6
    calibrate: bool = True
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
        if self.features not in FEATURE_CHOICES:
            raise InputError(f"unknown --features {self.features!r}; choose one of: {', '.join(FEATURE_CHOICES)}")
        for name in ("alpha", "threshold"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise InputError(f"--{name} must be in [0, 1], got {value}")
        for name, minimum in (("folds", 2), ("rounds", 1), ("per_class", 1), ("epochs", 1)):
            if int(getattr(self, name)) < minimum:
                raise InputError(f"--{name.replace('_', '-')} must be at least {minimum}, got {getattr(self, name)}")
        if self.image_size is not None and int(self.image_size) < 4:
            raise InputError(f"--image-size must be at least 4, got {self.image_size}")


# ----------------------------------------------------------------------------- steps
def load_images(config: RefineRunConfig, *, progress: bool = True) -> Tuple[LabeledImages, List[Dict[str, str]]]:
    """The dataset as uint8 (N, H, W, C) at the working size, and the skipped files."""
    dataset = load_dataset(config.data, split=config.split)
    if len(dataset) == 0:
        raise InputError(f"dataset {config.data} is empty")
    if config.labels is not None:
        labels = load_labels_file(config.labels, num_samples=len(dataset), num_classes=dataset.num_classes)
        dataset = dataset.with_labels(labels)
    skipped: List[Dict[str, str]] = []
    size = None if config.image_size is None else (int(config.image_size), int(config.image_size))
    dataset = materialize(dataset, size=size, progress=progress, skip_bad=config.skip_bad, skipped=skipped)
    return dataset, skipped


def load_anchors(config: RefineRunConfig, dataset: LabeledImages, out: Path, *,
                 progress: bool = True) -> Tuple[LabeledImages, Dict[str, Any]]:
    """Anchors relabelled to the dataset's class indices (matched by name) and brought to its
    image size and channels. Returns them and a description for the summary."""
    from .anchors import create_generator

    if config.generator is not None:
        from .generate import generate_anchor_set

        anchor_dir = out / "anchors"
        generator = create_generator(config.generator, **config.generator_options)
        generate_anchor_set(generator, dataset.class_names, config.per_class, anchor_dir, seed=config.seed,
                            progress=progress)
        source: Dict[str, Any] = {"generated": config.generator, "dir": str(anchor_dir), **config.generator_options}
    else:
        anchor_dir = Path(config.anchors)  # type: ignore[arg-type]
        source = {"dir": str(anchor_dir)}
    assert dataset.images is not None
    anchors, extra = load_matched_anchors(anchor_dir, dataset.class_names, size=dataset.images.shape[1:3],
                                          channels=dataset.images.shape[-1])
    source.update(num_anchors=len(anchors), ignored_anchor_classes=extra)
    return anchors, source


def load_matched_anchors(anchor_dir: Path, class_names: List[str], *, size: Tuple[int, int],
                         channels: int) -> Tuple[LabeledImages, List[str]]:
    """The anchor set in ``anchor_dir`` (from ``synref generate``) relabelled to ``class_names``'
    indices (matched by name), resized to ``size`` with ``channels``. Returns the anchors and the
    anchor classes that are not dataset classes (ignored). A dataset class without anchors raises
    InputError naming it and the folder."""
    from .anchors import match_format
    from .anchors.store import load_anchor_set

    anchor_dir = Path(anchor_dir)
    if not anchor_dir.is_dir():
        raise InputError(f"--anchors {anchor_dir}: not a folder (make one with synref generate)")
    anchors = load_anchor_set(anchor_dir)
    index = {name: i for i, name in enumerate(class_names)}
    missing = [name for name in class_names if name not in set(anchors.class_names)]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(f"class {missing[0]!r} has no anchors in {anchor_dir}: {len(missing)} dataset classes "
                         f"are not among the anchor classes ({shown}); anchor classes: "
                         f"{', '.join(anchors.class_names[:8])}{' ...' if len(anchors.class_names) > 8 else ''}")
    extra = [name for name in anchors.class_names if name not in index]
    keep = np.array([anchors.class_names[label] in index for label in anchors.labels], dtype=bool)
    remapped = np.array([index[anchors.class_names[label]] for label in anchors.labels[keep]], dtype=np.int64)
    anchors = LabeledImages(anchors.images[keep], remapped, list(class_names),
                            ids=[anchors.ids[i] for i in np.flatnonzero(keep)])
    return match_format(anchors, size=tuple(size), channels=int(channels)), extra


def _fingerprint(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(str(part.shape).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _fixed_features(config: RefineRunConfig, dataset: LabeledImages, anchors: LabeledImages, cache: Path,
                    classifier_model: Any, *, progress: bool) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(features (N, D), anchor features (M, D)) in one fixed space, cached; None when the
    features come from each cross-fitted fold model."""
    from .features import cached_features, create_extractor

    if config.features == "classifier":
        if classifier_model is None:
            return None
        extractor = create_extractor("classifier", model=classifier_model)
    elif config.features == "clip":
        extractor = create_extractor("clip", model=config.clip_model)
    elif config.features == "efficientnet-lite0":
        extractor = create_extractor("efficientnet-lite0", size=160)
    else:
        extractor = create_extractor("ssl", images=dataset.images, extra_images=anchors.images,
                                     config={"seed": config.seed})
    features = np.asarray(cached_features(extractor, dataset.images, cache_dir=cache, progress=progress))
    anchor_features = np.asarray(cached_features(extractor, anchors.images, cache_dir=cache, progress=progress))
    return features, anchor_features


def _score(config: RefineRunConfig, dataset: LabeledImages, anchors: LabeledImages, cache: Path, *,
           progress: bool) -> Tuple[RefinementResult, Dict[str, Any]]:
    labels = dataset.labels
    num_classes = dataset.num_classes
    info: Dict[str, Any] = {}
    refine_cfg = CrossFitRefineConfig(folds=config.folds, rounds=config.rounds, alpha=config.alpha,
                                      threshold=config.threshold, model=config.model,
                                      train=TrainConfig(epochs=config.epochs, batch_size=64, lr=0.05,
                                                        milestones=[config.epochs // 2, (config.epochs * 5) // 6],
                                                        gamma=0.1, warmup_epochs=1, seed=config.seed),
                                      features="classifier" if config.features == "classifier" else "ssl",
                                      calibrate=config.calibrate, seed=config.seed)
    if config.classifier is not None:
        from .features import load_classifier
        from .train import predict_proba

        model = load_classifier(config.classifier)
        if model.num_classes != num_classes:
            raise InputError(f"--classifier {config.classifier} has {model.num_classes} classes, "
                             f"the data has {num_classes}")
        if model.in_channels != dataset.images.shape[-1]:  # type: ignore[union-attr]
            raise InputError(f"--classifier {config.classifier} takes {model.in_channels}-channel images, "
                             f"the data has {dataset.images.shape[-1]}")  # type: ignore[union-attr]
        fixed = _fixed_features(config, dataset, anchors, cache, model, progress=progress)
        assert fixed is not None
        pred_probs = predict_proba(model, dataset.images)
        similarity = anchor_similarity(fixed[0], fixed[1], anchors.labels, num_classes, refine_cfg,
                                       dataset.class_names, info)
        result = relabel(labels, score_matrix(pred_probs, similarity, alpha=config.alpha),
                         threshold=config.threshold, alpha=config.alpha)
        info.update(classifier=str(config.classifier))
        return result, info

    # Cross-fitted classifiers trained here: cache the evidence per configuration and data.
    key = _fingerprint(labels, dataset.images, anchors.images, anchors.labels, refine_cfg.to_dict(),
                       config.features, config.clip_model if config.features == "clip" else None)
    evidence_file = cache / f"crossfit-{key}.npz"
    if evidence_file.is_file():
        with np.load(evidence_file) as saved:
            scores = saved["scores"]
            info.update(json.loads(str(saved["info"])))
        result = relabel(labels, scores, threshold=config.threshold, alpha=config.alpha)
        info["resumed"] = True
        return result, info
    fixed = None if config.features == "classifier" else _fixed_features(config, dataset, anchors, cache, None,
                                                                          progress=progress)
    result = crossfit_refinement(dataset.images, labels, anchors.images, anchors.labels, num_classes=num_classes,
                                 config=refine_cfg, class_names=dataset.class_names, fixed_features=fixed,
                                 progress=progress)
    info.update(classifier=f"{config.folds}-fold cross-fitted {config.model}, {config.rounds} round(s)",
                temperatures=result.info.get("temperatures", []), rounds=result.info.get("rounds", []))
    with atomic_open(evidence_file, "wb") as handle:
        np.savez(handle, scores=result.scores, info=np.array(json.dumps(info)))
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


def run_refine(config: RefineRunConfig, *, out: Path, progress: bool = True) -> Dict[str, Any]:
    """Run ``synref refine``; write the results folder ``out``; return the summary dict."""
    out = Path(out)
    check_output_dir(out)
    started = time.time()
    dataset, skipped = load_images(config, progress=progress)
    anchors, anchor_info = load_anchors(config, dataset, out, progress=progress)
    cache = out / "cache"
    result, info = _score(config, dataset, anchors, cache, progress=progress)

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
        "classifier": info.get("classifier"), "alpha": config.alpha, "threshold": config.threshold,
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
    write_json(out / "config.json", config.to_dict())
    write_json(out / "summary.json", summary)
    try:
        from .report import write_report
    except ImportError:  # pragma: no cover - report module ships with synref
        write_report = None
    if write_report is not None:
        write_report(out)
    return summary


def format_refine_summary(summary: Dict[str, Any], out: Path) -> str:
    lines = [f"{summary['num_changed']} of {summary['num_samples']} labels changed "
             f"({100 * summary['num_changed'] / max(summary['num_samples'], 1):.1f} %), "
             f"features {summary['features']}, alpha {summary['alpha']}, threshold {summary['threshold']}"]
    if summary["skipped"]:
        lines.append(f"skipped {len(summary['skipped'])} unreadable images (listed in summary.json)")
    lines.append(f"wrote {out / 'refined_labels.csv'}, {out / 'summary.json'}, {out / 'report.html'} "
                 f"in {summary['seconds']:.1f} s")
    return "\n".join(lines)
