"""One device resolution for every model synref runs (classifiers, encoders, generators)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["default_device", "resolve_device"]


def default_device() -> str:
    """``"cuda"`` when torch sees a GPU, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: Optional[Union[str, "torch.device"]], who: str = "device") -> "torch.device":
    """``device`` as a ``torch.device`` (None or ``"auto"``: :func:`default_device`). A string
    torch cannot parse, or CUDA asked for without a GPU, is a one-line InputError naming ``who``."""
    import torch

    if device is None or str(device) == "auto":
        device = default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"{who}: {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{who}: device={str(device)!r} but CUDA is not available (torch sees no GPU); "
                         f"use cpu")
    return resolved
