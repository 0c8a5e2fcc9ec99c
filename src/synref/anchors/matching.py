"""Anchors for a dataset: an anchor set on disk matched to the dataset's classes by name."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..data import LabeledImages
from ..errors import InputError
from .base import match_format
from .store import load_anchor_set

__all__ = ["load_matched_anchors"]


def load_matched_anchors(anchor_dir: Path, class_names: List[str], *, size: Optional[Tuple[int, int]] = None,
                         channels: Optional[int] = None, decode: bool = True) -> Tuple[LabeledImages, List[str]]:
    """The anchor set in ``anchor_dir`` (from ``synref generate``) relabelled to ``class_names``'
    indices (matched by name), resized to ``size`` with ``channels`` (uint8 ``(M, H, W, C)``);
    ``decode=False`` gives a path-backed set instead (the PNG files, nothing decoded; ``size`` /
    ``channels`` unused), for streaming. Every file is checked against its manifest row (size and
    sha256, :meth:`~synref.anchors.store.AnchorSet.verify`). Returns the anchors and the anchor
    classes that are not dataset classes (ignored). A dataset class without anchors raises InputError naming it and
    the folder."""
    anchor_dir = Path(anchor_dir)
    if not anchor_dir.is_dir():
        raise InputError(f"--anchors {anchor_dir}: not a folder (make one with synref generate)")
    anchors = load_anchor_set(anchor_dir, decode=decode, verify=True)  # a replaced image is refused
    index = {name: i for i, name in enumerate(class_names)}
    missing = [name for name in class_names if name not in set(anchors.class_names)]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(f"class {missing[0]!r} has no anchors in {anchor_dir}: {len(missing)} dataset classes "
                         f"are not among the anchor classes ({shown}); anchor classes: "
                         f"{', '.join(anchors.class_names[:8])}{' ...' if len(anchors.class_names) > 8 else ''}")
    extra = [name for name in anchors.class_names if name not in index]
    keep = np.array([anchors.class_names[label] in index for label in anchors.labels], dtype=bool)
    remapped = np.array([index[anchors.class_names[label]] for label in anchors.labels[keep]], dtype=np.int64)
    rows = np.flatnonzero(keep)
    if not decode:
        return LabeledImages(None, remapped, list(class_names), paths=[anchors.paths[i] for i in rows],
                             ids=[anchors.ids[i] for i in rows]), extra
    if size is None or channels is None:
        raise InputError("load_matched_anchors: decoded anchors need size and channels")
    anchors = LabeledImages(anchors.images[keep], remapped, list(class_names), ids=[anchors.ids[i] for i in rows])
    return match_format(anchors, size=tuple(size), channels=int(channels)), extra
