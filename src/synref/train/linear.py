"""A linear softmax head on frozen features, and its k-fold out-of-sample ``pred_probs``.

When a good frozen feature space exists (a pretrained encoder), the cross-fitted softmax that
synref's refinement needs does not require training a network per fold: a multinomial
logistic regression on the features (full-batch Adam, weight decay) takes seconds. Features are
L2-normalised and scaled by ``scale`` (a fixed inverse temperature), so one learning rate works
for any encoder.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..arrays import as_tensor, l2_normalize
from ..config import ConfigMixin
from ..errors import InputError
from .loop import fold_splits

__all__ = ["LinearHeadConfig", "fit_linear_head", "cross_fit_linear"]


@dataclass
class LinearHeadConfig(ConfigMixin):
    """``steps`` full-batch Adam steps at ``lr`` with L2 penalty ``weight_decay`` on the weights;
    logits ``= scale * normalize(x) @ W + b``."""

    config_name = "linear head config"

    steps: int = 100
    lr: float = 0.01
    weight_decay: float = 1e-4
    scale: float = 10.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.weight_decay < 0 or self.scale <= 0:
            raise InputError(f"{self.config_name}: need steps >= 1, lr > 0, weight_decay >= 0, scale > 0; "
                             f"got {self}")


def _unit_tensor(features: np.ndarray) -> torch.Tensor:
    """Unit rows as a float32 tensor: a view of ``features`` when its rows already are unit
    (the encoders' output, memory-mapped), else one normalised copy."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise InputError(f"features: expected (N, D), got shape {tuple(x.shape)}")
    return as_tensor(l2_normalize(x))


def _fit_heads(x: torch.Tensor, labels: torch.Tensor, member: torch.Tensor, num_classes: int,
               cfg: LinearHeadConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """K heads at once: head k is fitted on the rows with ``member[:, k]`` (N, K) set, exactly as
    if fitted alone (Adam is per parameter and the heads share none), with one pass over ``x``
    (N, D) per step and no copy of its rows. Returns W (D, K, C) (scaled) and b (K, C)."""
    n, k = member.shape
    w = torch.zeros(x.shape[1], k * num_classes, requires_grad=True)
    b = torch.zeros(k * num_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=cfg.lr)
    counts = member.sum(dim=0).clamp_min(1.0)
    for _ in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        logits = (cfg.scale * (x @ w) + b).view(n, k, num_classes)
        nll = F.cross_entropy(logits.transpose(1, 2), labels[:, None].expand(n, k), reduction="none")
        loss = ((nll * member).sum(dim=0) / counts).sum() + cfg.weight_decay * (w ** 2).sum()
        loss.backward()
        opt.step()
    return (cfg.scale * w.detach()).view(-1, k, num_classes), b.detach().view(k, num_classes)


def fit_linear_head(features: np.ndarray, labels: np.ndarray, num_classes: int,
                    config: Optional[LinearHeadConfig] = None) -> torch.nn.Linear:
    """A ``Linear(D, num_classes)`` (weights already multiplied by ``config.scale``) fitted to
    ``labels`` (N,) on ``features`` (N, D). Deterministic (zero initialisation, full batch)."""
    cfg = config or LinearHeadConfig()
    x = _unit_tensor(features)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if len(y) != len(x):
        raise InputError(f"labels: {len(y)} for {len(x)} feature rows")
    w, b = _fit_heads(x, y, torch.ones(len(y), 1), num_classes, cfg)
    head = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(w[:, 0].T)
        head.bias.copy_(b[0])
    return head


def cross_fit_linear(features: np.ndarray, labels: np.ndarray, *, num_classes: int, folds: int = 4,
                     seed: int = 0, config: Optional[LinearHeadConfig] = None) -> np.ndarray:
    """Out-of-sample softmax ``(N, num_classes)`` float32: row i from the head fitted on the
    other folds (the same fold split as :func:`synref.train.cross_fit`). The fold heads are
    fitted together in one pass over the features per step (:func:`_fit_heads`)."""
    labels = np.asarray(labels, dtype=np.int64)
    x = _unit_tensor(features)
    if len(labels) != len(x):
        raise InputError(f"labels: {len(labels)} for {len(x)} feature rows")
    if not 2 <= folds <= len(labels) // 2:
        raise InputError(f"folds must be in [2, {len(labels) // 2}] for {len(labels)} samples, got {folds}")
    splits = list(fold_splits(labels, folds, seed))
    member = torch.zeros(len(labels), len(splits))
    for k, (train_idx, _) in enumerate(splits):
        member[torch.as_tensor(train_idx), k] = 1.0
    w, b = _fit_heads(x, torch.as_tensor(labels), member, num_classes, config or LinearHeadConfig())
    out = np.zeros((len(labels), num_classes), np.float32)
    with torch.no_grad():
        for k, (_, held_idx) in enumerate(splits):
            held = torch.as_tensor(held_idx)
            out[held_idx] = torch.softmax(x[held] @ w[:, k] + b[k], dim=1).numpy()
    return out
