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
``efficientnet-lite-ensemble`` features and a cross-fitted linear head; with ``--evidence
finetune`` every row reads the fine-tuned evidence instead, :mod:`synref.tuned_evidence`).
:func:`correction_rows` (:func:`compare_with_cleanlab`, :func:`compare_crossfit_spaces`) runs the
same correctors on evidence given as arrays.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..hashing import PathLike
from ..io import check_output_dir
from ..evidence import Evidence
from ..optional import require
from ..pipeline import RefinerSpec, fold_schedule
from ..refiners import DEFAULT_ALPHA, DEFAULT_THRESHOLD
from ..tuned_evidence import finetune_options
from .methods import COMPARE_COLUMNS, correction_row, create_method
from .protocol import Protocol, protocol_for, with_finetune_evidence, with_refine_encoder
from .recipes import cpu_cifar_schedule
from .runner import Experiment

__all__ = ["compare_with_cleanlab", "compare_crossfit_spaces", "correction_rows", "correction_row",
           "check_compare_options", "COMPARE_OPTION_RULES",
           "format_compare_table", "run_compare", "compare_protocol", "COLUMNS", "COMPARE_METHODS"]

#: Row keys, in table order (plus ``method``).
COLUMNS = COMPARE_COLUMNS
#: the rows of ``synref compare``.
COMPARE_METHODS = ("given", "argmax", "prototype", "cleanlab", "refine-paper", "refine-crossfit",
                   "refine-posterior")


def correction_rows(evidence: Evidence, true_labels: np.ndarray, methods: Sequence[str],
                    refiners: Optional[Dict[str, RefinerSpec]] = None) -> List[Dict[str, Any]]:
    """Rows (dicts with ``method`` = the row's title and :data:`COLUMNS`) of the correction
    ``methods`` (``given``, ``cleanlab``, ``argmax``, ``prototype``, ``refine-<refiner>``) on the
    same ``evidence``: the correctors of ``synref compare`` / ``bench``'s cells, over arrays.
    ``refiners``: refiner name -> the spec of its ``refine-<refiner>`` row (default: its defaults)."""
    true = np.asarray(true_labels, dtype=np.int64)
    if len(true) != len(evidence.labels):
        raise InputError(f"{len(evidence.labels)} noisy labels, {len(true)} true labels")
    rows: List[Dict[str, Any]] = []
    for name in methods:
        method = create_method(name)
        if method.correct is None:
            raise InputError(f"method {name} trains a network; correction_rows runs the correction methods")
        spec = (refiners or {}).get(name[len("refine-"):]) if name.startswith("refine-") else None
        t0 = time.perf_counter()
        title, corrected, flagged = method.correct(evidence, spec)
        rows.append(correction_row(title, evidence.labels, true, corrected, flagged, time.perf_counter() - t0))
    return rows


def compare_with_cleanlab(labels_noisy: np.ndarray, true_labels: np.ndarray, pred_probs: np.ndarray,
                          features: np.ndarray, anchor_features: np.ndarray, anchor_labels: np.ndarray, *,
                          alpha: float = DEFAULT_ALPHA, threshold: float = DEFAULT_THRESHOLD, calibrate: bool = True,
                          include_given: bool = True, fold_ids: Optional[np.ndarray] = None) -> List[Dict[str, Any]]:
    """cleanlab next to synref's refiners on the same out-of-sample ``pred_probs``, over arrays
    (:func:`correction_rows` of ``given``, ``cleanlab``, ``refine-paper``, ``refine-crossfit``,
    ``refine-posterior``).

    Args:
        labels_noisy: (N,) given labels; true_labels: (N,) clean labels (for the metrics only).
        pred_probs: (N, C) out-of-sample softmax, shared by every method.
        features: (N, D); anchor_features: (M, D) in the same space (or (K, M, D) with
            ``fold_ids`` (N,): row i in the space of fold ``fold_ids[i]``); anchor_labels: (M,).
        alpha, threshold: the score rule of the ``paper`` and ``crossfit`` rows.
        calibrate: the ``crossfit`` row (the similarity as anchor-calibrated probabilities).
        include_given: a first row for the given labels, uncorrected.
    Raises MissingDependencyError when cleanlab is not installed.
    """
    require("cleanlab.filter", "comparing with cleanlab")
    noisy = np.asarray(labels_noisy, dtype=np.int64)
    probs = np.asarray(pred_probs, dtype=np.float32)
    if probs.ndim != 2 or len(probs) != len(noisy) or len(true_labels) != len(noisy):
        raise InputError(f"{len(noisy)} noisy labels, {len(true_labels)} true labels, "
                         f"pred_probs of shape {probs.shape}")
    evidence = Evidence(noisy, probs.shape[1], anchor_labels, features=features, anchor_features=anchor_features,
                        pred_probs=probs, fold_ids=fold_ids)
    rule = {"alpha": alpha, "threshold": threshold}
    methods = (["given"] if include_given else []) + ["cleanlab", "refine-paper"] + \
        (["refine-crossfit"] if calibrate else []) + ["refine-posterior"]
    return correction_rows(evidence, true_labels, methods,
                           {"paper": RefinerSpec("paper", rule), "crossfit": RefinerSpec("crossfit", rule)})


def compare_crossfit_spaces(labels_noisy: np.ndarray, true_labels: np.ndarray, pred_probs: np.ndarray,
                            features: np.ndarray, fold_of: np.ndarray, anchor_features: np.ndarray,
                            anchor_labels: np.ndarray, *, alpha: float = DEFAULT_ALPHA,
                            threshold: float = DEFAULT_THRESHOLD) -> List[Dict[str, Any]]:
    """:func:`compare_with_cleanlab` when every fold model has its own feature space
    (``features`` (N, D), row i in the space of fold ``fold_of[i]``; ``anchor_features`` (folds,
    M, D))."""
    return compare_with_cleanlab(labels_noisy, true_labels, pred_probs, features, anchor_features, anchor_labels,
                                 alpha=alpha, threshold=threshold, fold_ids=fold_of)


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


#: ``synref compare`` options -> (applies to the run?, what it applies to), given the dataset and
#: the options set; the others apply to every run.
COMPARE_OPTION_RULES = {
    "data": (lambda dataset, given: dataset != "digits", "--dataset cifar10 / cifar100 (the official python layout)"),
    "subset": (lambda dataset, given: dataset != "digits", "--dataset cifar10 / cifar100"),
    "epochs": (lambda dataset, given: dataset == "digits",
               "--dataset digits (its fold networks; CIFAR's evidence trains no network: frozen features and "
               "linear heads)"),
    "noise": (lambda dataset, given: "noise_file" not in given, "runs without --noise-file (generated noise)"),
}


def check_compare_options(dataset: str, given: Dict[str, str]) -> None:
    """InputError naming the first option of ``given`` (option -> the flag the user wrote) that
    ``synref compare --dataset dataset`` would not use, and what it applies to."""
    for option, flag in given.items():
        rule = COMPARE_OPTION_RULES.get(option)
        if rule is not None and not rule[0](dataset, given):
            raise InputError(f"{flag} does not apply to --dataset {dataset}"
                             f"{' with --noise-file' if option == 'noise' else ''}; it applies to {rule[1]}")


def compare_protocol(dataset: str, *, subset: int = 10000, epochs: Optional[int] = None,
                     anchors_per_class: int = 100, encoder: Optional[str] = None, evidence: str = "frozen",
                     finetune: Optional[Mapping[str, Any]] = None) -> Protocol:
    """The protocol of ``synref compare``: digits = the demo's (SimCLR space, a cross-fitted small
    CNN, the clean validation split picking each fold's epoch; ``epochs``: the fold networks'
    epochs, default the protocol's); CIFAR = the cpu protocol's data (first ``subset`` images,
    real-anchor stand-in) and its pretrained evidence (the frozen encoder's features, a
    cross-fitted linear head: no network is trained, ``epochs`` does not apply). ``encoder``
    (``--encoder``, e.g. ``hf:ID_OR_FOLDER``) replaces the refinement's space; the protocol's name
    then carries it. ``evidence`` ``finetune`` (CIFAR: pretrained evidence) with the ``finetune``
    options (:class:`~synref.tuned_evidence.FinetuneOptions` fields; refused without it): every
    row reads the fine-tuned evidence (:func:`~synref.experiments.protocol.with_finetune_evidence`:
    the name carries it too)."""
    options = finetune_options(evidence, finetune or {})
    if dataset == "digits":
        protocol = dataclasses.replace(protocol_for("digits", "digits"), anchors_per_class=anchors_per_class)
        if epochs is not None:
            protocol.evidence = dataclasses.replace(protocol.evidence, train=fold_schedule(int(epochs)))
    else:
        if epochs is not None:
            raise InputError(f"--epochs does not apply to --dataset {dataset}; it applies to "
                             f"{COMPARE_OPTION_RULES['epochs'][1]}")
        if not 8 <= subset <= 45000:
            raise InputError(f"--subset must be in [8, 45000], got {subset}")
        protocol = dataclasses.replace(protocol_for("cpu", dataset), train_size=subset,
                                       standard=cpu_cifar_schedule(15, 0.05), anchors_per_class=anchors_per_class)
    if encoder is not None:
        protocol = with_refine_encoder(protocol, encoder, rename=True)
    return protocol if options is None else with_finetune_evidence(protocol, options)


def run_compare(dataset: str = "digits", *, noise: str = "pmd-0.7", seed: int = 0, data: Optional[str] = None,
                noise_file: Optional[str] = None, subset: int = 10000, epochs: Optional[int] = None,
                protocol: Optional[Protocol] = None, out: Optional[PathLike] = None,
                encoder: Optional[str] = None, evidence: str = "frozen",
                finetune: Optional[Mapping[str, Any]] = None) -> List[Dict[str, Any]]:
    """The comparison table's rows (:data:`COMPARE_METHODS`) on ``dataset`` with noise ``noise``
    (digits: generated as in the demo) or the label file ``noise_file`` (CIFAR: the community
    file of the first 45,000 training images). Fails before any training without cleanlab.

    ``out``: a folder that keeps the shared steps (encoder features, noisy labels, models) under
    ``out/work/`` and each finished row under ``out/cells/`` (``out/results.md`` gathers them), so
    a re-run resumes and other noise settings reuse the features; None keeps nothing.
    ``encoder``: the refinement's frozen space; ``evidence`` ``finetune`` and the ``finetune``
    options: fine-tuned evidence (:func:`compare_protocol`)."""
    from pathlib import Path

    from .runner import parse_noise_settings

    require("cleanlab.filter", "comparing with cleanlab")
    if protocol is not None and (encoder is not None or evidence != "frozen" or finetune):
        raise InputError("give a protocol or an encoder / evidence, not both")
    protocol = protocol or compare_protocol(dataset, subset=subset, epochs=epochs, encoder=encoder,
                                            evidence=evidence, finetune=finetune)
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
