"""Training: fit / fine-tune / predict / features / cross-fit (see :mod:`synref.train.loop`)."""
from __future__ import annotations

from .loop import (
    CrossFitResult,
    TrainConfig,
    TrainResult,
    augment_batch,
    channel_stats,
    cross_fit,
    evaluate_accuracy,
    extract_features,
    fine_tune,
    fit,
    lr_at,
    predict_logits,
    predict_proba,
)

from .lra import LRAConfig, LRAResult, knn_label_candidates, predict_lra, train_lra
from .plc import PLCConfig, PLCResult, lrt_correct, next_delta, train_plc

__all__ = [
    "LRAConfig",
    "LRAResult",
    "knn_label_candidates",
    "predict_lra",
    "train_lra",
    "PLCConfig",
    "PLCResult",
    "lrt_correct",
    "next_delta",
    "train_plc",
    "CrossFitResult",
    "TrainConfig",
    "TrainResult",
    "augment_batch",
    "channel_stats",
    "cross_fit",
    "evaluate_accuracy",
    "extract_features",
    "fine_tune",
    "fit",
    "lr_at",
    "predict_logits",
    "predict_proba",
]
