"""PLC: progressive label correction (Zhang et al., ICLR 2021), plain torch.

Behaviour follows the authors' reference (``pxiangwu/PLC``, ``cifar/train.py`` +
``utils.lrt_correction``):

* Every training step stores the softmax of the (train-mode, augmented) batch outputs for the
  batch's samples in slot ``epoch % window`` of a rolling ``(window, N, C)`` record; ``f`` is
  the mean over the record. The record is filled *during* each epoch, not by a separate
  inference pass.
* For 0-based ``epoch >= warmup_epochs`` (the reference's ``epoch >= args.warm_up``), right
  after that epoch's training pass and before validation, the labels are corrected with the
  likelihood-ratio test: ``LR_i = f[i, y_i] / max_c f[i, c]``; ``LR_i < delta`` ->
  ``y_i = argmax_c f[i, c]``. If fewer than ``min_change_fraction * N`` labels were corrected,
  ``delta = min(delta + delta_step, delta_max)`` (for the next epoch). The corrected labels
  are used from the next epoch on.
* Best validation accuracy (strictly greater, so the earliest epoch on ties) picks the model.
* Paper schedule: lr per epoch via MultiStepLR (no lr warm-up), SGD nesterov.

Differences (immaterial): the record's mean is over the filled slots only (the reference
averages zero-initialised slots too, which scales every row by the same factor and leaves
``LR`` unchanged); a trailing batch of one sample is merged into the previous batch (as in
:func:`synref.train.fit`) instead of being skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ..config import ConfigMixin
from ..errors import InputError
from ..validation import as_image_array, as_labels
from .loop import TrainConfig, fit

__all__ = ["PLCConfig", "PLCResult", "lrt_correct", "next_delta", "train_plc"]


@dataclass
class PLCConfig(ConfigMixin):
    """Options of :func:`train_plc`.

    Attributes:
        train: optimiser / schedule / augmentation (:class:`TrainConfig`; its own
            ``warmup_epochs`` is the *lr* warm-up, 0 in the paper recipe).
        warmup_epochs: epochs of plain training before the first correction (corrections
            happen after every 0-based epoch ``>= warmup_epochs``).
        window: number of most recent epochs whose softmax outputs are averaged into ``f``.
        delta_start: initial likelihood-ratio threshold.
        delta_step: threshold increment when an epoch corrects too few labels.
        delta_max: cap on the threshold.
        min_change_fraction: the threshold grows when fewer than this fraction of the labels
            is corrected in an epoch.
    """

    config_name = "plc config"

    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=180, batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True,
        milestones=[40, 80], gamma=0.5, warmup_epochs=0))
    warmup_epochs: int = 8
    window: int = 5
    delta_start: float = 0.3
    delta_step: float = 0.1
    delta_max: float = 0.9
    min_change_fraction: float = 0.001

    def __post_init__(self) -> None:
        if not isinstance(self.train, TrainConfig):
            raise InputError(f"plc config: train must be a TrainConfig, got {type(self.train)}")
        checks = [
            ("warmup_epochs", self.warmup_epochs >= 0, "must be >= 0"),
            ("window", self.window >= 1, "must be >= 1"),
            ("delta_start", 0 <= self.delta_start <= 1, "must be in [0, 1]"),
            ("delta_step", self.delta_step >= 0, "must be >= 0"),
            ("delta_max", 0 <= self.delta_max <= 1, "must be in [0, 1]"),
            ("min_change_fraction", 0 <= self.min_change_fraction <= 1, "must be in [0, 1]"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise InputError(f"plc config: {name}={getattr(self, name)!r} {why}")

    @classmethod
    def paper(cls, **overrides: Any) -> "PLCConfig":
        """The paper's CIFAR recipe (network: ``resnet34``, which is what PLC's code calls
        "preact_resnet34"): SGD lr 0.01, momentum 0.9, nesterov, wd 5e-4, batch 128,
        180 epochs, lr x0.5 at [40, 80], no lr warm-up, crop pad 4 (32 px) + flip; 8 warm-up
        epochs, window 5, delta 0.3 (+0.1 when < 0.1 % change, cap 0.9).
        ``overrides`` may set PLC fields and ``train`` (a TrainConfig or dict of
        TrainConfig fields to change)."""
        train_kw: Dict[str, Any] = dict(
            epochs=180, batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4,
            nesterov=True, milestones=[40, 80], gamma=0.5, warmup_epochs=0,
            augment_pad=None, hflip=True)
        train = overrides.pop("train", None)
        if isinstance(train, TrainConfig):
            return cls(train=train, **overrides)
        if isinstance(train, dict):
            train_kw.update(train)
        return cls(train=TrainConfig(**train_kw), **overrides)


@dataclass
class PLCResult:
    """Outcome of :func:`train_plc`.

    Attributes:
        model: the model with the best-validation weights, eval mode, on the train device.
        best_epoch: 0-based epoch of those weights.
        best_val_acc: their validation accuracy.
        corrected_labels: int64 ``(N,)`` labels after the last epoch's correction.
        history: one dict per epoch: ``epoch``, ``lr`` (at the epoch's last step),
            ``train_loss``, ``train_acc``, ``val_acc``, ``corrected`` (bool: a correction step
            ran after this epoch), ``delta`` (threshold used by that step, or the start
            threshold during warm-up), ``num_changed`` (labels changed by it), ``num_differ``
            (current labels != given labels) and, with ``true_labels``, ``label_acc`` (fraction
            of current labels equal to the true ones, after this epoch's correction).
        seconds: wall-clock time.
    """

    model: nn.Module
    best_epoch: int
    best_val_acc: float
    corrected_labels: np.ndarray
    history: List[Dict[str, Any]]
    seconds: float = 0.0


# ------------------------------------------------------------------------------ correction
def lrt_correct(f: np.ndarray, labels: np.ndarray, delta: float) -> np.ndarray:
    """One likelihood-ratio-test correction step.

    ``f``: ``(N, C)`` (averaged) class probabilities; ``labels``: int ``(N,)``. Returns new
    int64 labels: ``argmax_c f[i]`` where ``f[i, y_i] / max_c f[i, c] < delta``, else ``y_i``.
    (A label equal to the argmax has ratio 1 and is never changed, so every replaced label
    really changes.)
    """
    f = np.asarray(f, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if f.ndim != 2 or len(f) != len(labels):
        raise InputError(f"lrt_correct: f is {f.shape} but there are {len(labels)} labels")
    fmax = f.max(1)
    ratio = f[np.arange(len(labels)), labels] / np.where(fmax > 0, fmax, 1.0)
    out = labels.copy()
    flip = ratio < delta
    out[flip] = f[flip].argmax(1)
    return out


def next_delta(num_changed: int, n: int, delta: float, *, step: float = 0.1,
               maximum: float = 0.9, min_change_fraction: float = 0.001) -> float:
    """Threshold for the next epoch: ``min(delta + step, maximum)`` when
    ``num_changed < min_change_fraction * n``, else ``delta`` unchanged."""
    if num_changed < min_change_fraction * n:
        return float(min(delta + step, maximum))
    return float(delta)


# -------------------------------------------------------------------------------- training
def train_plc(model: nn.Module, images: np.ndarray, labels: np.ndarray, *,
              val_images: np.ndarray, val_labels: np.ndarray,
              config: Optional[PLCConfig] = None, true_labels: Optional[np.ndarray] = None,
              normalize_from_data: bool = True, desc: str = "plc") -> PLCResult:
    """Train ``model`` in place with progressive label correction.

    Args:
        model: an ``ImageClassifier`` (``create_model(..., seed=...)`` for reproducibility).
        images: uint8 ``(N, H, W, C)``; labels: the given (noisy) int ``(N,)`` labels.
        val_images / val_labels: validation set that picks the best epoch (required).
        config: :class:`PLCConfig` (default :meth:`PLCConfig.paper`).
        true_labels: optional clean ``(N,)`` labels, only to log ``label_acc`` per epoch.
        normalize_from_data: model normalisation from ``images``.
    Built on :func:`fit` (its hooks record the training-time softmax and correct the labels
    after each epoch), so it is deterministic per ``config.train.seed`` like ``fit``.
    """
    config = config if config is not None else PLCConfig.paper()
    images = as_image_array(images)
    n = len(images)
    num_classes = int(getattr(model, "num_classes"))
    given = as_labels(labels, num_classes, n=n)
    if val_images is None or val_labels is None:
        raise InputError("train_plc needs val_images and val_labels (best-validation model)")
    truth = None if true_labels is None else as_labels(true_labels, num_classes, n=n, what="true_labels")

    # Training-time softmax of the last `window` epochs, one slot per epoch (CPU).
    record = torch.zeros((config.window, n, num_classes), dtype=torch.float32)
    state = {"filled": 0, "delta": float(config.delta_start), "current": given.copy()}

    def on_batch(epoch: int, idx: torch.Tensor, logits: torch.Tensor) -> None:
        record[epoch % config.window, idx] = torch.softmax(logits, 1).cpu()

    def on_epoch_end(epoch: int):
        state["filled"] = min(state["filled"] + 1, config.window)
        used_delta, num_changed, new = state["delta"], 0, None
        if epoch >= config.warmup_epochs:
            filled = state["filled"]
            f = (record.sum(0) / filled).numpy() if filled < config.window else record.mean(0).numpy()
            new = lrt_correct(f, state["current"], used_delta)
            num_changed = int((new != state["current"]).sum())
            state["delta"] = next_delta(num_changed, n, used_delta, step=config.delta_step,
                                        maximum=config.delta_max,
                                        min_change_fraction=config.min_change_fraction)
            state["current"] = new
        extra: Dict[str, Any] = {"corrected": new is not None, "delta": used_delta, "num_changed": num_changed,
                                 "num_differ": int((state["current"] != given).sum())}
        if truth is not None:
            extra["label_acc"] = float(np.mean(state["current"] == truth))
        return new, extra

    def get_state() -> Dict[str, Any]:
        return {"record": record.clone(), "filled": state["filled"], "delta": state["delta"],
                "current": torch.from_numpy(state["current"].copy())}

    def set_state(saved: Dict[str, Any]) -> None:
        record.copy_(saved["record"])
        state.update(filled=int(saved["filled"]), delta=float(saved["delta"]),
                     current=saved["current"].numpy().astype(np.int64))

    result = fit(model, images, given, val_images=val_images, val_labels=val_labels, config=config.train,
                 normalize_from_data=normalize_from_data, desc=desc,
                 on_batch=on_batch, on_epoch_end=on_epoch_end, hook_state=(get_state, set_state))
    return PLCResult(model=result.model, best_epoch=result.best_epoch, best_val_acc=result.best_val_acc,
                     corrected_labels=state["current"].copy(), history=result.history, seconds=result.seconds)
