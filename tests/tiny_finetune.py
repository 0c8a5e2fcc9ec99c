"""A tiny stand-in backbone for :func:`synref.train.finetune.crossfit_finetune` tests (the
EfficientNet-Lite ones are real ImageNet networks: correct but slow on tiny test data), and a
small image problem it can learn.

    from tiny_finetune import register_tiny_backbone, blob_problem
    register_tiny_backbone()          # FinetuneConfig(backbone="tiny-test") now builds it
    seen = posterior_evidence(monkeypatch)   # every Evidence the posterior refiner reads from now on
"""
from __future__ import annotations

from typing import Any, List, Tuple

import numpy as np
import torch
from torch import nn

from synref.train.finetune import BACKBONES

TINY = "tiny-test"


class TinyBackbone(nn.Module):
    """Two strided conv + BatchNorm + ReLU layers, global average pool: ``(B, 3, S, S)`` ->
    ``(B, 16)``; its "pretrained" weights are the same every time (seed 0)."""

    feature_dim = 16

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=(2, 3))


def register_tiny_backbone() -> str:
    """Make ``FinetuneConfig(backbone="tiny-test")`` build :class:`TinyBackbone`; returns its name."""
    BACKBONES[TINY] = TinyBackbone
    return TINY


def blob_images(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """uint8 ``(N, size, size, 3)``: class c is a bright square in colour channel c % 3 at a
    position set by c // 3, on noise."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    images = rng.integers(0, 60, (n, size, size, 3)).astype(np.uint8)
    half = size // 2
    for i, c in enumerate(labels):
        r0 = (int(c) // 3) * half // 2
        images[i, r0:r0 + half, r0:r0 + half, int(c) % 3] = 220
    return images


def blob_problem(n: int = 48, m_per_class: int = 8, c: int = 3, size: int = 32,
                 seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images (n, S, S, 3), labels (n,), anchors (c * m_per_class, S, S, 3), anchor labels)."""
    labels = np.arange(n) % c
    anchor_labels = np.repeat(np.arange(c), m_per_class)
    return blob_images(labels, size, seed), labels, blob_images(anchor_labels, size, seed + 1), anchor_labels


def posterior_evidence(monkeypatch: Any) -> List[Any]:
    """The :class:`~synref.evidence.Evidence` of every posterior refinement from now on, in order
    (``monkeypatch``: pytest's fixture; the refinements run as before)."""
    from synref.refiners import posterior

    seen: List[Any] = []
    real = posterior.PosteriorRefiner.refine

    def spy(self: Any, evidence: Any, **kwargs: Any) -> Any:
        seen.append(evidence)
        return real(self, evidence, **kwargs)

    monkeypatch.setattr(posterior.PosteriorRefiner, "refine", spy)
    return seen
