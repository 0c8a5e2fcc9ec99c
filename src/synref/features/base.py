"""The feature-space plug-in: :class:`FeatureExtractor` and the one registry of them.

A feature space maps uint8 images ``(N, H, W, C)`` to float32 features ``(N, D)``. Every space
synref uses -- the refinement's fixed spaces and LRA-diffusion's conditioning encoders alike --
is one entry of :data:`FEATURE_EXTRACTORS` (timm style: the name is the API):

``classifier``          penultimate features of a synref classifier (a model or a checkpoint)
``clip``                CLIP image embeddings through ``transformers``
``ssl`` (``simclr``)    a SimCLR encoder trained on the unlabelled images (+ anchors)
``efficientnet-lite0``  ImageNet EfficientNet-Lite0, offline, plain torch
``hf:ID_OR_FOLDER``     any ``transformers`` vision backbone (DINOv2, SigLIP, CLIP, ViT, ConvNeXt, ...)

:func:`create_extractor` builds one from its own options; :func:`extractor_from_context` builds
one from an :class:`ExtractorContext` (what a run has at hand: the training images, the anchors,
the SimCLR recipe, an input size, a CLIP model id, a device), each extractor taking what it
needs, so the CLI, ``synref refine`` and the experiments name spaces the same way. A space
registered with an argument takes it in its name (``hf:facebook/dinov2-small``: the registry's
``name:VALUE``), passed to it as ``ExtractorContext.argument``.
"""
from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

import numpy as np

from ..data import LabeledImages, materialize
from ..errors import InputError
from ..progress import progress as progress_bar
from ..registry import Registry
from ..hashing import images_hash as hash_images
from ..validation import as_image_array

__all__ = ["FEATURE_EXTRACTORS", "DEFAULT_ENCODER", "FeatureExtractor", "ExtractorContext", "create_extractor",
           "extractor_from_context", "extractor_names", "label_free_extractors", "is_label_free", "check_space_name", "images_hash", "pixels",
           "check_batch_size", "batched_bar", "ImagesLike", "PathLike"]

PathLike = Union[str, os.PathLike]
ImagesLike = Union[np.ndarray, LabeledImages]

#: every encoder (feature space) by name: the frozen pretrained ones, ``ssl`` (trained here) and
#: ``classifier`` (a trained classifier's own penultimate features).
FEATURE_EXTRACTORS: Registry["FeatureExtractor"] = Registry("encoder")
#: the frozen pretrained encoder of ``synref refine`` / ``synref bench --dataset DIR`` when none
#: is named (offline: its weights ship as a Python package). Lite2 gave better refined labels on
#: CIFAR-10 (docs/posterior-refiner.md) but worse on the 90-image test folder of
#: tests/test_refine_cli.py (0.811 -> 0.711 against 0.856 with Lite0): Lite0 stays until it is
#: measured on more than one dataset. One constant, so it can be switched.
DEFAULT_ENCODER = "efficientnet-lite0"


def images_hash(images: ImagesLike) -> str:
    """:func:`synref.hashing.images_hash` of uint8 images (checked) or a :class:`LabeledImages`."""
    if isinstance(images, LabeledImages):
        return hash_images(images.images if images.images is not None else None, paths=images.paths)
    return hash_images(as_image_array(images))

def pixels(images: ImagesLike) -> np.ndarray:
    """uint8 ``(N, H, W, C)`` from an array or a LabeledImages (path-backed ones are decoded)."""
    if isinstance(images, LabeledImages):
        if images.images is None:
            images = materialize(images)
        return as_image_array(images.images)
    return as_image_array(images)


def check_batch_size(batch_size: int) -> int:
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    return int(batch_size)


def batched_bar(n: int, batch_size: int, desc: str):
    """A progress bar over the batch starts ``0, batch_size, ...`` of ``n`` images."""
    starts = list(range(0, n, batch_size))
    return progress_bar(starts, desc=desc, total=len(starts), unit="batch")


@dataclass
class ExtractorContext:
    """What a run has at hand to build a feature space; each extractor takes what it needs.

    Attributes:
        images: the unlabelled training images (``ssl`` trains on them).
        extra_images: more unlabelled images for ``ssl`` (e.g. the anchors).
        ssl_config: :class:`~synref.train.simclr.SSLConfig` (or a dict) of ``ssl``.
        ssl_model: the network ``ssl`` trains.
        size: input side in pixels of pretrained CNNs (``efficientnet-lite0``; None: 224).
        clip_model: CLIP hub id or local folder (None: the default ViT-L/14).
        model, checkpoint: the trained classifier of ``classifier``.
        device: torch device (None: cuda when available).
        argument: the value of a ``name:VALUE`` space name (``hf:ID_OR_FOLDER``: the model);
            set by :func:`extractor_from_context`.
    """

    images: Optional[ImagesLike] = None
    extra_images: Optional[ImagesLike] = None
    ssl_config: Any = None
    ssl_model: str = "small_cnn"
    size: Optional[int] = None
    clip_model: Optional[str] = None
    model: Any = None
    checkpoint: Optional[PathLike] = None
    device: Optional[str] = None
    argument: Optional[str] = None


class FeatureExtractor(ABC):
    """Maps uint8 images ``(N, H, W, C)`` to float32 features ``(N, D)``.

    Subclasses set ``name`` (the registry name) and ``label_free`` (True when the space never
    sees labels, so it may condition LRA-diffusion or serve as a fixed refinement space), and
    implement :meth:`from_context`, :meth:`fingerprint` and :meth:`_extract` (a uint8 array in,
    ``(n, D)`` float32 out).
    """

    name: str = "base"
    label_free: bool = True
    #: the square side image files are best decoded at for this space (its own input size, e.g.
    #: from a Hugging Face image processor); None: the caller's working size.
    input_side: Optional[int] = None

    @classmethod
    def from_context(cls, context: ExtractorContext) -> "FeatureExtractor":
        """This extractor built from what a run has at hand (registered extractors override it)."""
        raise InputError(f"feature space {cls.name!r} cannot be built from a run's context")

    @abstractmethod
    def fingerprint(self) -> str:
        """Stable, filename-safe string; equal fingerprints mean equal features for equal images
        (extractor kind, a hash of the weights, preprocessing options)."""

    def describe(self) -> Dict[str, Any]:
        """JSON-able description (written to the cache sidecar)."""
        return {"name": self.name, "fingerprint": self.fingerprint()}

    @abstractmethod
    def _extract(self, images: np.ndarray, *, batch_size: int) -> np.ndarray:
        ...

    def extract(self, images: ImagesLike, *, batch_size: int = 256) -> np.ndarray:
        """Features ``(N, D)`` float32 of uint8 ``(N, H, W, C)`` images or a LabeledImages."""
        arr = pixels(images)
        batch_size = check_batch_size(batch_size)
        out = self._extract(arr, batch_size=batch_size)
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 2 or len(out) != len(arr):
            raise RuntimeError(f"{self.name} extractor returned {out.shape} for {len(arr)} images")
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fingerprint={self.fingerprint()!r})"


def create_extractor(name: str, **options: Any) -> FeatureExtractor:
    """Build the registered encoder ``name`` (``classifier``, ``clip``, ``ssl``,
    ``efficientnet-lite0``, ...: there is no default; ``synref refine``'s is
    :data:`DEFAULT_ENCODER`) with its own options."""
    return FEATURE_EXTRACTORS.create(name, **options)


def extractor_from_context(name: str, context: ExtractorContext) -> FeatureExtractor:
    """The registered extractor ``name`` built from ``context`` (see :class:`ExtractorContext`);
    ``name:VALUE`` (``hf:ID_OR_FOLDER``) passes VALUE as ``context.argument``."""
    base, value = FEATURE_EXTRACTORS.split(name)
    if value is not None:
        context = dataclasses.replace(context, argument=value)
    return FEATURE_EXTRACTORS.get(base).from_context(context)  # type: ignore[attr-defined]


def extractor_names() -> List[str]:
    return FEATURE_EXTRACTORS.names()


def label_free_extractors() -> List[str]:
    """Every name (aliases too) of an extractor that never sees labels and needs no ``:VALUE``
    (LRA's conditioning encoders; ``hf:ID_OR_FOLDER`` is label-free too, see :func:`is_label_free`)."""
    return [n for n in FEATURE_EXTRACTORS.choices() if ":" not in n and not FEATURE_EXTRACTORS.takes_argument(n)
            and getattr(FEATURE_EXTRACTORS.get(n), "label_free", False)]


def check_space_name(name: str, option: str = "--encoder") -> str:
    """The canonical name of the feature space ``name`` (``hf:ID`` included); InputError naming
    ``option`` for an unknown name, or for one that needs its ``:VALUE`` without it (``hf``)."""
    if name not in FEATURE_EXTRACTORS:
        raise InputError(f"unknown {option} {name!r}; choose one of: {', '.join(FEATURE_EXTRACTORS.choices())}")
    base, value = FEATURE_EXTRACTORS.split(name)
    if value is None and FEATURE_EXTRACTORS.takes_argument(base):
        shown = [c for c in FEATURE_EXTRACTORS.choices() if c.startswith(f"{base}:")]
        raise InputError(f"{option} {name}: name the model, {shown[0] if shown else base + ':VALUE'} (a hub id in the "
                         "Hugging Face cache or a save_pretrained folder)")
    return FEATURE_EXTRACTORS.canonical(name)


def is_label_free(name: str) -> bool:
    """True when the space ``name`` (``hf:...`` included) never sees labels; InputError for an
    unknown name."""
    return bool(getattr(FEATURE_EXTRACTORS.get(name), "label_free", False))
