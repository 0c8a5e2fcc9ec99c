"""Training loop: fit / fine-tune / k-fold cross-fit, plain torch (inference lives in
:mod:`synref.models.inference`).

Images at this boundary are numpy uint8 ``(N, H, W, C)`` (``(N, H, W)`` is read as one channel),
labels int ``(N,)``. Models are :class:`synref.models.ImageClassifier` s: they take ``[0, 1]``
pixels (or uint8) and normalise internally, so nothing here normalises by hand.

Determinism: every random draw of a fit (data order, crop offsets, flips) comes from
``torch.Generator`` objects seeded from ``TrainConfig.seed``; initial weights come from
``create_model(..., seed=...)``. On CPU the same seed gives bit-identical weights.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigMixin
from ..device import resolve_device
from ..errors import InputError
from ..hashing import hash_state_dict
from ..models import create_model
from ..models.inference import channel_stats, evaluate_accuracy, proba_and_features
from ..progress import progress as progress_bar
from ..validation import as_image_array, as_labels, check_memory
from .checkpoint import LoopCheckpoint, checkpointing, tensor_state

__all__ = [
    "TrainConfig",
    "TrainResult",
    "CrossFitResult",
    "lr_at",
    "augment_batch",
    "fit",
    "fine_tune",
    "cross_fit",
    "fold_splits",
    "sub_seed",
    "split_batches",
    "activation_bytes",
    "estimate_fit_bytes",
]


# ----------------------------------------------------------------------------------- config
@dataclass
class TrainConfig(ConfigMixin):
    """Optimiser, schedule and augmentation of one training run.

    The defaults are the paper's "Standard" recipe (see :meth:`paper_standard`) except that
    horizontal flips are off (safe for digits); the presets switch them on for CIFAR.

    Attributes:
        epochs: number of passes over the training set.
        batch_size: SGD mini-batch size (a trailing batch of 1 is merged into the previous one,
            BatchNorm cannot train on a single sample).
        lr, momentum, weight_decay, nesterov: ``torch.optim.SGD`` settings (decay on all weights).
        milestones: 0-based epochs at which the lr is multiplied by ``gamma`` (MultiStepLR).
        gamma: lr decay factor at each milestone.
        warmup_epochs: linear per-step lr warm-up from ``lr/steps`` to ``lr`` over these epochs.
        augment_pad: random-crop zero padding in pixels; 0 = no crop; ``None`` = ``H // 8``
            (4 px at 32x32, 1 px at 8x8).
        hflip: random horizontal flips (p = 0.5); off for digits, on for natural images.
        seed: seeds data order and augmentation (and the head re-init in :func:`fine_tune`).
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:1"`` ...).
        num_workers: kept for compatibility; the loader indexes an in-memory tensor, no workers.
        amp: bfloat16 autocast on CUDA (ignored on CPU).
    """

    config_name = "train config"

    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    milestones: List[int] = field(default_factory=lambda: [60, 120, 160])
    gamma: float = 0.2
    warmup_epochs: int = 1
    augment_pad: Optional[int] = None
    hflip: bool = False
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0
    amp: bool = False

    def __post_init__(self) -> None:
        self.milestones = sorted(int(m) for m in self.milestones)
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "must be > 0"),
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("gamma", self.gamma > 0, "must be > 0"),
            ("warmup_epochs", self.warmup_epochs >= 0, "must be >= 0"),
            ("augment_pad", self.augment_pad is None or self.augment_pad >= 0, "must be >= 0"),
            ("num_workers", self.num_workers >= 0, "must be >= 0"),
            ("milestones", all(m >= 0 for m in self.milestones), "must be >= 0"),
            ("nesterov", not self.nesterov or self.momentum > 0, "needs momentum > 0"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise InputError(f"train config: {name}={getattr(self, name)!r} {why}")

    @classmethod
    def paper_standard(cls, **overrides: Any) -> "TrainConfig":
        """Noisy-label "Standard" training: SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128,
        200 epochs, lr x0.2 at [60, 120, 160], 1 warm-up epoch, crop pad 4 (32 px) + flip."""
        kw: Dict[str, Any] = dict(epochs=200, batch_size=128, lr=0.1, momentum=0.9,
                                  weight_decay=5e-4, nesterov=False, milestones=[60, 120, 160],
                                  gamma=0.2, warmup_epochs=1, augment_pad=None, hflip=True)
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def paper_finetune(cls, **overrides: Any) -> "TrainConfig":
        """Fine-tuning on refined labels: SGD lr 1e-3, momentum 0.9, wd 1e-4, batch 128,
        50 epochs, lr x0.1 at [20, 40], no warm-up, crop + flip."""
        kw: Dict[str, Any] = dict(epochs=50, batch_size=128, lr=1e-3, momentum=0.9,
                                  weight_decay=1e-4, nesterov=False, milestones=[20, 40],
                                  gamma=0.1, warmup_epochs=0, augment_pad=None, hflip=True)
        kw.update(overrides)
        return cls(**kw)

    def pad_for(self, height: int) -> int:
        """Crop padding for images of this height (``augment_pad`` or ``height // 8``)."""
        return int(self.augment_pad) if self.augment_pad is not None else int(height) // 8


def lr_at(config: TrainConfig, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
    """Learning rate at 0-based ``epoch`` / ``step`` (of ``steps_per_epoch``).

    ``lr * gamma ** #(milestones <= epoch)``, times the linear warm-up factor
    ``(epoch * steps_per_epoch + step + 1) / (warmup_epochs * steps_per_epoch)`` while
    ``epoch < warmup_epochs``.
    """
    lr = config.lr * config.gamma ** sum(1 for m in config.milestones if m <= epoch)
    if epoch < config.warmup_epochs:
        spe = max(int(steps_per_epoch), 1)
        lr *= (epoch * spe + step + 1) / (config.warmup_epochs * spe)
    return float(lr)


# ------------------------------------------------------------------------------ augmentation
def augment_batch(x: torch.Tensor, *, pad: int, hflip: bool,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random crop with zero padding (per-sample offsets) + optional horizontal flip.

    ``x``: ``(B, C, H, W)`` of any dtype / device. Returns the same shape, dtype and device.
    The random draws are made on the CPU from ``generator`` (so results do not depend on the
    device). ``pad=0`` and ``hflip=False`` return ``x`` unchanged. A cropped result comes back
    in channels-last memory layout (what the models run fastest on).
    """
    if x.dim() != 4:
        raise InputError(f"augment_batch expects (B, C, H, W), got {tuple(x.shape)}")
    b, _, h, w = x.shape
    if pad > 0:
        offs = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)
        padded = F.pad(x, (pad, pad, pad, pad))                                 # zeros
        rows = offs[0][:, None] + torch.arange(h, device=x.device)[None, :]   # (B, H)
        cols = offs[1][:, None] + torch.arange(w, device=x.device)[None, :]   # (B, W)
        bidx = torch.arange(b, device=x.device)[:, None, None]
        nhwc = padded.permute(0, 2, 3, 1)                                       # (B, H+2p, W+2p, C)
        x = nhwc[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # channels_last
    if hflip:
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


# ----------------------------------------------------------------------------------- helpers
def sub_seed(seed: int, stream: int) -> int:
    """An independent 63-bit seed for ``stream`` derived from ``seed``."""
    return int(np.random.SeedSequence([int(seed) % (2**63), stream]).generate_state(1, np.uint64)[0]
               % (2**63))


def split_batches(perm: torch.Tensor, batch_size: int) -> List[torch.Tensor]:
    """``perm`` in mini-batches of ``batch_size``; a trailing batch of one joins the previous one."""
    chunks = list(torch.split(perm, batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:   # BatchNorm cannot train on one sample
        chunks[-2] = torch.cat([chunks[-2], chunks[-1]])
        chunks.pop()
    return chunks


def _num_steps(n: int, batch_size: int) -> int:
    steps = max(1, math.ceil(n / batch_size))
    if steps > 1 and n % batch_size == 1:
        steps -= 1
    return steps


# ---------------------------------------------------------------------------------- memory
def activation_bytes(model: nn.Module, size: Tuple[int, int], channels: int) -> int:
    """Bytes of the layer outputs of one ``size`` image through ``model`` (what a training step
    keeps for the backward pass): measured on a probe of at most 32x32 px, in eval mode, without
    gradients (nothing about the model changes), and scaled to ``size``."""
    h, w = int(size[0]), int(size[1])
    ph, pw = min(h, 32), min(w, 32)
    total = [0]

    def count(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            total[0] += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, int(channels), ph, pw, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return int(total[0] * (h * w) / (ph * pw))


def estimate_fit_bytes(model: nn.Module, size: Tuple[int, int], channels: int, batch_size: int) -> int:
    """Rough peak memory of one training step: a batch's layer outputs and their gradients."""
    return 2 * int(batch_size) * activation_bytes(model, size, channels)


def check_fit_memory(model: nn.Module, size: Tuple[int, int], channels: int, batch_size: int,
                     device: torch.device) -> None:
    """InputError before training when a step would need more memory than ``device`` has."""
    from ..validation import format_bytes

    need = estimate_fit_bytes(model, size, channels, batch_size)
    what = f"training on {size[0]}x{size[1]} px images in batches of {batch_size}"
    advice = "use a smaller image size (--image-size) or batch size"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if need > free:
            raise InputError(f"{what} needs about {format_bytes(need)} of GPU memory, more than the "
                             f"{format_bytes(free)} free on {device}; {advice}")
        return
    check_memory(need, what, advice)


# -------------------------------------------------------------------------------------- fit
#: ``on_epoch_end(epoch) -> (new training labels (N,) or None, extra history fields)``.
EpochEndHook = Callable[[int], Tuple[Optional[np.ndarray], Dict[str, Any]]]
#: ``(get, set)`` of the hooks' own state (tensors, numbers, lists), saved in fit's checkpoints.
HookState = Tuple[Callable[[], Dict[str, Any]], Callable[[Dict[str, Any]], None]]


@dataclass
class TrainResult:
    """Outcome of :func:`fit` / :func:`fine_tune`.

    Attributes:
        model: the trained model, holding the best-validation weights (the last epoch's when
            no validation set was given), in eval mode, on ``config.device``.
        best_epoch: 0-based epoch whose weights ``model`` holds.
        best_val_acc: validation accuracy of that epoch; ``None`` without a validation set.
        history: one dict per epoch: ``epoch`` (0-based), ``lr`` (at the epoch's last step),
            ``train_loss``, ``train_acc`` (running, on augmented batches), ``val_acc`` (or None).
        seconds: wall-clock training time.
    """

    model: nn.Module
    best_epoch: int
    best_val_acc: Optional[float]
    history: List[Dict[str, Any]]
    seconds: float = 0.0


def fit(model: nn.Module, images: np.ndarray, labels: np.ndarray, *,
        val_images: Optional[np.ndarray] = None, val_labels: Optional[np.ndarray] = None,
        config: Optional[TrainConfig] = None,
        normalize_from_data: bool = True, desc: str = "train",
        on_batch: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None,
        on_epoch_end: Optional[EpochEndHook] = None, hook_state: Optional[HookState] = None) -> TrainResult:
    """Train ``model`` in place with SGD + multistep lr + warm-up, keep the best-val weights.

    Args:
        model: an ``ImageClassifier`` (see :func:`synref.models.create_model`; pass a ``seed``
            there for reproducible initial weights).
        images: uint8 ``(N, H, W, C)``; labels: int ``(N,)`` in ``[0, model.num_classes)``.
        val_images / val_labels: optional validation set; the epoch with the highest
            validation accuracy wins (earliest on ties).
        config: :class:`TrainConfig` (default ``TrainConfig()``).
        normalize_from_data: set the model's normalisation to the training images' per-channel
            mean / std first (``fine_tune`` keeps the original model's instead).
        desc: progress bar label.
        on_batch: called after every optimiser step as ``on_batch(epoch, idx, logits)`` with the
            batch's sample indices (CPU int64) and its detached float logits.
        on_epoch_end: called after every training pass, before validation, as
            ``on_epoch_end(epoch) -> (new_labels or None, extra history fields)``; new labels
            (N,) replace the training labels from the next epoch on (label-correcting trainers
            such as PLC are built this way).
        hook_state: ``(get, set)`` of the hooks' own state; inside
            :func:`~synref.train.checkpoint.checkpoint_folder` it is checkpointed with the rest
            (hooks without it switch checkpoints off, as their state could not be restored).

    Inside :func:`~synref.train.checkpoint.checkpoint_folder` the whole training state is saved
    atomically after every epoch and a re-run of the same fit (same config, data and initial
    weights) continues after the last saved epoch, with the same result.
    """
    config = config if config is not None else TrainConfig()
    images = as_image_array(images)
    num_classes = int(getattr(model, "num_classes"))
    labels = as_labels(labels, num_classes, n=len(images))
    if len(images) < 2:
        raise InputError(f"images: need at least 2 training images, got {len(images)}")
    has_val = val_images is not None
    if has_val != (val_labels is not None):
        raise InputError("val_images and val_labels must be given together")
    if has_val:
        val_images = as_image_array(val_images, "val_images")
        val_labels = as_labels(val_labels, num_classes, n=len(val_images), what="val_labels")
        if len(val_images) == 0:
            raise InputError("val_images: empty validation set")
        if val_images.shape[1:] != images.shape[1:]:
            raise InputError(f"val_images are {val_images.shape[1:]}, training images "
                             f"{images.shape[1:]}")

    device = resolve_device(config.device, "train config")
    model.to(device=device, memory_format=torch.channels_last)   # ~1.3-2x faster convs on CPU
    check_fit_memory(model, images.shape[1:3], images.shape[-1], min(config.batch_size, len(images)), device)
    if normalize_from_data:
        mean, std = channel_stats(images)
        model.set_normalization(mean, std)

    n, h = len(images), images.shape[1]
    pad = config.pad_for(h)
    x_all = torch.from_numpy(np.ascontiguousarray(images)).to(device)   # uint8 NHWC
    y_all = torch.from_numpy(labels).to(device)
    g_order = torch.Generator().manual_seed(sub_seed(config.seed, 0))
    g_aug = torch.Generator().manual_seed(sub_seed(config.seed, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    steps_per_epoch = _num_steps(n, config.batch_size)
    use_amp = bool(config.amp) and device.type == "cuda"

    history: List[Dict[str, Any]] = []
    best_epoch, best_acc = -1, -1.0
    best_state: Optional[Dict[str, torch.Tensor]] = None
    hooked = on_batch is not None or on_epoch_end is not None
    ckpt = LoopCheckpoint("fit", config.to_dict(), images, labels, val_images, val_labels,
                          hash_state_dict(model.state_dict()), hooked) \
        if (checkpointing() and (not hooked or hook_state is not None)) else None
    start_epoch = 0
    saved = ckpt.load() if ckpt is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        g_order.set_state(saved["g_order"])
        g_aug.set_state(saved["g_aug"])
        y_all = saved["labels"].to(device)
        history = json.loads(saved["history"])
        best_epoch, best_acc = int(saved["best_epoch"]), float(saved["best_acc"])
        best_state = {k: v.to(device) for k, v in saved["best_state"].items()} or None
        if hook_state is not None:
            hook_state[1](saved["hooks"])
        start_epoch = int(saved["epoch"]) + 1
    t0 = time.perf_counter()
    bar = progress_bar(range(start_epoch, config.epochs), desc=desc, unit="epoch", initial=start_epoch,
                       total=config.epochs)
    for epoch in bar:
        model.train()
        perm = torch.randperm(n, generator=g_order)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        lr = config.lr
        for step, batch_idx in enumerate(split_batches(perm, config.batch_size)):
            lr = lr_at(config, epoch, step, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = batch_idx.to(device)
            xb = augment_batch(x_all[idx].permute(0, 3, 1, 2), pad=pad, hflip=config.hflip,
                               generator=g_aug)
            yb = y_all[idx]
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                logits = model(xb)
            logits = logits.float()
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_batch is not None:
                on_batch(epoch, batch_idx, logits.detach())
            loss_sum += loss.detach().double() * len(idx)
            correct += (logits.detach().argmax(1) == yb).sum()
        train_loss = float(loss_sum) / n
        train_acc = float(correct) / n
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"training diverged at epoch {epoch} (loss {train_loss}); lower the lr")
        extra: Dict[str, Any] = {}
        if on_epoch_end is not None:
            new_labels, extra = on_epoch_end(epoch)
            if new_labels is not None:
                y_all = torch.from_numpy(as_labels(new_labels, num_classes, n=n, what="new labels")).to(device)
        val_acc = evaluate_accuracy(model, val_images, val_labels) if has_val else None
        history.append({"epoch": epoch, "lr": lr, "train_loss": train_loss,
                        "train_acc": train_acc, "val_acc": val_acc, **extra})
        if has_val and val_acc is not None and val_acc > best_acc:
            best_epoch, best_acc = epoch, val_acc
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if ckpt is not None:
            ckpt.save({"epoch": epoch, "model": tensor_state(model.state_dict()),
                       "optimizer": optimizer.state_dict(), "g_order": g_order.get_state(),
                       "g_aug": g_aug.get_state(), "labels": y_all.cpu(), "history": json.dumps(history),
                       "best_epoch": best_epoch, "best_acc": best_acc, "best_state": best_state or {},
                       "hooks": hook_state[0]() if hook_state is not None else {}})
        postfix = {"loss": f"{train_loss:.3f}", "acc": f"{train_acc:.3f}"}
        if has_val:
            postfix["val"] = f"{val_acc:.3f}"
            postfix["best"] = f"{best_acc:.3f}@{best_epoch}"
        bar.set_postfix(postfix, refresh=False)
    bar.close()

    if has_val and best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = config.epochs - 1
    model.eval()
    return TrainResult(model=model, best_epoch=best_epoch,
                       best_val_acc=best_acc if has_val else None, history=history,
                       seconds=time.perf_counter() - t0)


def fine_tune(model: nn.Module, images: np.ndarray, labels: np.ndarray, *,
              val_images: Optional[np.ndarray] = None, val_labels: Optional[np.ndarray] = None,
              config: Optional[TrainConfig] = None, num_classes: Optional[int] = None,
              desc: str = "fine-tune") -> TrainResult:
    """Fine-tune a copy of ``model``: re-initialise its final layer (seeded from
    ``config.seed``; optionally with ``num_classes`` outputs), keep the backbone weights and
    the original normalisation, then :func:`fit` with ``config`` (default
    :meth:`TrainConfig.paper_finetune`). ``model`` itself is not modified."""
    config = config if config is not None else TrainConfig.paper_finetune()
    tuned = copy.deepcopy(model)
    tuned.reset_classifier(num_classes,
                           generator=torch.Generator().manual_seed(sub_seed(config.seed, 2)))
    return fit(tuned, images, labels, val_images=val_images, val_labels=val_labels,
               config=config, normalize_from_data=False, desc=desc)


# -------------------------------------------------------------------------------- cross-fit
@dataclass
class CrossFitResult:
    """Out-of-sample outputs of :func:`cross_fit`.

    Attributes:
        pred_probs: float32 ``(N, num_classes)``; row i from the model not trained on sample i.
        features: float32 ``(N, feature_dim)`` penultimate features, same rule.
        fold_of: int64 ``(N,)``: the fold in which sample i was held out.
        histories: per-fold training histories.
        extra_pred_probs: float32 ``(folds, M, num_classes)``: every fold model's softmax on
            ``extra_images`` (e.g. anchors, which each fold's feature space must embed too).
        extra_features: float32 ``(folds, M, feature_dim)``, same rule.
    """

    pred_probs: np.ndarray
    features: np.ndarray
    fold_of: np.ndarray
    histories: List[List[Dict[str, Any]]] = field(default_factory=list)
    extra_pred_probs: Optional[np.ndarray] = None
    extra_features: Optional[np.ndarray] = None


def fold_splits(labels: np.ndarray, folds: int, seed: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    counts = np.bincount(labels)
    counts = counts[counts > 0]
    if counts.size and counts.min() >= folds:
        splitter: Any = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed % (2**32))
        return list(splitter.split(np.zeros(len(labels)), labels))
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed % (2**32))
    return list(splitter.split(np.zeros(len(labels))))


def cross_fit(images: np.ndarray, labels: np.ndarray, *, model_name: str, num_classes: int,
              in_channels: Optional[int] = None, config: Optional[TrainConfig] = None,
              folds: int = 4, seed: int = 0,
              val_images: Optional[np.ndarray] = None, val_labels: Optional[np.ndarray] = None,
              batch_size: int = 512, extra_images: Optional[np.ndarray] = None) -> CrossFitResult:
    """K-fold out-of-sample softmax and features.

    Splits with ``StratifiedKFold`` (shuffled, ``random_state=seed``) when every present class
    has at least ``folds`` samples, else ``KFold``. Fold k trains a fresh
    ``create_model(model_name, seed=config.seed + k)`` with ``config.seed + k`` on the other
    folds (normalisation from those folds' images), then predicts the held-out fold. An optional
    validation set (disjoint from ``images``) picks each fold's best epoch. ``extra_images``
    (M, H, W, C) are passed through every fold model (see ``CrossFitResult.extra_*``).
    """
    config = config if config is not None else TrainConfig()
    images = as_image_array(images)
    labels = as_labels(labels, int(num_classes), n=len(images))
    in_channels = images.shape[-1] if in_channels is None else int(in_channels)
    if in_channels != images.shape[-1]:
        raise InputError(f"in_channels={in_channels} but images have {images.shape[-1]} channels")
    if not 2 <= folds <= len(images) // 2:
        raise InputError(f"folds must be in [2, {len(images) // 2}] for {len(images)} images, "
                         f"got {folds}")
    splits = fold_splits(labels, folds, seed)
    pred_probs: Optional[np.ndarray] = None
    features: Optional[np.ndarray] = None
    fold_of = np.full(len(images), -1, np.int64)
    histories: List[List[Dict[str, Any]]] = []
    extra_p: List[np.ndarray] = []
    extra_f: List[np.ndarray] = []
    if extra_images is not None:
        extra_images = as_image_array(extra_images, "extra_images")
    bar = progress_bar(range(folds), desc="cross-fit", unit="fold")
    for k in bar:
        train_idx, held_idx = splits[k]
        fold_cfg = dataclasses.replace(config, seed=config.seed + k)
        model = create_model(model_name, num_classes=num_classes, in_channels=in_channels,
                             seed=fold_cfg.seed)
        res = fit(model, images[train_idx], labels[train_idx], val_images=val_images,
                  val_labels=val_labels, config=fold_cfg, desc=f"fold {k + 1}/{folds}")
        p, f = proba_and_features(res.model, images[held_idx], batch_size)
        if pred_probs is None or features is None:
            pred_probs = np.zeros((len(images), p.shape[1]), np.float32)
            features = np.zeros((len(images), f.shape[1]), np.float32)
        pred_probs[held_idx] = p
        features[held_idx] = f
        fold_of[held_idx] = k
        histories.append(res.history)
        if extra_images is not None:
            ep, ef = proba_and_features(res.model, extra_images, batch_size)
            extra_p.append(ep)
            extra_f.append(ef)
        del model, res
    bar.close()
    assert pred_probs is not None and features is not None and (fold_of >= 0).all()
    return CrossFitResult(pred_probs=pred_probs, features=features, fold_of=fold_of,
                          histories=histories,
                          extra_pred_probs=np.stack(extra_p) if extra_p else None,
                          extra_features=np.stack(extra_f) if extra_f else None)
