"""Classifier checkpoints: a JSON header + ``state_dict``, loadable with ``weights_only=True``."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ..errors import InputError
from ..io import atomic_path, read_torch_file
from .classifiers import MODELS, ImageClassifier, create_model

__all__ = ["save_classifier", "load_classifier", "read_checkpoint", "load_weights"]

PathLike = Union[str, os.PathLike]
_CHECKPOINT_FORMAT = "synref-classifier"
_CHECKPOINT_VERSION = 1


def save_classifier(model: ImageClassifier, path: PathLike, *, name: str,
                    num_classes: Optional[int] = None, in_channels: Optional[int] = None) -> None:
    """Save ``model`` (built by ``create_model(name, ...)``) as ``{"header": <JSON text>,
    "state_dict": {...}}`` with :func:`torch.save`, atomically; only tensors and plain
    str / dict values, so :func:`load_classifier` reads it with ``weights_only=True``.

    ``num_classes`` / ``in_channels`` default to the model's and must match it.
    """
    if not isinstance(model, ImageClassifier):
        raise InputError(f"save_classifier needs an ImageClassifier, got {type(model).__name__}")
    num_classes = model.num_classes if num_classes is None else int(num_classes)
    in_channels = model.in_channels if in_channels is None else int(in_channels)
    if num_classes != model.num_classes or in_channels != model.in_channels:
        raise InputError(f"save_classifier: model has {model.num_classes} classes / "
                         f"{model.in_channels} channels, got num_classes={num_classes}, "
                         f"in_channels={in_channels}")
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(MODELS.names())}")
    header = {"format": _CHECKPOINT_FORMAT, "version": _CHECKPOINT_VERSION, "name": str(name),
              "num_classes": num_classes, "in_channels": in_channels,
              "feature_dim": int(model.feature_dim)}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"header": json.dumps(header), "state_dict": state}, tmp)


def read_checkpoint(path: PathLike) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    path = Path(path)
    blob = read_torch_file(path, "classifier checkpoint")
    try:
        header = json.loads(blob["header"])
        state = blob["state_dict"]
        ok = header.get("format") == _CHECKPOINT_FORMAT and isinstance(state, dict)
    except Exception:
        ok = False
    if not ok:
        raise InputError(f"{path} is not a synref classifier checkpoint (see save_classifier)")
    if int(header.get("version", 0)) > _CHECKPOINT_VERSION:
        raise InputError(f"{path}: checkpoint version {header.get('version')} is newer than this "
                         f"synref reads ({_CHECKPOINT_VERSION})")
    _check_header(path, header, state)
    return header, state


def _check_header(path: Path, header: Dict[str, Any], state: Dict[str, Any]) -> None:
    """The header must describe the weights it comes with (a model is built from the header
    before the weights are loaded, so a forged class count could ask for any amount of memory)."""
    name, classes, channels = header.get("name"), header.get("num_classes"), header.get("in_channels")
    if name not in MODELS:
        raise InputError(f"{path}: unknown model {name!r} in the checkpoint header; choose one of: "
                         f"{', '.join(MODELS.names())}")
    for key, value in (("num_classes", classes), ("in_channels", channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{path}: checkpoint header {key} must be a positive integer, got {value!r}")
    if channels not in (1, 3):
        raise InputError(f"{path}: checkpoint header in_channels must be 1 or 3, got {channels}")
    weight = state.get("classifier.weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or int(weight.shape[0]) != classes:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
        raise InputError(f"{path}: the checkpoint header says {classes} classes but its classifier weights "
                         f"are {shape}; the file is corrupt or was edited (save it with save_classifier)")


def load_classifier(path: PathLike, *, device: Union[str, torch.device] = "cpu") -> ImageClassifier:
    """The :class:`ImageClassifier` saved by :func:`save_classifier`, in eval mode."""
    header, state = read_checkpoint(path)
    model = create_model(header["name"], num_classes=int(header["num_classes"]),
                         in_channels=int(header["in_channels"]))
    load_weights(model, state, f"{path}: weights do not fit model {header['name']!r}")
    return model.to(device).eval()


def load_weights(model: torch.nn.Module, state: Dict[str, Any], what: str) -> None:
    """``model.load_state_dict(state, strict=True)``; a mismatch is a one-line InputError
    ``"<what>: <torch's reason>"``."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())[:200]
        raise InputError(f"{what}: {msg}") from None

