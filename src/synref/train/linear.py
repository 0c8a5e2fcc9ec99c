"""A linear softmax head on frozen features, and its k-fold out-of-sample ``pred_probs``.

When a good frozen feature space exists (a pretrained encoder), the cross-fitted softmax that
synref's refinement needs does not require training a network per fold: a multinomial
logistic regression on the features (full-batch Adam, weight decay) takes seconds. Features are
L2-normalised and scaled by ``scale`` (a fixed inverse temperature), so one learning rate works
for any encoder.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

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


def _normalized(features: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # read-only memory maps: only read here (normalize copies)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    if x.ndim != 2:
        raise InputError(f"features: expected (N, D), got shape {tuple(x.shape)}")
    return F.normalize(x, dim=1)


def fit_linear_head(features: np.ndarray, labels: np.ndarray, num_classes: int,
                    config: Optional[LinearHeadConfig] = None) -> torch.nn.Linear:
    """A ``Linear(D, num_classes)`` (weights already multiplied by ``config.scale``) fitted to
    ``labels`` (N,) on ``features`` (N, D). Deterministic (zero initialisation, full batch)."""
    cfg = config or LinearHeadConfig()
    x = _normalized(features)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if len(y) != len(x):
        raise InputError(f"labels: {len(y)} for {len(x)} feature rows")
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=cfg.lr)
    for _ in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(cfg.scale * (x @ w) + b, y) + cfg.weight_decay * (w ** 2).sum()
        loss.backward()
        opt.step()
    head = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(cfg.scale * w.detach().T)
        head.bias.copy_(b.detach())
    return head


def cross_fit_linear(features: np.ndarray, labels: np.ndarray, *, num_classes: int, folds: int = 4,
                     seed: int = 0, config: Optional[LinearHeadConfig] = None) -> np.ndarray:
    """Out-of-sample softmax ``(N, num_classes)`` float32: row i from the head fitted on the
    other folds (the same fold split as :func:`synref.train.cross_fit`)."""
    labels = np.asarray(labels, dtype=np.int64)
    x = _normalized(features)
    if not 2 <= folds <= len(labels) // 2:
        raise InputError(f"folds must be in [2, {len(labels) // 2}] for {len(labels)} samples, got {folds}")
    out = np.zeros((len(labels), num_classes), np.float32)
    for train_idx, held_idx in fold_splits(labels, folds, seed):
        head = fit_linear_head(x[train_idx].numpy(), labels[train_idx], num_classes, config)
        with torch.no_grad():
            out[held_idx] = torch.softmax(head(x[held_idx]), dim=1).numpy()
    return out
