"""Labelled image sets: the container, the loaders that fill it, decoding, label files, splits.

- :class:`LabeledImages` (``container``): uint8 ``(N, H, W, C)`` images or file paths, int64
  labels, class names, ids.
- ``loaders``: :func:`load_digits_dataset`, :func:`load_cifar`, :func:`load_image_folder`,
  :func:`load_csv_manifest`, :func:`load_dataset` (a spec string).
- ``decode``: :func:`materialize` / :func:`decode_images` (path-backed -> arrays),
  :func:`choose_geometry`; ``stream``: batch-by-batch decoding for the feature cache.
- ``labels``: :func:`load_labels_file`; ``splits``: :func:`split_indices`.
Every bad input raises InputError with one line naming the culprit.
"""
from __future__ import annotations

from .container import LabeledImages
from .decode import IMAGE_EXTENSIONS, choose_geometry, decode_images, materialize
from .labels import load_labels_file
from .loaders import (SPLIT_FOLDER_NAMES, load_cifar, load_csv_manifest, load_dataset, load_digits_dataset,
                      load_image_folder)
from .splits import split_indices

__all__ = ["LabeledImages", "IMAGE_EXTENSIONS", "SPLIT_FOLDER_NAMES", "choose_geometry", "decode_images",
           "materialize", "load_labels_file", "load_cifar", "load_csv_manifest", "load_dataset",
           "load_digits_dataset", "load_image_folder", "split_indices"]
