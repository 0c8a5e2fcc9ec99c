"""``synref refine --evidence finetune``: cross-fitted fine-tuning over the frozen pass.

The frozen pass (the default pretrained evidence: a frozen encoder, cross-fitted linear heads,
the refiner) runs first; its scores are the soft targets. Then a pretrained backbone is
fine-tuned k-fold (:func:`synref.train.finetune.crossfit_finetune`) on the images decoded at
``finetune_size``, with the anchors as clean samples and early stopping on held-out anchors, and
the refiner runs again: same frozen features and anchors, plus the fine-tuned **out-of-fold
softmax as a separate view** (``pred_probs``, ``pred_probs_view="separate"``:
the posterior refiner reads it through the estimated noise with its separate-view weight). When
the frozen pass's model check failed (the anchors do not describe the images in the frozen space:
the posterior is not trusted and confident learning on the given labels and ``pred_probs``
decides), ``pred_probs`` is the mean of the frozen linear heads' and the fine-tuned out-of-fold
softmax: two views whose errors differ (measured on the digits: docs/finetune.md).

Soft targets: the frozen posterior when it decided; the out-of-sample softmax of the linear heads
when confident learning decided (the model check failed: the posterior was not trusted); the
given labels when nothing could decide.

Resumable: every fold saves its state each epoch under ``<cache>/finetune-checkpoints``; the
finished fine-tuning is kept in ``<cache>/finetune-<key>.npz`` (key: images, anchors, targets,
configuration) and the checkpoints deleted. Under a multi-process launch the folds are shared
between the processes and every process refines its share of the rows, as the frozen pass does.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..data import LabeledImages, decode_images
from ..distributed import broadcast_object, process_group
from ..config import check_value_type
from ..errors import InputError
from ..evidence import Evidence
from ..hashing import digest, images_hash
from ..io import atomic_open
from ..pipeline import TUNINGS
from ..refiners import Refiner, RefinementResult, refine
from ..train import checkpoint_folder, clear_checkpoints
from ..train.finetune import FinetuneConfig, FinetuneResult, crossfit_finetune
from ..validation import check_memory

__all__ = ["EVIDENCE_CHOICES", "FINETUNE_DEFAULTS", "VIEWS", "check_evidence_options", "finetune_config",
           "soft_targets", "view_probs", "finetune_refinement", "add_finetune_info"]

#: ``--evidence``: ``frozen`` (the pretrained evidence as it is) or ``finetune`` (this module):
#: the run's ``evidence.tuning``.
EVIDENCE_CHOICES = TUNINGS
#: the defaults of the ``--finetune-*`` / ``--anchor-weight`` options (FinetuneConfig's).
FINETUNE_DEFAULTS = {"finetune_epochs": FinetuneConfig.epochs, "finetune_size": FinetuneConfig.image_size,
                     "finetune_lr": FinetuneConfig.lr, "anchor_weight": FinetuneConfig.anchor_weight,
                     "finetune_flip": FinetuneConfig.hflip}
#: what the fine-tuned pred_probs are called in a results folder's summary.
_ROLE = "separate view (pred_probs)"
#: how the refiner reads the fine-tuned softmax (``evidence.finetune.view`` of the summary).
VIEWS = {"separate": "the fine-tuned out-of-fold softmax as a separate view",
         "mean": "the mean of the frozen heads' and the fine-tuned out-of-fold softmax (the frozen pass's model "
                 "check failed: confident learning on it decides)"}


def check_evidence_options(config: Any) -> None:
    """InputError (one line naming the option) for a ``RefineRunConfig`` whose ``evidence`` or
    fine-tuning options cannot run: fine-tuning follows the frozen pass of pretrained evidence and
    the posterior refiner reads its ``pred_probs``."""
    tuning = config.evidence.tuning
    for name, minimum in (("finetune_epochs", 1), ("finetune_size", 16)):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
            raise InputError(f"--{name.replace('_', '-')} must be an integer of at least {minimum}, got {value!r}")
    for name, strict in (("finetune_lr", True), ("anchor_weight", False)):
        value = float(getattr(config, name))
        if not (value > 0 if strict else value >= 0) or not np.isfinite(value):
            raise InputError(f"--{name.replace('_', '-')} must be {'> 0' if strict else '>= 0'}, got {value}")
    check_value_type(config.config_name, "finetune_flip", config.finetune_flip, bool)
    if tuning != "finetune":
        return
    if config.evidence_mode != "pretrained":
        flag = {"train": "--train", "classifier": "--classifier", "features": "--features"}[config.evidence_mode]
        raise InputError(f"--evidence finetune fine-tunes after the frozen encoder's pass (pretrained evidence); "
                         f"it does not apply with {flag}")
    if config.refiner.name != "posterior":
        raise InputError(f"--evidence finetune feeds the posterior refiner (the fine-tuned softmax as a separate "
                         f"view); it does not apply to --refiner {config.refiner.name}")


def finetune_config(config: Any, device: Optional[str] = None) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of a ``RefineRunConfig`` (its folds and seed; ``device``: the
    process's device under a launch, else ``auto``)."""
    return FinetuneConfig(image_size=int(config.finetune_size), epochs=int(config.finetune_epochs),
                          lr=float(config.finetune_lr), anchor_weight=float(config.anchor_weight),
                          hflip=bool(config.finetune_flip), folds=int(config.evidence.folds), seed=int(config.seed),
                          device=device or "auto")


def soft_targets(frozen: RefinementResult, num_classes: int) -> Tuple[np.ndarray, str]:
    """(N, C) float32 soft targets from the frozen pass and where they come from (see the module
    docstring)."""
    decided_by = frozen.decision.decided_by
    if decided_by in ("posterior", "confident-learning") and frozen.scores is not None:
        scores = np.asarray(frozen.scores, np.float32)
        return scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-12), (
            "frozen posterior" if decided_by == "posterior" else "frozen linear heads' pred_probs")
    return np.eye(num_classes, dtype=np.float32)[frozen.labels], "given labels"


def view_probs(frozen: RefinementResult, tuned: np.ndarray) -> Tuple[np.ndarray, str]:
    """The ``pred_probs`` (N, C) the second refinement reads and which of :data:`VIEWS` they are:
    ``tuned`` (the fine-tuned out-of-fold softmax), or, when confident learning decided the frozen
    pass, its mean with the frozen linear heads' out-of-fold softmax."""
    if frozen.decision.decided_by == "confident-learning" and frozen.scores is not None:
        heads = np.asarray(frozen.scores, np.float32)  # the fallback's scores are the heads' pred_probs
        return (0.5 * (heads + tuned)).astype(np.float32), "mean"
    return tuned, "separate"


def _images_at(images: LabeledImages, size: int, skip_bad: bool, what: str) -> np.ndarray:
    decoded, skipped = decode_images(images, size=(size, size), channels=3, skip_bad=skip_bad)
    if len(decoded) != len(images):  # a file the frozen pass read could not be read again
        raise InputError(f"{what}: {skipped[-1]['file']} could not be decoded again at {size} px "
                         f"({skipped[-1]['reason']})")
    assert decoded.images is not None
    return decoded.images


def _save(path: Path, result: FinetuneResult) -> None:
    with atomic_open(path, "wb") as handle:
        np.savez(handle, pred_probs=result.pred_probs, features=result.features, fold_of=result.fold_of,
                 anchor_features=result.anchor_features, anchor_pred_probs=result.anchor_pred_probs,
                 anchor_fold=result.anchor_fold, histories=np.array(json.dumps(result.histories)),
                 seconds=np.array(result.seconds))


def _load(path: Path) -> FinetuneResult:
    with np.load(path) as saved:
        return FinetuneResult(saved["pred_probs"], saved["features"], saved["fold_of"], saved["anchor_features"],
                              saved["anchor_pred_probs"], saved["anchor_fold"], json.loads(str(saved["histories"])),
                              float(saved["seconds"]))


def _cached_finetune(images: np.ndarray, targets: np.ndarray, anchors: np.ndarray, anchor_labels: np.ndarray, *,
                     num_classes: int, config: FinetuneConfig, cache: Path) -> Tuple[FinetuneResult, bool]:
    """:func:`crossfit_finetune`, kept in ``cache``; returns the result and whether it was loaded."""
    key_config = {k: v for k, v in config.to_dict().items() if k != "device"}
    key = digest(images_hash(images), images_hash(anchors), anchor_labels, targets, key_config)
    path = cache / f"finetune-{key}.npz"
    rank, _ = process_group()
    if broadcast_object(path.is_file() if rank == 0 else None, src=0):  # every process takes the same way
        return _load(path), True
    folder = cache / "finetune-checkpoints"
    with checkpoint_folder(folder):  # a killed run resumes at the last epoch of the fold it was in
        result = crossfit_finetune(images, targets, anchors, anchor_labels, num_classes=num_classes, config=config)
    if rank == 0:
        _save(path, result)
        clear_checkpoints(folder)
    return result, False


def finetune_refinement(config: Any, dataset: LabeledImages, anchors: LabeledImages, features: Any,
                        anchor_features: np.ndarray, frozen: RefinementResult, refiner: Refiner, cache: Path, *,
                        device: Optional[str] = None) -> Tuple[RefinementResult, Dict[str, Any]]:
    """The refinement with fine-tuned evidence (module docstring) and its facts for the summary.

    Args:
        config: the run's ``RefineRunConfig``.
        dataset, anchors: the samples (path-backed or arrays, the rows of ``features``) and the anchors.
        features, anchor_features: the frozen space (N, D) and (M, D) the refiner reads.
        frozen: the frozen pass's refinement (its scores become the soft targets).
        refiner: the run's refiner.
    """
    c = dataset.num_classes
    ft = finetune_config(config, device)
    size = ft.image_size
    check_memory(float(len(dataset) + len(anchors)) * size * size * 3,
                 f"fine-tuning at {size}x{size} px ({len(dataset)} images, {len(anchors)} anchors)",
                 "pass a smaller --finetune-size")
    t0 = time.time()
    images = _images_at(dataset, size, bool(config.skip_bad), f"--data {config.data}")
    anchor_images = _images_at(anchors, size, False, "anchors")
    decode_seconds = time.time() - t0
    targets, source = soft_targets(frozen, c)
    t1 = time.time()
    tuned, resumed = _cached_finetune(images, targets, anchor_images, anchors.labels, num_classes=c, config=ft,
                                      cache=cache)
    finetune_seconds = time.time() - t1
    del images, anchor_images
    t2 = time.time()
    probs, view = view_probs(frozen, tuned.pred_probs)
    evidence = Evidence(dataset.labels, c, anchors.labels, features=features, anchor_features=anchor_features,
                        pred_probs=probs, class_names=dataset.class_names, seed=int(config.seed),
                        pred_probs_view="separate", description={"features": config.space,
                                     "pred_probs_from": f"{ft.folds}-fold fine-tuned {ft.backbone}"})
    result = refine(evidence, refiner)
    refine_seconds = time.time() - t2
    per_fold: List[Dict[str, Any]] = [{"fold": h["fold"], "best_epoch": h["best_epoch"], "seconds": h["seconds"],
                                       "epochs": h["epochs"]} for h in tuned.histories]
    facts = {
        "finetune": {"config": {k: v for k, v in ft.to_dict().items() if not k.startswith("_")}, "targets": source,
                     "role": _ROLE, "view": VIEWS[view], "frozen_pass": {"decided_by": frozen.decision.decided_by,
                                                    "num_changed": int(frozen.changed.sum())},
                     "per_fold": per_fold, "resumed": resumed,
                     "seconds": round(sum(f["seconds"] for f in per_fold), 3)},
        "timings": {"finetune_decode": round(decode_seconds, 3), "finetune": round(finetune_seconds, 3),
                    "finetune_refine": round(refine_seconds, 3)},
    }
    return result, facts


def add_finetune_info(info: Dict[str, Any], facts: Dict[str, Any]) -> Dict[str, Any]:
    """The summary facts of a frozen run (``info``) with the fine-tuning's (``facts`` of
    :func:`finetune_refinement`): ``evidence.mode`` ``finetune``, ``evidence.finetune`` (``config``,
    ``targets``, ``per_fold`` chosen epochs, histories and seconds, ``seconds``), the timings."""
    tuned = facts["finetune"]
    info = dict(info)
    info["evidence"] = {**info.get("evidence", {}), "mode": "finetune", "finetune": tuned}
    info["timings"] = {**info.get("timings", {}), **facts["timings"]}
    ft = tuned["config"]
    info["classifier"] = (f"{info.get('classifier')}; then {ft['folds']}-fold fine-tuned {ft['backbone']} at "
                          f"{ft['image_size']} px ({_ROLE})")
    return info
