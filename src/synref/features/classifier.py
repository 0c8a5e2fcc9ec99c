"""The ``classifier`` feature space: penultimate features of a synref classifier."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

from ..errors import InputError
from ..hashing import fingerprint, hash_state_dict
from ..models import ImageClassifier, extract_features, load_classifier
from .base import FEATURE_EXTRACTORS, ExtractorContext, FeatureExtractor, PathLike

__all__ = ["ClassifierExtractor"]


@FEATURE_EXTRACTORS.register("classifier")
class ClassifierExtractor(FeatureExtractor):
    """Penultimate (global-pooled) features of a synref classifier: ``model.features``.

    Options: ``model`` (an :class:`ImageClassifier`) or ``checkpoint`` (a
    :func:`save_classifier` file); ``device`` to move a loaded checkpoint (default cpu; a given
    model stays where it is). The fingerprint hashes the ``state_dict`` (weights and the
    normalisation buffers), so a model and its checkpoint share cached features.
    """

    name = "classifier"
    label_free = False

    @classmethod
    def from_context(cls, context: ExtractorContext) -> "ClassifierExtractor":
        if context.model is None and context.checkpoint is None:
            raise InputError("feature space 'classifier' needs a trained classifier (a model or a checkpoint)")
        return cls(context.model, checkpoint=context.checkpoint, device=context.device)

    def __init__(self, model: Optional[ImageClassifier] = None, *,
                 checkpoint: Optional[PathLike] = None,
                 device: Optional[Union[str, torch.device]] = None) -> None:
        if (model is None) == (checkpoint is None):
            raise InputError("classifier extractor: give exactly one of model= or checkpoint=")
        if checkpoint is not None:
            model = load_classifier(checkpoint, device=device or "cpu")
        elif not isinstance(model, ImageClassifier):
            raise InputError(f"classifier extractor: model must be an ImageClassifier, got "
                             f"{type(model).__name__}")
        elif device is not None:
            model = model.to(device)
        self.model: ImageClassifier = model
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self._fingerprint: Optional[Tuple[Any, str]] = None

    def fingerprint(self) -> str:
        # weights can change in place (training): re-hash when a tensor's storage or version moves
        version = tuple((t.data_ptr(), int(t._version)) for t in self.model.state_dict().values())
        if self._fingerprint is None or self._fingerprint[0] != version:
            fp = fingerprint(self.name, {"class": type(self.model).__name__,
                                 "feature_dim": int(self.model.feature_dim),
                                 "weights": hash_state_dict(self.model.state_dict())})
            self._fingerprint = (version, fp)
        return self._fingerprint[1]

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d.update(model=type(self.model).__name__, feature_dim=int(self.model.feature_dim),
                 checkpoint=self.checkpoint)
        return d

    def _extract(self, images: np.ndarray, *, batch_size: int) -> np.ndarray:
        if images.shape[-1] != self.model.in_channels:
            raise InputError(f"classifier extractor: the model takes {self.model.in_channels}-"
                             f"channel images, got {images.shape[-1]}-channel")
        return extract_features(self.model, images, batch_size=batch_size)

