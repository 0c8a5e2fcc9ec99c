"""The anchor-generator interface, its registry, and format matching.

An anchor generator turns class names into class-pure synthetic images. Every image is a pure
function of ``(class_index, class_name, k, seed)`` (plus the generator's options), so any single
anchor can be regenerated on its own with :meth:`AnchorGenerator.generate_one`.

>>> gen = create_generator("glyph", size=32)
>>> anchors = gen.generate(["0", "1"], per_class=10, seed=0)   # LabeledImages, (20, 32, 32, 1)
>>> anchors = match_format(anchors, size=(8, 8), channels=1)
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..data import LabeledImages
from ..errors import InputError
from ..progress import progress as progress_bar
from ..registry import Registry
from ..validation import check_channels, check_count, check_seed, check_size

Size = Union[int, Tuple[int, int], Sequence[int]]


class AnchorGenerator(ABC):
    """Class names in, class-pure uint8 images out.

    Subclasses set :attr:`name` and implement :meth:`generate_one`; options such as the image
    size belong in the constructor (and thus in :func:`create_generator`'s ``**options``).
    Generators that work in batches (e.g. diffusion models) may override :meth:`generate`, but
    must keep row ``c * per_class + k`` of ``generate(...)`` equal to
    ``generate_one(c, name, k, seed)``.
    """

    #: Registry name; also the prefix of the sample ids ("<name>-<class>-<k>").
    name: str = "generator"

    @abstractmethod
    def generate_one(self, class_index: int, class_name: str, k: int, seed: int = 0) -> np.ndarray:
        """Image ``k`` of class ``class_name`` (index ``class_index``) for ``seed``.

        Returns:
            uint8 ``(H, W, C)``, C in {1, 3}; identical for identical arguments.
        """

    def generate_batch(self, items: Sequence[Tuple[int, str, int]], seed: int = 0) -> List[np.ndarray]:
        """Images for several ``(class_index, class_name, k)`` work items at once.

        The default loops over :meth:`generate_one`; batched backends (diffusion models)
        override it, and must return exactly what ``generate_one`` would for each item (every
        image has its own seed, so batching never changes an image).
        """
        return [self.generate_one(c, name, k, seed) for c, name, k in items]

    def describe(self, class_index: int, class_name: str, k: int, seed: int = 0) -> Dict[str, Any]:
        """Provenance of one image for an anchor-set manifest (e.g. prompt, per-image seed,
        model id, steps, guidance, size). The default is the generator's :meth:`config`."""
        return {"generator": self.name, **self.config()}

    def prepare(self, class_names: Sequence[str]) -> None:
        """Check/cache per-class resources before a run (raise InputError early). Optional."""

    def config(self) -> Dict[str, Any]:
        """The options that determine the images (for reports and provenance)."""
        return {}

    # ------------------------------------------------------------------ helpers for subclasses
    @staticmethod
    def rng(class_index: int, k: int, seed: int) -> np.random.Generator:
        """The random generator of one image, derived from ``(seed, class_index, k)`` only."""
        entropy = [check_seed(seed), check_count(class_index, "class_index", minimum=0),
                   check_count(k, "k", minimum=0)]
        return np.random.default_rng(np.random.SeedSequence(entropy))

    def sample_id(self, class_name: str, k: int) -> str:
        return f"{self.name}-{class_name}-{k}"

    # ------------------------------------------------------------------ the batch entry point
    def generate(self, class_names: Sequence[str], per_class: int, *, seed: int = 0) -> LabeledImages:
        """``per_class`` anchors for each class, class-major.

        Args:
            class_names: the C class names (distinct, non-empty); label = index in this list.
            per_class: images per class, >= 1.
            seed: non-negative integer; image ``k`` of class ``c`` depends only on (seed, c, k).

        Returns:
            LabeledImages with uint8 images ``(C * per_class, H, W, ch)``, labels
            ``repeat(arange(C), per_class)`` and ids ``"<name>-<class>-<k>"``.
        """
        names = validate_class_names(class_names)
        per_class = check_count(per_class, "per_class")
        seed = check_seed(seed)
        self.prepare(names)
        total = len(names) * per_class
        images: Optional[np.ndarray] = None
        ids: List[str] = []
        bar = progress_bar(total=total, desc=f"{self.name} anchors", unit="img")
        try:
            for c, cname in enumerate(names):
                for k in range(per_class):
                    img = as_hwc(self.generate_one(c, cname, k, seed), self.name)
                    if images is None:
                        images = np.empty((total,) + img.shape, dtype=np.uint8)
                    elif img.shape != images.shape[1:]:
                        raise ValueError(f"{self.name}: image shape {img.shape} differs from "
                                         f"{images.shape[1:]}")
                    images[c * per_class + k] = img
                    ids.append(self.sample_id(cname, k))
                    bar.update(1)
        finally:
            bar.close()
        assert images is not None
        labels = np.repeat(np.arange(len(names), dtype=np.int64), per_class)
        return LabeledImages(images=images, labels=labels, class_names=names, ids=ids)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({opts})"


GENERATORS: Registry[AnchorGenerator] = Registry("generator")


def generator_options(name: str) -> Optional[List[str]]:
    """The options the generator ``name`` takes (its factory's keyword parameters); None when it
    takes any."""
    factory = GENERATORS.get(name)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return [p for p, v in params.items() if v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD) and p != "self"]


def create_generator(name: str, **options: Any) -> AnchorGenerator:
    """The generator registered as ``name``, built with ``options`` (e.g. ``size=32``).

    Unknown names and unknown options raise InputError listing the valid choices.
    """
    valid = generator_options(name)
    if valid is not None:
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise InputError(f"generator {name!r} has no option {unknown[0]!r}; "
                             f"options: {', '.join(valid)}")
    return GENERATORS.get(name)(**options)


# ---------------------------------------------------------------------- validation
def validate_class_names(class_names: Sequence[str]) -> List[str]:
    """The class names as a list of str; InputError on none, empty or duplicate names."""
    if isinstance(class_names, (str, bytes)):
        raise InputError(f"class_names must be a list of names, not the single string "
                         f"{class_names!r}")
    names = list(class_names)
    if not names:
        raise InputError("class_names is empty: give at least one class name")
    out: List[str] = []
    seen: Dict[str, int] = {}
    for i, n in enumerate(names):
        if n is None or not str(n).strip():
            raise InputError(f"class_names: class {i} has an empty name")
        s = str(n)
        if s in seen:
            raise InputError(f"class_names: duplicate class name {s!r} (classes {seen[s]} and {i})")
        seen[s] = i
        out.append(s)
    return out


def as_hwc(img: np.ndarray, who: str) -> np.ndarray:
    """One generated image as uint8 ``(H, W, 1|3)``; anything else is a bug in the generator."""
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3) or img.dtype != np.uint8:
        raise ValueError(f"{who}: generate_one must return uint8 (H, W, 1|3), got "
                         f"{img.dtype} {img.shape}")
    return img


# ---------------------------------------------------------------------- format matching
def resize_image(img: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Resize one uint8 ``(H, W, C)`` image to ``size=(H', W')``.

    Downsampling uses PIL's BOX filter (area averaging, like OpenCV's INTER_AREA: exact block
    means for integer factors); upsampling or mixed scaling uses LANCZOS.
    """
    h, w, c = img.shape
    th, tw = size
    if (h, w) == (th, tw):
        return img.copy()
    resample = Image.BOX if (th <= h and tw <= w) else Image.LANCZOS
    if c == 1:
        out = np.asarray(Image.fromarray(img[..., 0], mode="L").resize((tw, th), resample))
        return out[..., None]
    out = np.asarray(Image.fromarray(img, mode="RGB").resize((tw, th), resample))
    return np.ascontiguousarray(out)


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 ``(N, H, W, C)`` to ``channels``: RGB->L by ITU-R 601 luminance (as PIL's
    ``convert("L")``), L->RGB by repetition."""
    c = images.shape[-1]
    if c == channels:
        return images.copy()
    if channels == 3:
        return np.repeat(images, 3, axis=-1)
    # PIL: L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16
    x = images.astype(np.uint32)
    lum = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16
    return lum.astype(np.uint8)[..., None]


def match_format(anchors: LabeledImages, *, size: Size, channels: int) -> LabeledImages:
    """The anchors at the dataset's resolution ``size=(H, W)`` and ``channels`` (1 or 3).

    Labels, class names and ids are kept. See :func:`resize_image` and :func:`convert_channels`.
    """
    hw = check_size(size)
    channels = check_channels(channels)
    if anchors.images is None:
        raise InputError("match_format needs in-memory anchor images, got a path-backed set")
    imgs = anchors.images
    if imgs.shape[1:3] != hw:
        out = np.empty((len(imgs),) + hw + (imgs.shape[-1],), dtype=np.uint8)
        for i, img in enumerate(imgs):
            out[i] = resize_image(img, hw)
        imgs = out
    imgs = convert_channels(imgs, channels)
    return LabeledImages(images=imgs, labels=anchors.labels.copy(),
                         class_names=list(anchors.class_names),
                         paths=None if anchors.paths is None else list(anchors.paths),
                         ids=list(anchors.ids) if anchors.ids is not None else None)
