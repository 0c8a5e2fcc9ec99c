"""The labelled image set every step passes along: :class:`LabeledImages`.

Images are held as a uint8 array ``(N, H, W, C)`` with C in {1, 3}, or as file paths that are
decoded on demand (:func:`synref.data.materialize`). Labels are int64 ``(N,)`` in
``[0, len(class_names))``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..validation import as_image_array, check_labels

__all__ = ["LabeledImages"]


@dataclass
class LabeledImages:
    """A labelled image set.

    Attributes:
        images: uint8 ``(N, H, W, C)``, C in {1, 3}; ``None`` when the set is path-backed.
        labels: int64 ``(N,)``, each in ``[0, num_classes)``.
        class_names: the ``C`` class names, index = label.
        paths: ``N`` file paths when the set is path-backed (or remembered for reports).
        ids: ``N`` stable sample ids (defaults to "0".."N-1" or the paths).
        skipped: files the loader left out, ``{"file", "reason"}`` (symbolic-link loops, named
            pipes and other special files); reported with the files decoding leaves out.
    """

    images: Optional[np.ndarray]
    labels: np.ndarray
    class_names: List[str]
    paths: Optional[List[str]] = None
    ids: Optional[List[str]] = field(default=None)
    skipped: List[Dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels)
        if self.labels.ndim != 1:
            raise InputError(f"labels must be 1-D, got shape {self.labels.shape}")
        if self.labels.size and not np.issubdtype(self.labels.dtype, np.integer):
            raise InputError(f"labels must be integers, got dtype {self.labels.dtype}")
        self.labels = self.labels.astype(np.int64, copy=False)
        self.class_names = [str(c) for c in self.class_names]
        n = len(self.labels)
        if self.images is None and self.paths is None:
            raise InputError("a LabeledImages needs images or paths")
        if self.images is not None:
            images = as_image_array(self.images)
            if len(images) != n:
                raise InputError(f"{len(images)} images but {n} labels")
            self.images = images
        if self.paths is not None:
            self.paths = [str(p) for p in self.paths]
            if len(self.paths) != n:
                raise InputError(f"{len(self.paths)} paths but {n} labels")
        if self.ids is None:
            self.ids = list(self.paths) if self.paths is not None else [str(i) for i in range(n)]
        elif len(self.ids) != n:
            raise InputError(f"{len(self.ids)} ids but {n} labels")
        check_labels(self.labels, self.num_classes, what="labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        if self.images is not None:
            what = f"images={self.images.shape}"
        else:
            what = f"paths={len(self.paths or [])} (not decoded)"
        return (f"LabeledImages(n={len(self)}, {what}, num_classes={self.num_classes}, "
                f"class_names={self.class_names[:5]}{'...' if self.num_classes > 5 else ''})")

    @property
    def is_path_backed(self) -> bool:
        """True when the images are still files (``images is None``); see :func:`materialize`."""
        return self.images is None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "LabeledImages":
        """The samples at ``indices`` (a new container; arrays are copied)."""
        idx = np.asarray(indices, dtype=np.int64)
        return LabeledImages(
            images=None if self.images is None else self.images[idx],
            labels=self.labels[idx].copy(),
            class_names=list(self.class_names),
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            ids=[self.ids[i] for i in idx],
            skipped=list(self.skipped),
        )

    def with_labels(self, labels: np.ndarray) -> "LabeledImages":
        """The same images with other labels (checked against the class count)."""
        labels = np.asarray(labels)
        if labels.shape != self.labels.shape:
            raise InputError(f"{len(labels)} labels given for {len(self)} images")
        return LabeledImages(self.images, labels, list(self.class_names), self.paths, list(self.ids),
                             list(self.skipped))
