"""Decoding image files with Pillow: probing headers, choosing the working size and channels,
converting any mode to L / RGB, and :func:`materialize` (a path-backed set -> uint8 arrays).

Every unreadable, truncated or corrupt file raises a one-line InputError naming it (or, with
``skip_bad``, is left out and reported).
"""
from __future__ import annotations

import os
import stat
import warnings
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError, one_line
from ..progress import progress as progress_bar
from ..validation import check_memory, check_optional_channels, check_optional_size
from .container import LabeledImages
from .hf import REF_PREFIX, open_ref_image, parse_ref

__all__ = ["IMAGE_EXTENSIONS", "is_image_file", "open_image", "probe_image", "decode_image", "convert_image",
           "choose_geometry", "decode_images", "materialize", "LARGE_IMAGE_PIXELS"]

Size = Tuple[int, int]

#: Image file extensions picked up by the folder loader (matched case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

_GRAY_MODES = ("1", "L", "LA", "La", "I", "F") + ("I;16", "I;16L", "I;16B", "I;16N")


def is_image_file(name: str) -> bool:
    """A file name with an image extension that is not hidden."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def open_image(path: str):
    """A PIL image of a file, or of a Hugging Face dataset row reference (``hf:...``,
    :mod:`synref.data.hf`); InputError naming it when it cannot be opened."""
    from PIL import Image

    if str(path).startswith(REF_PREFIX) and parse_ref(path) is not None:
        return open_ref_image(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"image file not found: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot open image {path}: {one_line(exc)}") from None
    if not stat.S_ISREG(mode):  # a named pipe or device would block or never end
        raise InputError(f"image {path} is not a regular file (a named pipe, device or socket)")
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise InputError(f"image file not found: {path}") from None
    except Exception as exc:  # UnidentifiedImageError, PermissionError, ...
        raise InputError(f"cannot open image {path}: {one_line(exc)}") from None


def probe_image(path: str) -> Tuple[str, Size]:
    """(mode, (H, W) after EXIF rotation) from the file header, without decoding pixels."""
    with open_image(path) as img:
        try:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
        except Exception as exc:
            raise InputError(f"cannot read image {path}: {one_line(exc)}") from None
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        return img.mode, (h, w)


def _to_l_or_rgb(img, fmt: Optional[str]):
    """``img`` as mode "L" (single-channel sources) or "RGB"; alpha is composited over black."""
    from PIL import Image

    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16") or fmt == "PNG" or arr.max(initial=0) > 255:
            arr = np.clip(arr, 0, 65535) / 257.0  # 16-bit: 0..65535 -> 0..255
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        rgb = Image.alpha_composite(black, rgba).convert("RGB")
        return rgb.convert("L") if mode in ("LA", "La") else rgb
    return img.convert("RGB")  # P, CMYK, YCbCr, HSV, RGBX, ...


def _resize(img, size: Size):
    from PIL import Image

    h, w = size
    if img.size == (w, h):
        return img
    shrink = w <= img.size[0] and h <= img.size[1]
    resample = Image.Resampling.LANCZOS if shrink else Image.Resampling.BICUBIC
    return img.resize((w, h), resample=resample)


#: images with more pixels than this are brought near the working size while they are decoded
#: (JPEG: ``draft``, a DCT-domain downscale; others: an integer box ``reduce`` to at least twice the
#: working size before the final resize), so a huge file costs about its own pixels once, not
#: several full-size RGB copies. Smaller images are decoded exactly as before.
LARGE_IMAGE_PIXELS = 4096 * 4096
#: the transposition of each EXIF orientation (what ``ImageOps.exif_transpose`` applies).
_EXIF_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
                   7: "TRANSVERSE", 8: "ROTATE_90"}


def decode_image(path: str, size: Optional[Size], channels: int) -> np.ndarray:
    """One image as uint8 ``(H, W, channels)``; any decoding problem -> InputError naming it.
    Images above :data:`LARGE_IMAGE_PIXELS` are reduced while decoded (Pillow's decompression-bomb
    warning is not raised for them: their memory is bounded here; above Pillow's hard limit the
    file is refused, naming it)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with open_image(path) as img:
            try:
                orientation = img.getexif().get(0x0112, 1)
                large = size is not None and img.size[0] * img.size[1] > LARGE_IMAGE_PIXELS
                target = None if size is None else ((size[1], size[0]) if orientation in (5, 6, 7, 8) else size)
                if large and img.format == "JPEG":
                    img.draft(img.mode, (2 * target[1], 2 * target[0]))  # type: ignore[index]
                img.load()
                fmt = img.format
                if large:
                    img = _reduce(img, fmt, target)  # type: ignore[arg-type]
                if orientation in _EXIF_TRANSPOSE:
                    img = img.transpose(getattr(Image.Transpose, _EXIF_TRANSPOSE[orientation]))
                img = _to_l_or_rgb(img, fmt)
                img = img.convert("L" if channels == 1 else "RGB")
                if size is not None:
                    img = _resize(img, size)
                arr = np.asarray(img, dtype=np.uint8)
            except InputError:
                raise
            except Exception as exc:  # truncated / corrupt data, unsupported mode, ...
                raise InputError(f"cannot decode image {path}: {one_line(exc)}") from None
    return arr.reshape(arr.shape[0], arr.shape[1], channels)


def _reduce(img, fmt: Optional[str], target: Size):
    """``img`` box-reduced by an integer factor to at least twice ``target`` (H, W), in L / RGB."""
    factor = min(img.size[0] // (2 * target[1]), img.size[1] // (2 * target[0]))
    if factor < 2:
        return img
    return _to_l_or_rgb(img, fmt).reduce(factor)


def convert_image(img: np.ndarray, size: Optional[Size], channels: int) -> np.ndarray:
    from PIL import Image

    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    pil = pil.convert("L" if channels == 1 else "RGB")
    if size is not None:
        pil = _resize(pil, size)
    arr = np.asarray(pil, dtype=np.uint8)
    return arr.reshape(arr.shape[0], arr.shape[1], channels)


def choose_geometry(probed: Sequence[Tuple[str, Size]], size: Optional[Size], channels: Optional[int], *,
                    stacklevel: int = 2) -> Tuple[Size, int]:
    """The working ``(H, W)`` and channels for images whose headers gave ``(mode, (H, W))``:
    channels 1 when every image is single-channel, else 3; the most common size, with a
    UserWarning when sizes differ. Given ``size`` / ``channels`` are kept."""
    if channels is None:
        channels = 1 if all(mode in _GRAY_MODES for mode, _ in probed) else 3
    if size is None:
        counts = Counter(hw for _, hw in probed)
        size = counts.most_common(1)[0][0]
        if len(counts) > 1:
            odd = len(probed) - counts[size]
            seen = ", ".join(f"{h}x{w}" for (h, w), _ in counts.most_common(4))
            warnings.warn(
                f"{odd} of {len(probed)} images are not {size[0]}x{size[1]} (sizes seen: {seen}"
                f"{', ...' if len(counts) > 4 else ''}); resizing all to {size[0]}x{size[1]}, "
                "the most common size; pass size=(H, W) to choose", UserWarning, stacklevel=stacklevel + 1)
    return (int(size[0]), int(size[1])), int(channels)


#: ``check(size, channels, num_images)``: called with the working geometry before any pixel is
#: decoded (e.g. to refuse sizes whose memory the machine does not have).
GeometryCheck = Callable[[Size, int, int], None]


def decode_images(ds: LabeledImages, *, size: Optional[Union[int, Size]] = None,
                  channels: Optional[int] = None, skip_bad: bool = False,
                  check: Optional[GeometryCheck] = None) -> Tuple[LabeledImages, List[Dict[str, str]]]:
    """An array-backed copy of ``ds`` and the files left out: images uint8 ``(N, H, W, C)``;
    labels, ids, paths kept.

    Path-backed images are decoded with Pillow: EXIF rotation applied; palette, CMYK, YCbCr,
    1-bit, 16-bit (scaled, not clipped) and float modes converted; alpha composited over black.
    ``channels``: 3 (RGB), 1 (L), or None = 1 when every image is single-channel, else 3.
    ``size=(H, W)`` resizes every image (LANCZOS when shrinking, BICUBIC otherwise); when None
    and the sizes differ, all are resized to the most common size, with a UserWarning.
    An array-backed ``ds`` is returned as is unless ``size``/``channels`` ask for a change.
    A corrupt, truncated or unreadable file raises InputError naming it; with ``skip_bad`` it is
    left out instead and listed as ``{"file", "reason"}`` in the second value (after the files
    the loader left out, ``ds.skipped``). ``check(size, channels, n)`` sees the working geometry
    before anything is decoded; the output array's own memory is checked too.
    """
    hw = check_optional_size(size)
    channels = check_optional_channels(channels)
    n = len(ds)
    loader_skipped = list(ds.skipped)

    if ds.images is not None:
        imgs = ds.images
        want_c = channels or imgs.shape[-1]
        out_hw = hw or tuple(imgs.shape[1:3])
        if check is not None:
            check((int(out_hw[0]), int(out_hw[1])), int(want_c), n)
        if (hw is None or imgs.shape[1:3] == hw) and want_c == imgs.shape[-1]:
            return ds, loader_skipped
        _check_output_memory(n, out_hw, want_c)
        out = np.empty((n,) + tuple(out_hw) + (want_c,), dtype=np.uint8)
        for i in progress_bar(range(n), desc="converting images", total=n, unit="img"):
            out[i] = convert_image(imgs[i], hw, want_c)
        return LabeledImages(out, ds.labels.copy(), list(ds.class_names),
                             None if ds.paths is None else list(ds.paths), list(ds.ids),
                             loader_skipped), loader_skipped

    paths = list(ds.paths or [])
    if n == 0:
        raise InputError("cannot materialize an empty image set")
    bad: Dict[int, str] = {}

    def attempt(i: int, fn):
        if not skip_bad:
            return fn(paths[i])
        try:
            return fn(paths[i])
        except InputError as exc:
            bad[i] = str(exc)
            return None

    if hw is None or channels is None:
        modes: List[str] = []
        sizes: List[Size] = []
        for i in progress_bar(range(n), desc="reading image headers", total=n, unit="img",
                              enabled=None if n >= 2000 else False):
            probed = attempt(i, probe_image)
            if probed is not None:
                modes.append(probed[0])
                sizes.append(probed[1])
        if not sizes:
            raise InputError(f"none of the {n} images could be read (first: {bad[min(bad)]})")
        hw, channels = choose_geometry(list(zip(modes, sizes)), hw, channels, stacklevel=3)
    if check is not None:
        check(hw, channels, n)
    _check_output_memory(n, hw, channels)
    out = np.empty((n,) + tuple(hw) + (channels,), dtype=np.uint8)
    for i in progress_bar(range(n), desc="decoding images", total=n, unit="img"):
        if i in bad:
            continue
        decoded = attempt(i, lambda path: decode_image(path, hw, channels))
        if decoded is not None:
            out[i] = decoded
    if not bad:
        return LabeledImages(out, ds.labels.copy(), list(ds.class_names), paths, list(ds.ids),
                             loader_skipped), loader_skipped
    skipped = loader_skipped + [{"file": paths[i], "reason": reason} for i, reason in sorted(bad.items())]
    keep = np.array([i for i in range(n) if i not in bad], dtype=np.int64)
    if keep.size == 0:
        raise InputError(f"none of the {n} images could be read (first: {bad[min(bad)]})")
    return LabeledImages(out[keep], ds.labels[keep].copy(), list(ds.class_names),
                         [paths[i] for i in keep], [ds.ids[i] for i in keep], skipped), skipped


def _check_output_memory(n: int, hw: Sequence[int], channels: int) -> None:
    """Refuse an image array larger than the memory available (before allocating it)."""
    check_memory(float(n) * hw[0] * hw[1] * channels, f"holding {n} images of {hw[0]}x{hw[1]}x{channels}",
                 "choose a smaller working image size (--image-size) or fewer images")


def materialize(ds: LabeledImages, *, size: Optional[Union[int, Size]] = None,
                channels: Optional[int] = None, skip_bad: bool = False) -> LabeledImages:
    """:func:`decode_images` without the list of files left out."""
    return decode_images(ds, size=size, channels=channels, skip_bad=skip_bad)[0]
