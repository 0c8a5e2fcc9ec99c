"""SimCLR-style self-supervised encoder trained on unlabelled images (plain torch).

The point: a feature space that never saw the (noisy) labels, in which real images can be
compared with synthetic-anchor prototypes (see :mod:`synref.refiners`).

* :class:`SSLConfig` - hyper-parameters (``to_dict`` / ``from_dict``).
* :func:`ssl_augment` - batched, per-sample random augmentation suited to small images
  (8x8 digits up to 32x32 CIFAR): random resized crop + small rotation / translation (one
  affine per sample through ``F.affine_grid`` / ``F.grid_sample``), optional horizontal flip,
  brightness / contrast jitter, gaussian blur, gaussian noise.
* :func:`nt_xent_loss` - the normalised-temperature cross-entropy of SimCLR.
* :func:`train_simclr` - train a :func:`synref.models.create_model` backbone with a small MLP
  projection head (used only during training) and return the backbone; its
  ``.features(x)`` is the representation.
* features: :func:`synref.models.extract_features` of the returned backbone.
* :func:`knn_cv_accuracy` - how well the space separates the classes (k-NN, cross-validated);
  :func:`synref.refiners.prototypes.prototype_accuracy` is the anchors' view of it.

Determinism: initial weights come from ``create_model(seed=config.seed)``, the head and every
random draw (order, augmentation) from ``torch.Generator`` s seeded from ``config.seed``; on CPU
the same seed gives bit-identical weights.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigMixin
from ..device import resolve_device
from ..errors import InputError
from ..models import ImageClassifier, channel_stats, create_model
from ..progress import progress as progress_bar
from ..validation import as_image_array
from .checkpoint import LoopCheckpoint, checkpointing, tensor_state
from .loop import split_batches, sub_seed

__all__ = [
    "SSLConfig",
    "ProjectionHead",
    "ssl_augment",
    "nt_xent_loss",
    "train_simclr",
    "knn_cv_accuracy",
]


# ---------------------------------------------------------------------------------- config
@dataclass
class SSLConfig(ConfigMixin):
    """SimCLR hyper-parameters.

    Optimisation: Adam(W) with ``lr``, ``weight_decay``, linear warm-up over ``warmup_epochs``
    then cosine decay to 0; NT-Xent with ``temperature``; head
    ``Linear(D, hidden_dim)-BN-ReLU-Linear(hidden_dim, projection_dim)``.

    Augmentation (per sample, per view):
        crop_scale: range of the crop's area fraction (random resized crop).
        aspect: max log-ratio jitter of the crop's aspect (``exp(U(-aspect, aspect))``).
        translate: extra shift, as a fraction of the image side, on top of the crop offset.
        rotate: max rotation in degrees.
        hflip: random horizontal flip (off for digits / text).
        brightness, contrast: additive brightness ``U(-b, b)`` and contrast factor
            ``U(1-c, 1+c)`` (about the per-image mean), both in the [0, 1] pixel scale.
        blur_prob, blur_sigma: probability of a 3x3 gaussian blur with sigma ``U(blur_sigma)``.
        noise_std: gaussian pixel noise with std ``U(0, noise_std)``.
    """

    config_name = "ssl config"

    epochs: int = 80
    batch_size: int = 256
    lr: float = 2e-3
    temperature: float = 1.0
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    projection_dim: int = 64
    hidden_dim: int = 128
    crop_scale: Tuple[float, float] = (0.6, 1.0)
    aspect: float = 0.15
    translate: float = 0.1
    rotate: float = 12.0
    hflip: bool = False
    brightness: float = 0.2
    contrast: float = 0.3
    blur_prob: float = 0.3
    blur_sigma: Tuple[float, float] = (0.3, 1.0)
    noise_std: float = 0.05
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.crop_scale = (float(self.crop_scale[0]), float(self.crop_scale[1]))
        self.blur_sigma = (float(self.blur_sigma[0]), float(self.blur_sigma[1]))
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 2, "must be >= 2"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "must be > 0"),
            ("temperature", self.temperature > 0, "must be > 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("warmup_epochs", self.warmup_epochs >= 0, "must be >= 0"),
            ("projection_dim", self.projection_dim >= 1, "must be >= 1"),
            ("hidden_dim", self.hidden_dim >= 1, "must be >= 1"),
            ("crop_scale", 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
             "must be 0 < lo <= hi <= 1"),
            ("aspect", self.aspect >= 0, "must be >= 0"),
            ("translate", self.translate >= 0, "must be >= 0"),
            ("rotate", self.rotate >= 0, "must be >= 0"),
            ("brightness", self.brightness >= 0, "must be >= 0"),
            ("contrast", 0 <= self.contrast < 1, "must be in [0, 1)"),
            ("blur_prob", 0 <= self.blur_prob <= 1, "must be in [0, 1]"),
            ("blur_sigma", 0 < self.blur_sigma[0] <= self.blur_sigma[1], "must be 0 < lo <= hi"),
            ("noise_std", self.noise_std >= 0, "must be >= 0"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise InputError(f"ssl config: {name}={getattr(self, name)!r} {why}")


# ---------------------------------------------------------------------------- augmentation
def _uniform(n: int, lo: float, hi: float, g: Optional[torch.Generator]) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def ssl_augment(x: torch.Tensor, config: SSLConfig,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One random view of each image.

    ``x``: ``(B, C, H, W)`` uint8 (0..255) or float in ``[0, 1]``. Returns float32
    ``(B, C, H, W)`` in ``[0, 1]`` on ``x``'s device. All random draws are made on the CPU from
    ``generator`` (results do not depend on the device).
    """
    if x.dim() != 4:
        raise InputError(f"ssl_augment expects (B, C, H, W), got {tuple(x.shape)}")
    g = generator
    b, c, h, w = x.shape
    dev = x.device
    x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()

    # random resized crop + rotation + translation: output coords -> input coords (theta)
    area = _uniform(b, config.crop_scale[0], config.crop_scale[1], g)
    logr = _uniform(b, -config.aspect, config.aspect, g)
    sx = torch.sqrt(area * torch.exp(logr)).clamp(max=1.0)      # half-extent fractions
    sy = torch.sqrt(area / torch.exp(logr)).clamp(max=1.0)
    ang = _uniform(b, -config.rotate, config.rotate, g) * (math.pi / 180.0)
    tx = (1.0 - sx + config.translate) * _uniform(b, -1.0, 1.0, g)
    ty = (1.0 - sy + config.translate) * _uniform(b, -1.0, 1.0, g)
    if config.hflip:
        flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    else:
        flip = torch.ones(b)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([
        torch.stack([sx * cos * flip, -sy * sin, tx], 1),
        torch.stack([sx * sin * flip, sy * cos, ty], 1),
    ], 1).to(dev)                                                      # (B, 2, 3)
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    x = F.grid_sample(x.contiguous(), grid, mode="bilinear", padding_mode="zeros",
                      align_corners=False)

    # gaussian blur (3x3, per-sample sigma) on a random subset
    if config.blur_prob > 0:
        sig = _uniform(b, config.blur_sigma[0], config.blur_sigma[1], g)
        use = (torch.rand(b, generator=g) < config.blur_prob).float()
        k1 = torch.exp(-torch.tensor([1.0, 0.0, 1.0])[None, :] / (2 * sig[:, None] ** 2))
        k1 = k1 / k1.sum(1, keepdim=True)                              # (B, 3)
        ident = torch.tensor([0.0, 1.0, 0.0])[None, :]
        k1 = use[:, None] * k1 + (1 - use[:, None]) * ident
        k2 = (k1[:, :, None] * k1[:, None, :]).to(dev)                 # (B, 3, 3)
        weight = k2[:, None].repeat_interleave(c, 0)                   # (B*C, 1, 3, 3)
        x = F.conv2d(F.pad(x.reshape(1, b * c, h, w), (1, 1, 1, 1), mode="replicate"),
                     weight, groups=b * c).reshape(b, c, h, w)

    # brightness / contrast jitter about the per-image mean
    if config.contrast > 0 or config.brightness > 0:
        cf = _uniform(b, 1.0 - config.contrast, 1.0 + config.contrast, g).to(dev)
        br = _uniform(b, -config.brightness, config.brightness, g).to(dev)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * cf.view(-1, 1, 1, 1) + mean + br.view(-1, 1, 1, 1)

    if config.noise_std > 0:
        std = _uniform(b, 0.0, config.noise_std, g).view(-1, 1, 1, 1)
        x = x + (std * torch.randn(x.shape, generator=g)).to(dev)
    return x.clamp_(0.0, 1.0).contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------- model
class ProjectionHead(nn.Module):
    """``Linear(D, hidden)-BN-ReLU-Linear(hidden, out)``: used only during SSL training."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim),
                                 nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: ``z1``, ``z2`` ``(B, d)`` projections of two views; mean over 2B anchors."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise InputError(f"nt_xent_loss: views must be (B, d) alike, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = (z @ z.t()) / float(temperature)
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


def _lr_at(config: SSLConfig, step: int, total: int, steps_per_epoch: int) -> float:
    warm = config.warmup_epochs * steps_per_epoch
    if step < warm:
        return config.lr * (step + 1) / warm
    t = (step - warm) / max(total - warm, 1)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * t))


def train_simclr(images: np.ndarray, *, model_name: str = "small_cnn",
                 config: Optional[SSLConfig] = None, extra_images: Optional[np.ndarray] = None,
                 desc: str = "simclr") -> ImageClassifier:
    """Train a SimCLR encoder on unlabelled images and return the backbone.

    Args:
        images: uint8 ``(N, H, W, C)`` (``(N, H, W)`` is read as one channel); labels unused.
        model_name: a :func:`synref.models.create_model` name (built with one dummy class).
        config: :class:`SSLConfig` (default ``SSLConfig()``).
        extra_images: optional uint8 ``(M, H, W, C)`` added to the unlabelled pool (e.g. the
            synthetic anchors, so both domains shape the space). Same H, W, C as ``images``.
    Returns:
        the :class:`~synref.models.ImageClassifier` in eval mode, normalisation set from the
        pool's per-channel statistics; ``model.features(x)`` is the representation (its
        ``classifier`` is an untrained 1-output stub). ``model.ssl_history`` holds one dict per
        epoch (``epoch``, ``lr``, ``loss``) and ``model.ssl_seconds`` the training time.
    """
    config = config if config is not None else SSLConfig()
    images = as_image_array(images)
    if extra_images is not None:
        extra_images = as_image_array(extra_images, "extra_images")
        if extra_images.shape[1:] != images.shape[1:]:
            raise InputError(f"extra_images are {extra_images.shape[1:]}, images "
                             f"{images.shape[1:]}")
        pool = np.concatenate([images, extra_images])
    else:
        pool = images
    if len(pool) < 2:
        raise InputError(f"images: need at least 2 images for SimCLR, got {len(pool)}")
    device = resolve_device(config.device, "ssl config")

    model = create_model(model_name, num_classes=1, in_channels=pool.shape[-1], seed=config.seed)
    mean, std = channel_stats(pool)
    model.set_normalization(mean, std)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sub_seed(config.seed, 10))
        head = ProjectionHead(model.feature_dim, config.hidden_dim, config.projection_dim)
    model.to(device=device, memory_format=torch.channels_last)
    head.to(device)
    params = [p for n_, p in model.named_parameters() if not n_.startswith("classifier.")]
    params += list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    n = len(pool)
    x_all = torch.from_numpy(np.ascontiguousarray(pool)).to(device)     # uint8 NHWC
    g_order = torch.Generator().manual_seed(sub_seed(config.seed, 0))
    g_aug = torch.Generator().manual_seed(sub_seed(config.seed, 1))
    bs = min(config.batch_size, n)
    steps_per_epoch = len(split_batches(torch.arange(n), bs))
    total = config.epochs * steps_per_epoch
    history: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    step, start_epoch = 0, 0
    ckpt = LoopCheckpoint("simclr", model_name, config.to_dict(), pool) if checkpointing() else None
    saved = ckpt.load() if ckpt is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        head.load_state_dict(saved["head"])
        optimizer.load_state_dict(saved["optimizer"])
        g_order.set_state(saved["g_order"])
        g_aug.set_state(saved["g_aug"])
        step, history, start_epoch = int(saved["step"]), json.loads(saved["history"]), int(saved["epoch"]) + 1
    bar = progress_bar(range(start_epoch, config.epochs), desc=desc, unit="epoch", initial=start_epoch,
                       total=config.epochs)
    for epoch in bar:
        model.train()
        head.train()
        perm = torch.randperm(n, generator=g_order)
        loss_sum, count, lr = 0.0, 0, config.lr
        for idx in split_batches(perm, bs):
            lr = _lr_at(config, step, total, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            xb = x_all[idx.to(device)].permute(0, 3, 1, 2)
            v1 = ssl_augment(xb, config, g_aug)
            v2 = ssl_augment(xb, config, g_aug)
            z = head(model.features(torch.cat([v1, v2])))
            loss = nt_xent_loss(z[:len(idx)], z[len(idx):], config.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(idx)
            count += len(idx)
            step += 1
        ep_loss = loss_sum / max(count, 1)
        if not math.isfinite(ep_loss):
            raise FloatingPointError(f"SimCLR diverged at epoch {epoch} (loss {ep_loss}); "
                                     "lower the lr")
        history.append({"epoch": epoch, "lr": lr, "loss": ep_loss})
        if ckpt is not None:
            ckpt.save({"epoch": epoch, "step": step, "model": tensor_state(model.state_dict()),
                       "head": tensor_state(head.state_dict()), "optimizer": optimizer.state_dict(),
                       "g_order": g_order.get_state(), "g_aug": g_aug.get_state(), "history": json.dumps(history)})
        bar.set_postfix({"loss": f"{ep_loss:.3f}"}, refresh=False)
    bar.close()
    model.eval()
    model.ssl_history = history            # type: ignore[attr-defined]
    model.ssl_seconds = time.perf_counter() - t0   # type: ignore[attr-defined]
    return model


# ------------------------------------------------------------------------------ evaluation
def knn_cv_accuracy(features: np.ndarray, labels: np.ndarray, *, k: int = 10, folds: int = 5,
                    seed: int = 0) -> float:
    """Mean accuracy of a cosine k-NN classifier over stratified ``folds``-fold CV."""
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    feats = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels)
    accs = []
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for tr, te in skf.split(feats, labels):
        clf = KNeighborsClassifier(n_neighbors=k, metric="cosine").fit(feats[tr], labels[tr])
        accs.append(float(np.mean(clf.predict(feats[te]) == labels[te])))
    return float(np.mean(accs))
