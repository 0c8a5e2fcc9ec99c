"""Trainers: everything that fits a network or a head on (noisy or refined) labels.

- ``loop``: :class:`TrainConfig`, :func:`fit`, :func:`fine_tune`, :func:`cross_fit` (k-fold,
  out-of-sample softmax and features).
- ``linear``: a linear softmax head on frozen features and its cross-fit.
- ``simclr``: the self-supervised encoder of the ``ssl`` feature space.
- ``plc``: PLC (progressive label correction); ``lra``: LRA-diffusion over frozen features.
"""
from __future__ import annotations

from .checkpoint import checkpoint_folder, clear_checkpoints
from .linear import LinearHeadConfig, cross_fit_linear, fit_linear_head
from .loop import (CrossFitResult, TrainConfig, TrainResult, activation_bytes, augment_batch, cross_fit,
                   estimate_fit_bytes, fine_tune, fit, fold_splits, lr_at)
from .lra import LRAConfig, LRAResult, knn_label_candidates, predict_lra, train_lra
from .plc import PLCConfig, PLCResult, lrt_correct, next_delta, train_plc
from .simclr import SSLConfig, train_simclr

__all__ = [
    "CrossFitResult", "TrainConfig", "TrainResult", "augment_batch", "cross_fit", "fine_tune", "fit", "fold_splits",
    "lr_at", "LinearHeadConfig", "cross_fit_linear", "fit_linear_head", "LRAConfig", "LRAResult",
    "knn_label_candidates", "predict_lra", "train_lra", "PLCConfig", "PLCResult", "lrt_correct", "next_delta",
    "train_plc", "SSLConfig", "train_simclr", "activation_bytes", "estimate_fit_bytes",
    "checkpoint_folder", "clear_checkpoints",
]
