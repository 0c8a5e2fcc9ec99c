"""synref: find and correct wrong labels with synthetic class anchors."""
from __future__ import annotations

__version__ = "0.1.0"

from .data import LabeledImages
from .errors import InputError, SynrefError

__all__ = ["LabeledImages", "InputError", "SynrefError", "__version__"]
