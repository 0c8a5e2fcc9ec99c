"""Running a classifier: batched, eval-mode, no-grad inference over uint8 ``(N, H, W, C)`` images.

``predict_logits`` / ``predict_proba`` / ``extract_features`` / ``proba_and_features`` /
``evaluate_accuracy``, and ``channel_stats`` (the per-channel normalisation a model is given).
"""
from __future__ import annotations

from typing import Any, Callable, List, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..validation import as_image_array

__all__ = ["channel_stats", "model_device", "infer", "predict_logits", "predict_proba", "extract_features",
           "proba_and_features", "evaluate_accuracy"]


def channel_stats(images: np.ndarray, chunk: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 ``(N, H, W, C)`` images in the ``[0, 1]`` scale.

    Computed in float64 in chunks (no full float copy). A constant channel gets std 1.
    """
    images = as_image_array(images)
    c = images.shape[-1]
    s = np.zeros(c, np.float64)
    ss = np.zeros(c, np.float64)
    count = 0
    for i in range(0, len(images), chunk):
        block = images[i:i + chunk].reshape(-1, c).astype(np.float64) / 255.0
        s += block.sum(0)
        ss += np.square(block).sum(0)
        count += block.shape[0]
    if count == 0:
        raise InputError("images: cannot compute statistics of an empty set")
    mean = s / count
    var = np.maximum(ss / count - mean ** 2, 0.0)
    std = np.sqrt(var)
    std[std < 1e-6] = 1.0
    return mean, std


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@torch.no_grad()
def infer(model: nn.Module, images: Any, batch_size: int,
           heads: Callable[[nn.Module, torch.Tensor], Tuple[torch.Tensor, ...]]
           ) -> Tuple[np.ndarray, ...]:
    """Eval-mode, no-grad batched inference; ``heads`` maps a uint8 NCHW batch to outputs."""
    images = as_image_array(images)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model)
    was_training = model.training
    model.eval()
    outs: List[List[np.ndarray]] = []
    try:
        starts = range(0, len(images), batch_size) if len(images) else [0]
        for i in starts:
            xb = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(device)
            res = heads(model, xb.permute(0, 3, 1, 2))
            if not outs:
                outs = [[] for _ in res]
            for acc, r in zip(outs, res):
                acc.append(r.float().cpu().numpy())
    finally:
        model.train(was_training)
    return tuple(np.concatenate(acc).astype(np.float32, copy=False) for acc in outs)


def predict_logits(model: nn.Module, images: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Logits ``(N, num_classes)`` float32 (eval mode, no grad, batched)."""
    return infer(model, images, batch_size, lambda m, x: (m(x),))[0]


def predict_proba(model: nn.Module, images: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Softmax probabilities ``(N, num_classes)`` float32."""
    return infer(model, images, batch_size, lambda m, x: (torch.softmax(m(x).float(), 1),))[0]


def extract_features(model: nn.Module, images: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Global-pooled penultimate features ``(N, feature_dim)`` float32 (``model.features``)."""
    return infer(model, images, batch_size, lambda m, x: (m.features(x),))[0]


def proba_and_features(model: nn.Module, images: np.ndarray, batch_size: int = 512
                        ) -> Tuple[np.ndarray, np.ndarray]:
    def heads(m: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        f = m.features(x)
        return torch.softmax(m.classifier(f).float(), 1), f
    p, f = infer(model, images, batch_size, heads)
    return p, f


def evaluate_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, *,
                      batch_size: int = 512) -> float:
    """Top-1 accuracy in ``[0, 1]`` of ``argmax(logits)`` against ``labels``."""
    images = as_image_array(images)
    labels = np.asarray(labels).astype(np.int64)
    if len(labels) != len(images) or len(labels) == 0:
        raise InputError(f"evaluate_accuracy: {len(images)} images but {len(labels)} labels")
    logits = predict_logits(model, images, batch_size=batch_size)
    return float(np.mean(logits.argmax(1) == labels))
