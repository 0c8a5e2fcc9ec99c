"""Anchors: class-pure synthetic images, made by a generator or imported, and stored on disk.

- ``base``: the :class:`AnchorGenerator` interface, :data:`GENERATORS`, :func:`match_format`.
- generators: ``glyph`` (fonts, offline), ``diffusers`` (text-to-image; ``prompts``), ``folder``.
- ``store``: anchor sets on disk (manifest, sha256, resume); ``generate``:
  :func:`generate_anchor_set` (resumable, split across processes); ``matching``:
  :func:`load_matched_anchors` (an anchor set relabelled to a dataset's classes).

>>> from synref.anchors import create_generator, match_format, GENERATORS
>>> 'glyph' in GENERATORS.names()
True
>>> sorted(GENERATORS.names())
['diffusers', 'folder', 'glyph']
>>> anchors = create_generator("glyph", size=32).generate(["0", "1"], per_class=10, seed=0)
>>> anchors = match_format(anchors, size=(8, 8), channels=1)
"""
from __future__ import annotations

from .base import (GENERATORS, AnchorGenerator, convert_channels, create_generator, generator_options, match_format,
                   resize_image, validate_class_names)
from .glyph import DEFAULT_FONTS, GlyphGenerator
from .folder import FolderGenerator
from .diffusers_gen import DiffusersGenerator  # imports diffusers only when a pipeline is loaded
from .prompts import PromptSpec
from .generate import generate_anchor_set, parse_class_list
from .matching import load_matched_anchors

__all__ = [
    "AnchorGenerator",
    "GENERATORS",
    "create_generator",
    "generator_options",
    "match_format",
    "resize_image",
    "convert_channels",
    "validate_class_names",
    "GlyphGenerator",
    "DEFAULT_FONTS",
    "FolderGenerator",
    "DiffusersGenerator",
    "PromptSpec",
    "generate_anchor_set",
    "parse_class_list",
    "load_matched_anchors",
]
