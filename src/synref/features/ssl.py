"""The ``ssl`` (alias ``simclr``) feature space: a SimCLR encoder trained on the unlabelled images."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np

from ..errors import InputError
from ..hashing import fingerprint
from ..models import ImageClassifier, extract_features
from .base import FEATURE_EXTRACTORS, ExtractorContext, FeatureExtractor, ImagesLike, images_hash, pixels

__all__ = ["SSLExtractor"]


@FEATURE_EXTRACTORS.register("ssl", aliases=("simclr",))
class SSLExtractor(FeatureExtractor):
    """Features of a SimCLR encoder (:func:`synref.ssl.train_simclr`) trained on ``images``
    (+ ``extra_images``, e.g. the anchors), trained lazily on first :meth:`extract`.

    Options: ``images`` (uint8 array or LabeledImages, required), ``extra_images``,
    ``config`` (:class:`~synref.ssl.SSLConfig` or a dict of its fields), ``model_name``
    (default ``small_cnn``). The fingerprint hashes the training images, config and model name
    (training is deterministic per seed on CPU).
    """

    name = "ssl"

    @classmethod
    def from_context(cls, context: ExtractorContext) -> "SSLExtractor":
        return cls(context.images, extra_images=context.extra_images, config=context.ssl_config,
                   model_name=context.ssl_model)

    def __init__(self, images: Optional[ImagesLike] = None, *,
                 extra_images: Optional[ImagesLike] = None,
                 config: Any = None, model_name: str = "small_cnn") -> None:
        from ..models import MODELS
        from ..train.simclr import SSLConfig

        if images is None:
            raise InputError("ssl extractor: images= (the unlabelled training images) is required")
        if isinstance(config, SSLConfig):
            self.config = config
        elif config is None:
            self.config = SSLConfig()
        elif isinstance(config, Mapping):
            self.config = SSLConfig.from_dict(dict(config))
        else:
            raise InputError(f"ssl extractor: config must be an SSLConfig or a dict, got "
                             f"{type(config).__name__}")
        if model_name not in MODELS:
            raise InputError(f"unknown model {model_name!r}; choose one of: {', '.join(MODELS.names())}")
        self.model_name = model_name
        self.images = images
        self.extra_images = extra_images
        self.model: Optional[ImageClassifier] = None
        self._fingerprint: Optional[str] = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.name, {
                "model_name": self.model_name,
                "config": self.config.to_dict(),
                "images": images_hash(self.images),
                "extra_images": None if self.extra_images is None else images_hash(self.extra_images),
            })
        return self._fingerprint

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d.update(model_name=self.model_name, config=self.config.to_dict())
        return d

    def train(self) -> ImageClassifier:
        if self.model is None:
            from ..train.simclr import train_simclr

            extra = None if self.extra_images is None else pixels(self.extra_images)
            self.model = train_simclr(pixels(self.images), model_name=self.model_name,
                                      config=self.config, extra_images=extra)
        return self.model

    def _extract(self, images: np.ndarray, *, batch_size: int) -> np.ndarray:
        model = self.train()
        if images.shape[-1] != model.in_channels:
            raise InputError(f"ssl extractor: trained on {model.in_channels}-channel images, got "
                             f"{images.shape[-1]}-channel")
        return extract_features(model, images, batch_size=batch_size)

