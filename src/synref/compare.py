"""synref next to cleanlab on data with known clean labels.

Both methods get the *same* out-of-sample ``pred_probs`` (k-fold cross-fitting, cleanlab's
advice) and synref the same features for every row, so the table separates what the anchors add
from what the classifier already knows:

- ``cleanlab``: ``cleanlab.filter.find_label_issues(labels, pred_probs)`` (its defaults), and, as
  the correction cleanlab's maintainers suggest, ``argmax(pred_probs)`` for the flagged samples;
- ``synref (paper rule)``: ``0.5 * cos(features, anchor prototype) + 0.5 * pred_probs``,
  relabel to the best class when its score >= 0.6 (flagged = relabelled);
- ``synref (calibrated)``: the same with the cosine turned into probabilities by a temperature
  fitted on held-out anchors (or a given ``similarity``), as synref's default preset does.

cleanlab is an optional extra (``pip install 'synref[cleanlab]'``), imported only when needed.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .errors import InputError, MissingDependencyError
from .refine import (
    DEFAULT_ALPHA,
    DEFAULT_THRESHOLD,
    class_prototypes,
    fit_similarity_temperature,
    prototype_similarity,
    refine_labels_chunked,
    relabel,
    score_matrix,
    similarity_to_probs,
)

__all__ = ["compare_with_cleanlab", "compare_crossfit_spaces", "correction_row", "format_compare_table",
           "run_compare_digits", "run_compare_cifar", "COLUMNS"]

#: Row keys, in table order (plus ``method``).
COLUMNS = ("label_acc_after_correction", "flagged", "flagged_precision", "flagged_recall", "fix_precision",
           "seconds")


def _cleanlab_find_label_issues():
    try:
        from cleanlab.filter import find_label_issues
    except ImportError as exc:
        raise MissingDependencyError(
            f"comparing with cleanlab needs the cleanlab package ({exc}): pip install 'synref[cleanlab]'"
        ) from None
    return find_label_issues


def correction_row(method: str, labels_noisy: np.ndarray, true_labels: np.ndarray, corrected: np.ndarray,
                   flagged: np.ndarray, seconds: float) -> Dict[str, Any]:
    """One table row.

    label_acc_after_correction: mean(corrected == true);
    flagged: number of flagged samples;
    flagged_precision: of the flagged samples, the fraction whose given label was wrong;
    flagged_recall: of the wrong given labels, the fraction flagged;
    fix_precision: of the flagged samples, the fraction whose corrected label is the true one.
    Precisions are 0 when nothing is flagged; recall is 0 when no label is wrong.
    """
    noisy = np.asarray(labels_noisy)
    true = np.asarray(true_labels)
    corrected = np.asarray(corrected)
    flagged = np.asarray(flagged, dtype=bool)
    if not (noisy.shape == true.shape == corrected.shape == flagged.shape):
        raise InputError(f"arrays differ in length: {noisy.shape}, {true.shape}, {corrected.shape}, {flagged.shape}")
    wrong = noisy != true
    n_flagged = int(flagged.sum())
    return {
        "method": method,
        "label_acc_after_correction": float(np.mean(corrected == true)) if len(true) else 0.0,
        "flagged": n_flagged,
        "flagged_precision": float(np.mean(wrong[flagged])) if n_flagged else 0.0,
        "flagged_recall": float(np.mean(flagged[wrong])) if wrong.any() else 0.0,
        "fix_precision": float(np.mean(corrected[flagged] == true[flagged])) if n_flagged else 0.0,
        "seconds": float(seconds),
    }


def compare_with_cleanlab(labels_noisy: np.ndarray, true_labels: np.ndarray, pred_probs: np.ndarray,
                          features: np.ndarray, anchor_features: np.ndarray, anchor_labels: np.ndarray, *,
                          alpha: float = DEFAULT_ALPHA, threshold: float = DEFAULT_THRESHOLD,
                          similarity: Optional[np.ndarray] = None, calibrate: bool = True,
                          include_given: bool = True,
                          cleanlab_kwargs: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """Rows (dicts with ``method`` and :data:`COLUMNS`) for cleanlab and synref on the same inputs.

    Args:
        labels_noisy: (N,) given labels; true_labels: (N,) clean labels (for the metrics only).
        pred_probs: (N, C) out-of-sample softmax, shared by every method.
        features: (N, D); anchor_features: (M, D) in the same space; anchor_labels: (M,).
        alpha, threshold: synref's score rule (both synref rows).
        similarity: optional (N, C) calibrated similarity (e.g. ``similarity_to_probs`` output)
            for the calibrated row; otherwise, with ``calibrate`` (default), the temperature is
            fitted on held-out anchors. ``calibrate=False`` and no ``similarity``: no such row.
        include_given: a first row for the given labels, uncorrected.
        cleanlab_kwargs: passed to ``cleanlab.filter.find_label_issues``.
    Raises MissingDependencyError when cleanlab is not installed.
    """
    find_label_issues = _cleanlab_find_label_issues()
    noisy = np.asarray(labels_noisy, dtype=np.int64)
    true = np.asarray(true_labels, dtype=np.int64)
    probs = np.asarray(pred_probs, dtype=np.float32)
    if probs.ndim != 2 or len(probs) != len(noisy) or len(true) != len(noisy):
        raise InputError(f"{len(noisy)} noisy labels, {len(true)} true labels, pred_probs of shape {probs.shape}")
    num_classes = probs.shape[1]
    rows: List[Dict[str, Any]] = []
    if include_given:
        rows.append(correction_row("given labels (no correction)", noisy, true, noisy,
                                   np.zeros(len(noisy), bool), 0.0))

    t0 = time.perf_counter()
    mask = np.asarray(find_label_issues(noisy, probs, **(cleanlab_kwargs or {})), dtype=bool)
    corrected = noisy.copy()
    corrected[mask] = probs[mask].argmax(axis=1)
    rows.append(correction_row("cleanlab find_label_issues + argmax", noisy, true, corrected, mask,
                               time.perf_counter() - t0))

    t0 = time.perf_counter()
    protos = class_prototypes(anchor_features, anchor_labels, num_classes)
    plain = refine_labels_chunked(noisy, pred_probs=probs, features=features, prototypes=protos, alpha=alpha,
                                  threshold=threshold)
    rows.append(correction_row(f"synref paper rule (alpha {alpha:g}, thr {threshold:g})", noisy, true,
                               plain.refined_labels, plain.changed, time.perf_counter() - t0))

    if similarity is not None or calibrate:
        t0 = time.perf_counter()
        if similarity is not None:
            calibrated = relabel(noisy, score_matrix(probs, np.asarray(similarity), alpha=alpha), threshold=threshold,
                                 alpha=alpha, keep_scores=False)
        else:
            temperature = fit_similarity_temperature(anchor_features, anchor_labels, num_classes)
            calibrated = refine_labels_chunked(noisy, pred_probs=probs, features=features, prototypes=protos,
                                               alpha=alpha, threshold=threshold, temperature=temperature)
        rows.append(correction_row("synref calibrated similarity", noisy, true, calibrated.refined_labels,
                                   calibrated.changed, time.perf_counter() - t0))
    return rows


def format_compare_table(rows: Sequence[Dict[str, Any]], title: Optional[str] = None) -> str:
    """A markdown table of :func:`compare_with_cleanlab` rows."""
    header = ["method", "label acc after", "flagged", "flagged precision", "flagged recall", "fix precision",
              "seconds"]
    lines = [] if title is None else [title, ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['label_acc_after_correction']:.4f} | {r['flagged']} | "
                     f"{r['flagged_precision']:.3f} | {r['flagged_recall']:.3f} | {r['fix_precision']:.3f} | "
                     f"{r['seconds']:.3f} |")
    return "\n".join(lines)


def run_compare_digits(noise: str = "pmd-0.7", seed: int = 0, progress: bool = True, *,
                       alpha: float = DEFAULT_ALPHA, threshold: float = DEFAULT_THRESHOLD,
                       anchors_per_class: int = 100, folds: int = 4,
                       info: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """Compare on scikit-learn's digits, with the demo's pieces (``synref demo``'s split, noise,
    glyph anchors, training recipe):

    split as ``run_demo`` (65% train / 10% val / 25% test, ``seed``) -> ``inject_noise`` on the
    training labels -> out-of-sample ``pred_probs`` by ``cross_fit`` (4 folds, the demo's
    Standard recipe; the clean validation split picks each fold's best epoch) -> glyph anchors ->
    SimCLR features of the training images and anchors (``train_simclr``, as the synref preset)
    -> :func:`compare_with_cleanlab`. ``info`` (a dict), if given, receives the noise description
    and the sizes.
    """
    from .data import load_digits_dataset, split_indices
    from .pipeline import DemoConfig, inject_noise, make_glyph_anchors, parse_noise_spec
    from .ssl import train_simclr
    from .train import cross_fit, extract_features

    steps = parse_noise_spec(noise)
    _cleanlab_find_label_issues()  # fail before any training
    demo = DemoConfig(noise=noise, seed=seed, anchors_per_class=anchors_per_class)
    digits = load_digits_dataset()
    train_idx, val_idx, _ = split_indices(
        digits.labels, fractions=(1 - demo.test_fraction - demo.val_fraction, demo.val_fraction, demo.test_fraction),
        seed=seed)
    train, val = digits.subset(train_idx), digits.subset(val_idx)
    num_classes = digits.num_classes
    noisy, noise_info = inject_noise(train.images, train.labels, steps, num_classes=num_classes, seed=seed,
                                     pmd_type=demo.pmd_type, model=demo.model, progress=progress)
    anchors = make_glyph_anchors(digits.class_names, anchors_per_class, size=train.images.shape[1:3],
                                 channels=train.images.shape[-1], seed=seed, progress=progress)
    train_cfg = dataclasses.replace(demo.synref.train, seed=seed)
    fitted = cross_fit(train.images, noisy, model_name=demo.model, num_classes=num_classes, config=train_cfg,
                       folds=folds, seed=seed, progress=progress, val_images=val.images, val_labels=val.labels)
    ssl_cfg = dataclasses.replace(demo.synref.ssl, seed=seed)
    encoder = train_simclr(train.images, config=ssl_cfg, extra_images=anchors.images, progress=progress,
                           desc="self-supervised encoder")
    features = extract_features(encoder, train.images)
    anchor_features = extract_features(encoder, anchors.images)
    if info is not None:
        info.update(noise=noise_info, num_train=len(train), num_val=len(val), num_anchors=len(anchors.labels),
                    oof_accuracy_vs_true=float(np.mean(fitted.pred_probs.argmax(1) == train.labels)))
    return compare_with_cleanlab(noisy, train.labels, fitted.pred_probs, features, anchor_features, anchors.labels,
                                 alpha=alpha, threshold=threshold, calibrate=True)


def compare_crossfit_spaces(labels_noisy: np.ndarray, true_labels: np.ndarray, pred_probs: np.ndarray,
                            features: np.ndarray, fold_of: np.ndarray, anchor_features: np.ndarray,
                            anchor_labels: np.ndarray, *, alpha: float = DEFAULT_ALPHA,
                            threshold: float = DEFAULT_THRESHOLD) -> List[Dict[str, Any]]:
    """Like :func:`compare_with_cleanlab` when every fold model has its own feature space.

    Args:
        features: (N, D), row i in the space of the fold model that held sample i out
            (``fold_of[i]``); anchor_features: (folds, M, D), the anchors in each fold's space.
    """
    find_label_issues = _cleanlab_find_label_issues()
    noisy = np.asarray(labels_noisy, dtype=np.int64)
    true = np.asarray(true_labels, dtype=np.int64)
    probs = np.asarray(pred_probs, dtype=np.float32)
    num_classes = probs.shape[1]
    rows = [correction_row("given labels (no correction)", noisy, true, noisy, np.zeros(len(noisy), bool), 0.0)]
    t0 = time.perf_counter()
    mask = np.asarray(find_label_issues(noisy, probs), dtype=bool)
    corrected = noisy.copy()
    corrected[mask] = probs[mask].argmax(axis=1)
    rows.append(correction_row("cleanlab find_label_issues + argmax", noisy, true, corrected, mask,
                               time.perf_counter() - t0))
    for name, calibrate in ((f"synref paper rule (alpha {alpha:g}, thr {threshold:g})", False),
                            ("synref calibrated similarity", True)):
        t0 = time.perf_counter()
        similarity = np.zeros_like(probs)
        for k in range(anchor_features.shape[0]):
            held = fold_of == k
            similarity[held] = prototype_similarity(features[held],
                                                    class_prototypes(anchor_features[k], anchor_labels, num_classes))
            if calibrate:
                temperature = fit_similarity_temperature(anchor_features[k], anchor_labels, num_classes)
                similarity[held] = similarity_to_probs(similarity[held], temperature)
        result = relabel(noisy, score_matrix(probs, similarity, alpha=alpha), threshold=threshold, alpha=alpha,
                         keep_scores=False)
        rows.append(correction_row(name, noisy, true, result.refined_labels, result.changed, time.perf_counter() - t0))
    return rows


def run_compare_cifar(data: str, noise_file: str, *, subset: int = 10000, epochs: int = 15, folds: int = 4,
                      anchors_per_class: int = 100, seed: int = 0, progress: bool = True,
                      alpha: float = DEFAULT_ALPHA, threshold: float = DEFAULT_THRESHOLD,
                      info: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """Compare on CIFAR (official python layout in ``data``) with a community noise file.

    CPU protocol: the first ``subset`` of the 45,000 noisy-labelled training images; a
    ``folds``-fold cross-fitted small CNN (``epochs``, crop + flip) gives out-of-sample
    ``pred_probs`` and per-fold features; anchors are a *real-anchor stand-in*:
    ``anchors_per_class`` images per class from the clean validation images 45000-49999 (never
    test images, never clean labels of training images).
    """
    from .data import load_cifar, load_labels_file
    from .train import TrainConfig, cross_fit

    _cleanlab_find_label_issues()  # fail before any training
    train = load_cifar(data, split="train")
    if len(train) != 50000:
        raise InputError(f"{data}: expected the 50,000 official training images, found {len(train)}")
    noisy = load_labels_file(noise_file, num_samples=45000, num_classes=train.num_classes)
    if not 2 * folds <= subset <= 45000:
        raise InputError(f"--subset must be in [{2 * folds}, 45000], got {subset}")
    images, true, given = train.images[:subset], train.labels[:subset], noisy[:subset]
    rng = np.random.default_rng(seed)
    val = np.arange(45000, 50000)
    anchor_idx = np.concatenate([rng.choice(val[train.labels[val] == c], anchors_per_class, replace=False)
                                 for c in range(train.num_classes)])
    config = TrainConfig(epochs=epochs, batch_size=128, lr=0.05,
                         milestones=[int(round(epochs * 0.55)), int(round(epochs * 0.8))],
                         gamma=0.1, warmup_epochs=1, hflip=True, seed=seed)
    fitted = cross_fit(images, given, model_name="small_cnn", num_classes=train.num_classes, config=config,
                       folds=folds, seed=seed, progress=progress, extra_images=train.images[anchor_idx])
    if info is not None:
        info.update(num_samples=subset, anchors="real-anchor stand-in (clean validation images 45000-49999)",
                    oof_accuracy_vs_true=float(np.mean(fitted.pred_probs.argmax(1) == true)))
    return compare_crossfit_spaces(given, true, fitted.pred_probs, fitted.features, fitted.fold_of,
                                   fitted.extra_features, train.labels[anchor_idx], alpha=alpha, threshold=threshold)
