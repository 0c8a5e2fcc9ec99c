"""Fine-tuned evidence: cross-fitted fine-tuning over the frozen pass (the one recipe of
``synref refine --evidence finetune``, ``synref bench --evidence finetune`` and ``synref compare
--evidence finetune``).

The frozen pass (pretrained evidence: a frozen encoder, cross-fitted linear heads, the posterior
refiner) runs first; its scores are the soft targets. Then a pretrained backbone is fine-tuned
k-fold (:func:`synref.train.finetune.crossfit_finetune`) on the images decoded at
``finetune_size``, with the anchors as clean samples and early stopping on held-out anchors.
:func:`finetuned_evidence` returns the evidence the refiner then reads: the same frozen features
and anchors, plus the fine-tuned **out-of-fold softmax as a separate view** (``pred_probs``,
``pred_probs_view="separate"``: the posterior refiner reads it through the estimated noise with
its separate-view weight). When the frozen pass's model check failed (the anchors do not describe
the images in the frozen space: the posterior is not trusted and confident learning on the given
labels and ``pred_probs`` decides), ``pred_probs`` is the mean of the frozen linear heads' and the
fine-tuned out-of-fold softmax: two views whose errors differ (measured on the digits:
docs/finetune.md).

Soft targets: the frozen posterior when it decided; the out-of-sample softmax of the linear heads
when confident learning decided (the model check failed: the posterior was not trusted); the
given labels when nothing could decide.

Resumable: every fold saves its state each epoch under ``<cache>/finetune-checkpoints``; the
finished fine-tuning is kept in ``<cache>/finetune-<key>.npz`` (key: images, anchors, targets,
configuration) and the checkpoints deleted. Under a multi-process launch the folds are shared
between the processes.

    options = FinetuneOptions(finetune_epochs=8)
    evidence, facts = finetuned_evidence(frozen, data, anchors, features, anchor_features,
                                         finetune_config(options, folds=4, seed=0), cache=Path("cache"),
                                         space="efficientnet-lite0")
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .config import ConfigMixin, check_value_type
from .data import LabeledImages, decode_images
from .distributed import broadcast_object, process_group
from .errors import InputError
from .evidence import Evidence
from .hashing import digest, images_hash
from .io import atomic_open
from .pipeline import TUNINGS
from .refiners import RefinementResult
from .train import checkpoint_folder, clear_checkpoints
from .train.finetune import FinetuneConfig, FinetuneResult, crossfit_finetune
from .validation import check_memory

__all__ = ["FinetuneOptions", "FINETUNE_DEFAULTS", "FINETUNE_FLAGS", "FINETUNE_APPLIES", "VIEWS", "ROLE",
           "finetune_options", "finetune_config", "describe_finetune", "soft_targets", "view_probs",
           "cached_finetune", "finetuned_evidence"]

#: the command line's flag of each :class:`FinetuneOptions` field.
FINETUNE_FLAGS = {"finetune_epochs": "--finetune-epochs", "finetune_size": "--finetune-size",
                  "finetune_lr": "--finetune-lr", "anchor_weight": "--anchor-weight",
                  "finetune_flip": "--no-finetune-flip"}
#: what the fine-tuning options apply to (the end of the line that refuses one set without it).
FINETUNE_APPLIES = "--evidence finetune (the fine-tuned backbone)"
#: what the fine-tuned pred_probs are called in a summary.
ROLE = "separate view (pred_probs)"
#: how the refiner reads the fine-tuned softmax (``finetune.view`` of a summary).
VIEWS = {"separate": "the fine-tuned out-of-fold softmax as a separate view",
         "mean": "the mean of the frozen heads' and the fine-tuned out-of-fold softmax (the frozen pass's model "
                 "check failed: confident learning on it decides)"}


@dataclass
class FinetuneOptions(ConfigMixin):
    """The user's options of fine-tuned evidence (the run gives the folds, the seed and the device).

    Attributes:
        finetune_epochs: epochs per fold (``--finetune-epochs``; the best by held-out anchors kept).
        finetune_size: the side the images are fine-tuned at (``--finetune-size``).
        finetune_lr: AdamW learning rate of the backbone (``--finetune-lr``).
        anchor_weight: loss weight of an anchor relative to an image (``--anchor-weight``).
        finetune_flip: mirrored training images (off: ``--no-finetune-flip``, for digits or text).
    """

    config_name = "fine-tuned evidence"

    finetune_epochs: int = FinetuneConfig.epochs
    finetune_size: int = FinetuneConfig.image_size
    finetune_lr: float = FinetuneConfig.lr
    anchor_weight: float = FinetuneConfig.anchor_weight
    finetune_flip: bool = FinetuneConfig.hflip

    def __post_init__(self) -> None:
        for name, minimum in (("finetune_epochs", 1), ("finetune_size", 16)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
                raise InputError(f"{FINETUNE_FLAGS[name]} must be an integer of at least {minimum}, got {value!r}")
        for name, strict in (("finetune_lr", True), ("anchor_weight", False)):
            check_value_type(self.config_name, name, getattr(self, name), float)
            value = float(getattr(self, name))
            if not (value > 0 if strict else value >= 0) or not math.isfinite(value):
                raise InputError(f"{FINETUNE_FLAGS[name]} must be {'> 0' if strict else '>= 0'}, got {value}")
        check_value_type(self.config_name, "finetune_flip", self.finetune_flip, bool)


#: the defaults of the ``--finetune-*`` / ``--anchor-weight`` options.
FINETUNE_DEFAULTS: Dict[str, Any] = dataclasses.asdict(FinetuneOptions())


def finetune_options(tuning: str, values: Mapping[str, Any]) -> Optional[FinetuneOptions]:
    """The :class:`FinetuneOptions` of ``--evidence tuning`` and the fine-tuning options set
    (``values``: field -> value); None for ``frozen``. An option set without ``--evidence
    finetune`` is refused in one line naming it."""
    if tuning not in TUNINGS:
        raise InputError(f"--evidence must be one of {', '.join(TUNINGS)}, got {tuning!r}")
    unknown = sorted(set(values) - set(FINETUNE_FLAGS))
    if unknown:
        raise InputError(f"{FinetuneOptions.config_name}: unknown option(s) {', '.join(unknown)}")
    if tuning != "finetune":
        for name in values:
            raise InputError(f"{FINETUNE_FLAGS[name]} does not apply with --evidence {tuning}; it applies to "
                             f"{FINETUNE_APPLIES}")
        return None
    return FinetuneOptions(**values)


def finetune_config(options: FinetuneOptions, *, folds: int, seed: int, device: Optional[str] = None
                    ) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of ``options`` with a run's ``folds`` and ``seed`` (``device``:
    the process's device, None: ``auto``)."""
    return FinetuneConfig(image_size=int(options.finetune_size), epochs=int(options.finetune_epochs),
                          lr=float(options.finetune_lr), anchor_weight=float(options.anchor_weight),
                          hflip=bool(options.finetune_flip), folds=int(folds), seed=int(seed),
                          device=device or "auto")


def describe_finetune(config: FinetuneConfig) -> str:
    """One line: what the fine-tuning of ``config`` adds (summaries, results notes)."""
    flips = "" if config.hflip else ", no mirrored images"
    epochs = f"{config.epochs} epoch{'' if config.epochs == 1 else 's'}"
    return (f"{config.folds}-fold fine-tuned {config.backbone} at {config.image_size} px, {epochs}, "
            f"lr {config.lr:g}, anchor weight {config.anchor_weight:g}{flips} ({ROLE})")


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
    """uint8 (N, size, size, 3) of ``images`` (files decoded, arrays resized)."""
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


def cached_finetune(images: np.ndarray, targets: np.ndarray, anchors: np.ndarray, anchor_labels: np.ndarray, *,
                    num_classes: int, config: FinetuneConfig, cache: Optional[Path]) -> Tuple[FinetuneResult, bool]:
    """:func:`crossfit_finetune` of images (N, S, S, 3), soft targets (N, C) and anchors
    (M, S, S, 3), kept in ``cache`` (None: nothing kept); returns the result and whether it was
    loaded."""
    if cache is None:
        return crossfit_finetune(images, targets, anchors, anchor_labels, num_classes=num_classes,
                                 config=config), False
    key_config = {k: v for k, v in config.to_dict().items() if k != "device"}
    key = digest(images_hash(images), images_hash(anchors), anchor_labels, targets, key_config)
    path = Path(cache) / f"finetune-{key}.npz"
    rank, _ = process_group()
    if broadcast_object(path.is_file() if rank == 0 else None, src=0):  # every process takes the same way
        return _load(path), True
    folder = Path(cache) / "finetune-checkpoints"
    with checkpoint_folder(folder):  # a killed run resumes at the last epoch of the fold it was in
        result = crossfit_finetune(images, targets, anchors, anchor_labels, num_classes=num_classes, config=config)
    if rank == 0:
        _save(path, result)
        clear_checkpoints(folder)
    return result, False


def finetuned_evidence(frozen: RefinementResult, images: LabeledImages, anchors: LabeledImages, features: Any,
                       anchor_features: np.ndarray, config: FinetuneConfig, cache: Optional[Path], *, space: str,
                       skip_bad: bool = False, what: str = "the images") -> Tuple[Evidence, Dict[str, Any]]:
    """The evidence with the fine-tuned view (module docstring) and its facts for a summary.

    Args:
        frozen: the frozen pass's refinement (its given labels are the evidence's labels, its
            scores the soft targets).
        images, anchors: the samples (path-backed or arrays, the rows of ``features``) and the
            anchors (their labels).
        features, anchor_features: the frozen space (N, D) and (M, D) the refiner reads.
        config: the fine-tuning (:func:`finetune_config`).
        cache: where the finished fine-tuning and the folds' checkpoints are kept (None: nowhere).
        space: the frozen space's name (the evidence's description).
        skip_bad, what: a file that cannot be decoded again: left out (an error naming ``what``).

    Returns ``(evidence, facts)``: facts ``finetune`` (``config``, ``targets``, ``role``,
    ``view``, ``frozen_pass``, ``per_fold``, ``resumed``, ``seconds``) and ``timings``
    (``finetune_decode``, ``finetune``).
    """
    c = images.num_classes
    size = config.image_size
    check_memory(float(len(images) + len(anchors)) * size * size * 3,
                 f"fine-tuning at {size}x{size} px ({len(images)} images, {len(anchors)} anchors)",
                 "pass a smaller --finetune-size")
    t0 = time.time()
    decoded = _images_at(images, size, skip_bad, what)
    anchor_images = _images_at(anchors, size, False, "anchors")
    decode_seconds = time.time() - t0
    targets, source = soft_targets(frozen, c)
    t1 = time.time()
    tuned, resumed = cached_finetune(decoded, targets, anchor_images, anchors.labels, num_classes=c, config=config,
                                     cache=cache)
    finetune_seconds = time.time() - t1
    probs, view = view_probs(frozen, tuned.pred_probs)
    evidence = Evidence(frozen.labels, c, anchors.labels, features=features, anchor_features=anchor_features,
                        pred_probs=probs, class_names=images.class_names, seed=int(config.seed),
                        pred_probs_view="separate", description={
                            "features": space, "pred_probs_from": f"{config.folds}-fold fine-tuned {config.backbone}"})
    per_fold: List[Dict[str, Any]] = [{"fold": h["fold"], "best_epoch": h["best_epoch"], "seconds": h["seconds"],
                                       "epochs": h["epochs"]} for h in tuned.histories]
    facts = {
        "finetune": {"config": {k: v for k, v in config.to_dict().items() if not k.startswith("_")},
                     "targets": source, "role": ROLE, "view": VIEWS[view],
                     "frozen_pass": {"decided_by": frozen.decision.decided_by,
                                     "num_changed": int(frozen.changed.sum())},
                     "per_fold": per_fold, "resumed": resumed,
                     "seconds": round(sum(f["seconds"] for f in per_fold), 3)},
        "timings": {"finetune_decode": round(decode_seconds, 3), "finetune": round(finetune_seconds, 3)},
    }
    return evidence, facts
