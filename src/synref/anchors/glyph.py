"""``glyph``: procedural anchors that render each class's text in offline TrueType fonts.

Fonts are the ones that ship inside matplotlib (DejaVu, STIX, Computer Modern), so nothing is
downloaded. Each image draws, from an RNG derived from ``(seed, class_index, k)`` only: a typeface
(among those that really have glyphs for the text), a stroke width, an aspect change, a small
rotation, a fill fraction (how much of the image the glyph spans), a shift and a gaussian blur.
The glyph is cropped to its ink, fitted centred into the canvas (like scikit-learn's digits),
rendered at ``r`` times the output size and area-downsampled by the integer factor ``r``.

>>> gen = GlyphGenerator(size=8, texts={"zero": "0"})
>>> gen.generate_one(0, "zero", k=3, seed=0).shape
(8, 8, 1)
"""
from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ..errors import InputError
from ..validation import check_channels, check_size
from .base import GENERATORS, AnchorGenerator, Size

Color = Union[int, Tuple[int, int, int], Sequence[int]]
Range = Union[float, Tuple[float, float], Sequence[float]]

#: Clearly different typefaces from matplotlib's bundled fonts (sans, mono, serif, Times-like,
#: Computer Modern roman/sans/typewriter; upright, bold, italic). Each has Latin letters and digits.
DEFAULT_FONTS: Tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmti10.ttf",
)


def matplotlib_font_dir() -> str:
    """The folder of TrueType fonts bundled with matplotlib."""
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def resolve_font(font: str) -> str:
    """A font file path: an existing path, or a file name in matplotlib's font folder."""
    font = os.fspath(font)
    if os.path.isfile(font):
        return os.path.abspath(font)
    candidate = os.path.join(matplotlib_font_dir(), font)
    if os.path.isfile(candidate):
        return candidate
    if not font.lower().endswith((".ttf", ".otf")):
        candidate = os.path.join(matplotlib_font_dir(), font + ".ttf")
        if os.path.isfile(candidate):
            return candidate
    raise InputError(f"fonts: no font file {font!r} "
                     f"(neither a path nor in {matplotlib_font_dir()})")


def font_label(path: str) -> str:
    """A short name for a font file ("DejaVuSans-Bold")."""
    return os.path.splitext(os.path.basename(path))[0]


@lru_cache(maxsize=None)
def _cmap(path: str) -> Dict[int, str]:
    from fontTools.ttLib import TTFont

    try:
        with TTFont(path, lazy=True, fontNumber=0) as tt:
            return dict(tt.getBestCmap() or {})
    except Exception as exc:  # unreadable font file
        raise InputError(f"fonts: cannot read font {path!r}: {exc}") from None


@lru_cache(maxsize=None)
def _font(path: str, px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size=px, layout_engine=ImageFont.Layout.BASIC)


@lru_cache(maxsize=4096)
def _render(path: str, px: int, text: str, stroke: int) -> Optional[Image.Image]:
    """White-on-black "L" mask of ``text``, cropped to its ink; None when nothing is drawn."""
    font = _font(path, px)
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    pad = 2 + stroke
    im = Image.new("L", (max(1, right - left) + 2 * pad, max(1, bottom - top) + 2 * pad), 0)
    ImageDraw.Draw(im).text((pad - left, pad - top), text, font=font, fill=255,
                            stroke_width=stroke, stroke_fill=255)
    bbox = im.getbbox()
    return None if bbox is None else im.crop(bbox)


@lru_cache(maxsize=4096)
def stroke_thickness(path: str, px: int, text: str) -> float:
    """The font's own stroke thickness for ``text`` in pixels (``2 * area / perimeter`` of the
    ink, exact for long uniform strokes)."""
    mask = _render(path, px, text, 0)
    if mask is None:
        return 0.0
    ink = np.asarray(mask) > 127
    padded = np.pad(ink, 1)
    interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    perimeter = int((ink & ~interior).sum())
    return 2.0 * float(ink.sum()) / max(perimeter, 1)


@lru_cache(maxsize=None)
def font_renders(path: str, text: str, px: int = 48) -> bool:
    """Whether the font has real glyphs (no tofu/.notdef, visible ink) for every character."""
    cmap = _cmap(path)
    visible = [ch for ch in text if not ch.isspace()]
    if not visible:
        return False
    for ch in visible:
        name = cmap.get(ord(ch))
        if name is None or name == ".notdef":
            return False
        if _render(path, px, ch, 0) is None:
            return False
    return True


def _range(value: Range, option: str, lo: float, hi: float) -> Tuple[float, float]:
    """``x`` -> ``(x, x)``; ``(a, b)`` checked to lie in ``[lo, hi]`` with ``a <= b``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        a = b = float(value)
    else:
        try:
            a, b = (float(v) for v in value)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise InputError(f"{option} must be a number or (min, max), got {value!r}") from None
    if not (lo <= a <= b <= hi):
        raise InputError(f"{option} must satisfy {lo} <= min <= max <= {hi}, got {value!r}")
    return a, b


def _color(value: Color, option: str, channels: int) -> np.ndarray:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        vals = [int(value)] * channels
    else:
        try:
            vals = [int(v) for v in value]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise InputError(f"{option} must be an int or (r, g, b), got {value!r}") from None
        if len(vals) != 3 or channels != 3:
            raise InputError(f"{option} must be an int gray level"
                             + (" or (r, g, b)" if channels == 3 else " for channels=1")
                             + f", got {value!r}")
    if any(not 0 <= v <= 255 for v in vals):
        raise InputError(f"{option} values must be in [0, 255], got {value!r}")
    return np.asarray(vals, dtype=np.float32)


@GENERATORS.register("glyph")
class GlyphGenerator(AnchorGenerator):
    """Renders each class's text (default: the class name) in varied offline fonts.

    Args:
        size: output size, int or ``(H, W)`` (default 32).
        channels: 1 (gray) or 3 (RGB).
        texts: per-class text overriding the class name, e.g. ``{"three": "3"}``.
        fonts: font file names in matplotlib's font folder, or font paths
            (default :data:`DEFAULT_FONTS`). Fonts without glyphs for a class's text are skipped.
        canvas: minimum render side; images are drawn at ``r = ceil(canvas / max(H, W))`` times
            the output size and area-downsampled by ``r``.
        invert: dark glyph on light background (swaps background and foreground).
        background, foreground: gray level, or ``(r, g, b)`` when ``channels=3``.
        fill: range of the fraction of the image the glyph spans (its longer relative side).
        aspect: range of the width scale factor (squeeze/stretch).
        rotation: maximum absolute rotation in degrees (drawn from a normal with sigma
            ``0.4 * rotation``, clipped at +-rotation: most glyphs are near upright).
        shift: maximum shift of the centre, as a fraction of the image side (kept inside).
        stroke: range of the stroke thickness, as a fraction of the font size. Each image draws a
            thickness and thin fonts are thickened to it (PIL ``stroke_width``); fonts whose own
            strokes are already thicker keep them, so bold faces do not fill up into blobs.
        blur: range of the gaussian sigma, as a fraction of the image side.
        autocontrast: stretch each glyph so its brightest pixel is the full foreground.
    """

    name = "glyph"

    def __init__(self, *, size: Size = 32, channels: int = 1,
                 texts: Optional[Mapping[str, str]] = None,
                 fonts: Optional[Sequence[str]] = None, canvas: int = 64, invert: bool = False,
                 background: Color = 0, foreground: Color = 255,
                 fill: Range = (0.8, 1.0), aspect: Range = (0.8, 1.2), rotation: float = 15.0,
                 shift: float = 0.03, stroke: Range = (0.06, 0.15), blur: Range = (0.0, 0.012),
                 autocontrast: bool = True) -> None:
        self.size = check_size(size)
        self.channels = check_channels(channels)
        if texts is None:
            texts = {}
        if not isinstance(texts, Mapping):
            raise InputError(f"texts must be a mapping class name -> text, "
                             f"got {type(texts).__name__}")
        self.texts: Dict[str, str] = {}
        for key, val in texts.items():
            if not isinstance(val, str) or not val.strip():
                raise InputError(f"texts: class {key!r} has an empty or non-string text {val!r}")
            self.texts[str(key)] = val
        font_list = DEFAULT_FONTS if fonts is None else fonts
        if isinstance(font_list, (str, bytes)) or not list(font_list):
            raise InputError(f"fonts must be a non-empty list of font files, got {fonts!r}")
        self.fonts: List[str] = list(dict.fromkeys(resolve_font(f) for f in font_list))
        if isinstance(canvas, bool) or not isinstance(canvas, (int, np.integer)) or canvas < 1:
            raise InputError(f"canvas must be a positive integer, got {canvas!r}")
        self.canvas = int(canvas)
        self.invert = bool(invert)
        self.background = _color(background, "background", self.channels)
        self.foreground = _color(foreground, "foreground", self.channels)
        self.fill = _range(fill, "fill", 0.05, 1.0)
        self.aspect = _range(aspect, "aspect", 0.1, 10.0)
        self.rotation = _range(rotation, "rotation", 0.0, 180.0)[1]
        self.shift = _range(shift, "shift", 0.0, 0.5)[1]
        self.stroke = _range(stroke, "stroke", 0.0, 0.5)
        self.blur = _range(blur, "blur", 0.0, 0.5)
        self.autocontrast = bool(autocontrast)
        # render geometry: integer supersampling of the output size
        h, w = self.size
        self.factor = max(1, math.ceil(self.canvas / max(h, w)))
        self.font_px = int(round(1.25 * max(h, w) * self.factor))
        self._eligible: Dict[str, Tuple[str, ...]] = {}

    def config(self) -> Dict[str, Any]:
        return {
            "size": self.size, "channels": self.channels, "texts": dict(self.texts),
            "fonts": [font_label(f) for f in self.fonts], "canvas": self.canvas,
            "invert": self.invert, "background": self.background.astype(int).tolist(),
            "foreground": self.foreground.astype(int).tolist(), "fill": self.fill,
            "aspect": self.aspect, "rotation": self.rotation, "shift": self.shift,
            "stroke": self.stroke, "blur": self.blur, "autocontrast": self.autocontrast,
        }

    # ------------------------------------------------------------------ fonts per class
    def text_for(self, class_name: str) -> str:
        return self.texts.get(class_name, class_name)

    def fonts_for(self, class_name: str) -> Tuple[str, ...]:
        """The font paths that render this class's text (InputError when none does)."""
        text = self.text_for(class_name)
        fonts = self._eligible.get(text)
        if fonts is None:
            fonts = tuple(f for f in self.fonts if font_renders(f, text))
            if not fonts:
                raise InputError(
                    f"glyph: no font has glyphs for the text {text!r} of class {class_name!r}; "
                    f"give texts={{{class_name!r}: ...}} or other fonts")
            self._eligible[text] = fonts
        return fonts

    def prepare(self, class_names: Sequence[str]) -> None:
        for name in class_names:
            self.fonts_for(name)

    # ------------------------------------------------------------------ one image
    def draw_params(self, class_index: int, class_name: str, k: int,
                    seed: int = 0) -> Dict[str, Any]:
        """The random choices behind image ``k`` (font path, fill, aspect, stroke, angle in
        degrees, shift ``dx``/``dy`` in [-1, 1] of the allowed shift, blur sigma)."""
        fonts = self.fonts_for(class_name)
        rng = self.rng(class_index, k, seed)
        # every draw happens in this fixed order, whatever the options
        font = fonts[int(rng.integers(len(fonts)))]
        fill = float(rng.uniform(*self.fill))
        aspect = float(rng.uniform(*self.aspect))
        stroke = float(rng.uniform(*self.stroke))
        angle = self.rotation * float(np.clip(rng.normal(0.0, 0.4), -1.0, 1.0))
        dx, dy = (float(v) for v in rng.uniform(-1.0, 1.0, size=2))
        sigma = float(rng.uniform(*self.blur))
        return {"font": font, "fill": fill, "aspect": aspect, "stroke": stroke, "angle": angle,
                "dx": dx, "dy": dy, "blur": sigma}

    def generate_one(self, class_index: int, class_name: str, k: int, seed: int = 0) -> np.ndarray:
        """uint8 ``(H, W, channels)``: the class text drawn with :meth:`draw_params`."""
        p = self.draw_params(class_index, class_name, k, seed)
        text = self.text_for(class_name)
        font, fill, aspect, stroke = p["font"], p["fill"], p["aspect"], p["stroke"]
        angle, dx, dy, sigma = p["angle"], p["dx"], p["dy"], p["blur"]

        h, w = self.size
        ch, cw = h * self.factor, w * self.factor
        natural = stroke_thickness(font, self.font_px, text)
        extra = max(0, int(round((stroke * self.font_px - natural) / 2)))
        mask = _render(font, self.font_px, text, extra)
        if mask is None:  # pragma: no cover - fonts_for checked the glyphs
            raise InputError(f"glyph: font {font_label(font)} draws nothing for {text!r}")
        # squeeze/stretch, then rotate, then crop to the ink again
        gw, gh = mask.size
        mask = mask.resize((max(1, round(gw * aspect)), gh), Image.BICUBIC)
        if angle:
            mask = mask.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=0)
            bbox = mask.point(lambda v: 255 if v > 8 else 0).getbbox()
            if bbox is not None:
                mask = mask.crop(bbox)
        # fit centred: the glyph spans `fill` of the canvas along its relatively longer side
        gw, gh = mask.size
        scale = fill * min(cw / gw, ch / gh)
        tw, th = max(1, min(cw, round(gw * scale))), max(1, min(ch, round(gh * scale)))
        mask = mask.resize((tw, th), Image.LANCZOS)
        free_x, free_y = cw - tw, ch - th
        max_dx = min(self.shift * cw, free_x / 2)
        max_dy = min(self.shift * ch, free_y / 2)
        x0 = int(round(free_x / 2 + dx * max_dx))
        y0 = int(round(free_y / 2 + dy * max_dy))
        canvas = Image.new("L", (cw, ch), 0)
        canvas.paste(mask, (x0, y0))
        if sigma > 0:
            canvas = canvas.filter(ImageFilter.GaussianBlur(sigma * max(ch, cw)))
        if self.factor > 1:
            canvas = canvas.resize((w, h), Image.BOX)
        m = np.asarray(canvas, dtype=np.float32) / 255.0
        if self.autocontrast:
            peak = float(m.max())
            if peak > 0:
                m = m / peak
        bg, fg = (self.foreground, self.background) if self.invert else (self.background,
                                                                          self.foreground)
        img = bg + m[..., None] * (fg - bg)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)
