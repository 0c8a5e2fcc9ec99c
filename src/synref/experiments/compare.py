"""synref next to cleanlab on data with known clean labels (``synref compare``).

Every method gets the *same* out-of-sample evidence (k-fold cross-fitting, cleanlab's advice for
``pred_probs``), so the table separates what the anchors add from what the classifier knows:

- ``cleanlab``: ``cleanlab.filter.find_label_issues(labels, pred_probs)`` (its defaults), and, as
  the correction cleanlab's maintainers suggest, ``argmax(pred_probs)`` for the flagged samples;
- ``synref (paper rule)``: the ``paper`` refiner (``0.5 * cos + 0.5 * pred_probs >= 0.6``);
- ``synref (calibrated)``: the ``crossfit`` refiner in one round (the cosine turned into
  probabilities by a temperature fitted on held-out anchors);
- ``synref posterior``: the default refiner (the estimated posterior of the true class decides).

:func:`run_compare` is a run of the experiment runner with the correction methods
(:data:`COMPARE_METHODS`: ``given``, ``argmax``, ``prototype``, ``cleanlab``, ``refine-paper``,
``refine-crossfit``, ``refine-posterior``) under a protocol (digits: the demo's data and
evidence; CIFAR: the cpu protocol's data and pretrained evidence: frozen
``efficientnet-lite-ensemble`` features and a cross-fitted linear head).
:func:`compare_with_cleanlab` / :func:`compare_crossfit_spaces` are the same rows over arrays.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..hashing import PathLike
from ..io import check_output_dir
from ..evidence import Evidence
from ..optional import require
from ..refiners import DEFAULT_ALPHA, DEFAULT_THRESHOLD, refine, relabel, score_matrix
from ..refiners.confident import confident_learning_correction
from .methods import COMPARE_COLUMNS, correction_row, refiner_row_name
from .protocol import Protocol, protocol_for, with_refine_encoder
from .recipes import cpu_cifar_schedule
from .runner import Experiment

__all__ = ["compare_with_cleanlab", "compare_crossfit_spaces", "compare_on_evidence", "correction_row",
           "format_compare_table", "run_compare", "compare_protocol", "COLUMNS", "COMPARE_METHODS"]

#: Row keys, in table order (plus ``method``).
COLUMNS = COMPARE_COLUMNS
#: the rows of ``synref compare``.
COMPARE_METHODS = ("given", "argmax", "prototype", "cleanlab", "refine-paper", "refine-crossfit",
                   "refine-posterior")


def compare_on_evidence(evidence: Evidence, true_labels: np.ndarray, *, alpha: float = DEFAULT_ALPHA,
                        threshold: float = DEFAULT_THRESHOLD, calibrate: bool = True, include_given: bool = True,
                        similarity: Optional[np.ndarray] = None,
                        cleanlab_kwargs: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """Rows (dicts with ``method`` and :data:`COLUMNS`) of cleanlab and synref's refiners on the
    same ``evidence`` (its ``pred_probs`` are cleanlab's input). ``similarity`` (N, C), when
    given, replaces the calibrated row's similarity term (e.g. a precomputed calibrated one)."""
    require("cleanlab.filter", "comparing with cleanlab")
    noisy, true = evidence.labels, np.asarray(true_labels, dtype=np.int64)
    probs = evidence.resolve_pred_probs()
    if probs is None or len(true) != len(noisy):
        raise InputError(f"{len(noisy)} noisy labels, {len(true)} true labels, pred_probs "
                         f"{None if probs is None else probs.shape}")
    rows: List[Dict[str, Any]] = []
    if include_given:
        rows.append(correction_row("given labels (no correction)", noisy, true, noisy, np.zeros(len(noisy), bool), 0.0))
    t0 = time.perf_counter()
    corrected, mask = confident_learning_correction(noisy, probs, **(cleanlab_kwargs or {}))
    rows.append(correction_row("cleanlab find_label_issues + argmax", noisy, true, corrected, mask,
                               time.perf_counter() - t0))
    runs = [("paper", {})]
    if similarity is None and calibrate:
        runs.append(("crossfit", {"rounds": 1}))
    runs.append(("posterior", {}))
    for name, extra in runs:
        t0 = time.perf_counter()
        if name == "posterior":
            result = refine(evidence, name, keep_scores=False)
        else:
            result = refine(evidence, name, alpha=alpha, threshold=threshold, keep_scores=False, **extra)
        rows.append(correction_row(refiner_row_name(name, alpha, threshold), noisy, true, result.refined_labels,
                                   result.changed, time.perf_counter() - t0))
    if similarity is not None:
        t0 = time.perf_counter()
        given = relabel(noisy, score_matrix(np.asarray(probs, dtype=np.float32), np.asarray(similarity),
                                            alpha=alpha), threshold=threshold, alpha=alpha, keep_scores=False)
        rows.append(correction_row(refiner_row_name("crossfit", alpha, threshold), noisy, true, given.refined_labels,
                                   given.changed, time.perf_counter() - t0))
    return rows


def compare_with_cleanlab(labels_noisy: np.ndarray, true_labels: np.ndarray, pred_probs: np.ndarray,
                          features: np.ndarray, anchor_features: np.ndarray, anchor_labels: np.ndarray, *,
                          alpha: float = DEFAULT_ALPHA, threshold: float = DEFAULT_THRESHOLD,
                          similarity: Optional[np.ndarray] = None, calibrate: bool = True,
                          include_given: bool = True,
                          cleanlab_kwargs: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """:func:`compare_on_evidence` over arrays in one feature space.

    Args:
        labels_noisy: (N,) given labels; true_labels: (N,) clean labels (for the metrics only).
        pred_probs: (N, C) out-of-sample softmax, shared by every method.
        features: (N, D); anchor_features: (M, D) in the same space; anchor_labels: (M,).
        alpha, threshold: synref's score rule (both synref rows).
        similarity: optional (N, C) calibrated similarity for the calibrated row; otherwise, with
            ``calibrate`` (default), the temperature is fitted on held-out anchors.
            ``calibrate=False`` and no ``similarity``: no such row.
        include_given: a first row for the given labels, uncorrected.
        cleanlab_kwargs: passed to ``cleanlab.filter.find_label_issues``.
    Raises MissingDependencyError when cleanlab is not installed.
    """
    require("cleanlab.filter", "comparing with cleanlab")
    noisy = np.asarray(labels_noisy, dtype=np.int64)
    probs = np.asarray(pred_probs, dtype=np.float32)
    if probs.ndim != 2 or len(probs) != len(noisy) or len(true_labels) != len(noisy):
        raise InputError(f"{len(noisy)} noisy labels, {len(true_labels)} true labels, "
                         f"pred_probs of shape {probs.shape}")
    evidence = Evidence(noisy, probs.shape[1], anchor_labels, features=features, anchor_features=anchor_features,
                        pred_probs=probs)
    return compare_on_evidence(evidence, true_labels, alpha=alpha, threshold=threshold, calibrate=calibrate,
                               include_given=include_given, similarity=similarity, cleanlab_kwargs=cleanlab_kwargs)


def compare_crossfit_spaces(labels_noisy: np.ndarray, true_labels: np.ndarray, pred_probs: np.ndarray,
                            features: np.ndarray, fold_of: np.ndarray, anchor_features: np.ndarray,
                            anchor_labels: np.ndarray, *, alpha: float = DEFAULT_ALPHA,
                            threshold: float = DEFAULT_THRESHOLD) -> List[Dict[str, Any]]:
    """:func:`compare_with_cleanlab` when every fold model has its own feature space.

    Args:
        features: (N, D), row i in the space of the fold model that held sample i out
            (``fold_of[i]``); anchor_features: (folds, M, D), the anchors in each fold's space.
    """
    probs = np.asarray(pred_probs, dtype=np.float32)
    evidence = Evidence(np.asarray(labels_noisy, dtype=np.int64), probs.shape[1], anchor_labels, features=features,
                        anchor_features=anchor_features, pred_probs=probs, fold_ids=fold_of)
    return compare_on_evidence(evidence, true_labels, alpha=alpha, threshold=threshold)


def format_compare_table(rows: Sequence[Dict[str, Any]], title: Optional[str] = None) -> str:
    """A markdown table of comparison rows."""
    header = ["method", "label acc after", "flagged", "flagged precision", "flagged recall", "fix precision",
              "seconds"]
    lines = [] if title is None else [title, ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        lines.append(f"| {r.get('title', r['method'])} | {r['label_acc_after_correction']:.4f} | {r['flagged']} | "
                     f"{r['flagged_precision']:.3f} | {r['flagged_recall']:.3f} | {r['fix_precision']:.3f} | "
                     f"{r['seconds']:.3f} |")
    return "\n".join(lines)


def compare_protocol(dataset: str, *, subset: int = 10000, epochs: int = 15, anchors_per_class: int = 100,
                     encoder: Optional[str] = None) -> Protocol:
    """The protocol of ``synref compare``: digits = the demo's (SimCLR space, a cross-fitted small
    CNN, the clean validation split picking each fold's epoch); CIFAR = the cpu protocol's data
    (first ``subset`` images, real-anchor stand-in) and its pretrained evidence (the frozen
    encoder's features, a cross-fitted linear head; ``epochs`` is the Standard model's, which
    no correction row trains). ``encoder`` (``--encoder``, e.g. ``hf:ID_OR_FOLDER``) replaces
    the refinement's space; the protocol's name then carries it."""
    if dataset == "digits":
        protocol = dataclasses.replace(protocol_for("digits", "digits"), anchors_per_class=anchors_per_class)
    else:
        if not 8 <= subset <= 45000:
            raise InputError(f"--subset must be in [8, 45000], got {subset}")
        protocol = dataclasses.replace(protocol_for("cpu", dataset), train_size=subset,
                                       standard=cpu_cifar_schedule(epochs, 0.05), anchors_per_class=anchors_per_class)
    return protocol if encoder is None else with_refine_encoder(protocol, encoder, rename=True)


def run_compare(dataset: str = "digits", *, noise: str = "pmd-0.7", seed: int = 0, data: Optional[str] = None,
                noise_file: Optional[str] = None, subset: int = 10000, epochs: int = 15,
                protocol: Optional[Protocol] = None, out: Optional[PathLike] = None,
                encoder: Optional[str] = None) -> List[Dict[str, Any]]:
    """The comparison table's rows (:data:`COMPARE_METHODS`) on ``dataset`` with noise ``noise``
    (digits: generated as in the demo) or the label file ``noise_file`` (CIFAR: the community
    file of the first 45,000 training images). Fails before any training without cleanlab.

    ``out``: a folder that keeps the shared steps (encoder features, noisy labels, models) under
    ``out/work/`` and each finished row under ``out/cells/`` (``out/results.md`` gathers them), so
    a re-run resumes and other noise settings reuse the features; None keeps nothing.
    ``encoder``: the refinement's frozen space (:func:`compare_protocol`)."""
    from pathlib import Path

    from .runner import parse_noise_settings

    require("cleanlab.filter", "comparing with cleanlab")
    if protocol is not None and encoder is not None:
        raise InputError("give a protocol or an encoder, not both")
    protocol = protocol or compare_protocol(dataset, subset=subset, epochs=epochs, encoder=encoder)
    files: Dict[str, Any] = {}
    if noise_file is not None:
        setting = f"file:{Path(noise_file).stem}"
        files[setting] = Path(noise_file)
    elif dataset != "digits":
        raise InputError(f"--dataset {dataset} needs --data (official python layout) and --noise-file")
    else:
        setting = parse_noise_settings(noise, ())[0]
    if out is not None:
        check_output_dir(Path(out))
    experiment = Experiment(dataset, protocol, data=data, noise_files=files, record=False,
                            out=None if out is None else Path(out))
    return experiment.run(list(COMPARE_METHODS), [setting], [seed])
