"""Feature spaces (one registry) and the on-disk feature cache.

- ``base``: :class:`FeatureExtractor`, :data:`FEATURE_EXTRACTORS`, :func:`create_extractor`,
  :func:`extractor_from_context` / :class:`ExtractorContext`.
- one module per space: ``classifier``, ``clip``, ``ssl`` (alias ``simclr``), ``efficientnet``, ``hf``
  (``hf:ID_OR_FOLDER``: any transformers vision backbone).
- ``cache``: :func:`cached_features` / :func:`compute_features` (chunked, resumable, streamed),
  :func:`extract_features_distributed` (several processes), :func:`encode_sets`.
"""
from __future__ import annotations

from .base import (DEFAULT_ENCODER, FEATURE_EXTRACTORS, ExtractorContext, FeatureExtractor, create_extractor,
                   check_space_name, extractor_from_context, extractor_names, images_hash, is_label_free,
                   label_free_extractors)
from .cache import (FeatureSet, cache_path, cached_features, compute_features, encode_sets,
                    extract_features_distributed)
from .classifier import ClassifierExtractor
from .clip import (CLIP_MEAN, CLIP_STD, DEFAULT_CLIP_MODEL, ClipExtractor, clip_preprocess,
                   load_clip_preprocess_config)
from .efficientnet import EfficientNetExtractor
from .hf import HF_POOLINGS, HFExtractor, hf_preprocess_config
from .ssl import SSLExtractor

__all__ = [
    "FEATURE_EXTRACTORS", "DEFAULT_ENCODER", "DEFAULT_CLIP_MODEL", "CLIP_MEAN", "CLIP_STD", "FeatureExtractor",
    "ExtractorContext", "ClassifierExtractor", "ClipExtractor", "SSLExtractor", "EfficientNetExtractor",
    "create_extractor", "extractor_from_context", "extractor_names", "label_free_extractors", "is_label_free", "check_space_name",
    "HFExtractor", "HF_POOLINGS", "hf_preprocess_config", "clip_preprocess",
    "load_clip_preprocess_config", "images_hash", "cache_path", "cached_features", "compute_features",
    "FeatureSet", "extract_features_distributed", "encode_sets",
]
