"""Anchor generators: class names in, class-pure synthetic images out.

>>> from synref.anchors import create_generator, match_format, GENERATORS
>>> 'glyph' in GENERATORS.names()
True
>>> sorted(GENERATORS.names())
['diffusers', 'folder', 'glyph']
>>> anchors = create_generator("glyph", size=32).generate(["0", "1"], per_class=10, seed=0)
>>> anchors = match_format(anchors, size=(8, 8), channels=1)
"""
from __future__ import annotations

from .base import (GENERATORS, AnchorGenerator, convert_channels, create_generator, match_format,
                   resize_image, validate_class_names)
from .glyph import DEFAULT_FONTS, GlyphGenerator
from .folder import FolderGenerator
from .diffusers_gen import DiffusersGenerator  # imports diffusers only when a pipeline is loaded
from .prompts import PromptSpec

__all__ = [
    "AnchorGenerator",
    "GENERATORS",
    "create_generator",
    "match_format",
    "resize_image",
    "convert_channels",
    "validate_class_names",
    "GlyphGenerator",
    "DEFAULT_FONTS",
    "FolderGenerator",
    "DiffusersGenerator",
    "PromptSpec",
]
