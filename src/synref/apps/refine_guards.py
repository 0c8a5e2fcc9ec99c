"""Checks ``synref refine`` makes before it spends memory or writes into its results folder.

- :func:`check_pretrained_memory`: the streamed pretrained evidence at its working size, before a
  single image is decoded (the size that fits is named).
- :func:`check_results_folder`: ``--out`` is not (inside) the anchor set, and the folders synref
  writes inside it (``cache``, ``anchors``) are not symbolic links leading elsewhere.
- :func:`replaced_results_notice`: one line on stderr when a finished results folder is replaced.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from .. import validation
from ..errors import InputError
from ..io import check_not_inside

__all__ = ["check_pretrained_memory", "pretrained_bytes_per_pixel", "check_results_folder", "replaced_results_notice"]

#: decoded batches alive while streaming with decoding threads (the stream's ``prefetch + 1``, and
#: the batch being stacked).
_BATCHES_ALIVE = 4
#: the encoder's largest activation per input pixel (EfficientNet-Lite: 96 channels at half the
#: side, float32) times the two tensors alive around it.
_ACTIVATION_BYTES_PER_PIXEL = 2 * 96 * 4 / 4


def pretrained_bytes_per_pixel(batch: int, workers: int) -> float:
    """Bytes per pixel of the working side squared that the streamed pretrained evidence holds:
    the uint8 RGB batches decoded ahead, the float32 input of one batch, one image's activations."""
    alive = _BATCHES_ALIVE if workers > 0 else 2
    return batch * 3 * alive + batch * 3 * 4 + _ACTIVATION_BYTES_PER_PIXEL


def check_pretrained_memory(side: int, *, num_images: int, batch_size: int, chunk_size: int, workers: int) -> None:
    """InputError before anything is decoded when streaming ``num_images`` images through a
    pretrained encoder at ``side`` x ``side`` px needs more memory than the machine has; the
    message names the largest ``--image-size`` that fits."""
    batch = max(1, min(int(batch_size), int(chunk_size), int(num_images)))
    per_pixel = pretrained_bytes_per_pixel(batch, workers)
    need = per_pixel * float(side) ** 2
    available = validation.available_memory()
    if available is None or need <= available:
        return
    fits = int(math.sqrt(available / per_pixel))
    advice = (f"pass --image-size {fits} or less (the default is 160)" if fits >= 4 else
              "free memory or use a machine with more")
    validation.check_memory(need, f"pretrained evidence at {side}x{side} px (batches of {batch} images, "
                                  f"{workers} decoding threads)", advice + (" or a smaller --batch-size"
                                                                            if batch > 1 else ""))


def check_results_folder(out: Path, *, anchors: Optional[str], generated: bool) -> None:
    """InputError when ``out`` is the anchor set or inside it (the results would be mixed into the
    set), or when ``out/cache`` (or, for generated anchors, ``out/anchors``) is a symbolic link:
    synref would write through it into another folder."""
    if anchors is not None:
        check_not_inside(out, anchors, data_option="--anchors")
    for name in ("cache",) + (("anchors",) if generated else ()):
        link = Path(out) / name
        if link.is_symlink():
            raise InputError(f"--out {out}: {link} is a symbolic link (to {os.readlink(link)}); synref writes "
                             f"its {name} there and will not write through a link into another folder: remove "
                             f"the link or choose another --out")


def replaced_results_notice(out: Path, config: Any) -> Optional[str]:
    """When ``out`` holds a finished run (``summary.json``), print and return one line saying its
    results are about to be replaced, naming the options that differ from ``config``'s."""
    if not (Path(out) / "summary.json").is_file():
        return None
    try:
        old = json.loads((Path(out) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    try:  # read through the config class: an older (flat) layout is compared in the new one
        old = type(config).from_dict(old).to_dict()
    except InputError:
        pass
    old, new = _dotted(old) if isinstance(old, dict) else {}, _dotted(config.to_dict())
    differ: List[str] = [k for k in new if not k.rsplit(".", 1)[-1].startswith("_") and k in old and old[k] != new[k]]
    if differ:
        shown = ", ".join(f"{k}: {json.dumps(old[k])} -> {json.dumps(new[k])}" for k in differ[:4])
        text = (f"synref: replacing the finished results in {out} (they were written with other options: {shown}"
                f"{', ...' if len(differ) > 4 else ''})")
    else:
        text = f"synref: {out} already holds the finished results of these options; writing them again"
    print(text, file=sys.stderr, flush=True)
    return text


def _dotted(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """A nested config dict as ``{"evidence.folds": 4, ...}`` (lists and values kept)."""
    flat: Dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
