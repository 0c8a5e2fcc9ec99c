"""The ``clip`` feature space: CLIP image embeddings through ``transformers`` (no torchvision).

Preprocessing is done here (numpy / PIL / torch) and matches ``CLIPImageProcessor``; the model
is a hub id found in the Hugging Face cache or a local ``save_pretrained`` folder.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..optional import require
from ..validation import as_image_array
from .base import FEATURE_EXTRACTORS, ExtractorContext, PathLike
from .hub_model import HubModelExtractor

__all__ = ["ClipExtractor", "DEFAULT_CLIP_MODEL", "CLIP_MEAN", "CLIP_STD", "clip_preprocess",
           "load_clip_preprocess_config"]

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
    arr = as_image_array(images)
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


@FEATURE_EXTRACTORS.register("clip")
class ClipExtractor(HubModelExtractor):
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
    what = "CLIP model"

    @classmethod
    def from_context(cls, context: ExtractorContext) -> "ClipExtractor":
        return cls(context.clip_model or DEFAULT_CLIP_MODEL, device=context.device)

    def __init__(self, model: PathLike = DEFAULT_CLIP_MODEL, *, normalize: bool = True,
                 device: Optional[Union[str, torch.device]] = None, dtype: Optional[str] = None,
                 cache_dir: Optional[PathLike] = None,
                 local_files_only: Optional[bool] = None) -> None:
        self._init_source(model, normalize=normalize, device=device, dtype=dtype, cuda_dtype="float16",
                          cache_dir=cache_dir, local_files_only=local_files_only)
        self._model: Optional[nn.Module] = None
        self._preprocess: Optional[Dict[str, Any]] = None

    def preprocess_config(self) -> Dict[str, Any]:
        if self._preprocess is None:
            self._preprocess = load_clip_preprocess_config(self.model_dir())
        return self._preprocess

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d.update(model=self.model_id, model_dir=str(self.model_dir()), normalize=self.normalize,
                 dtype=self.dtype, preprocess=self.preprocess_config())
        return d

    # -- model ---------------------------------------------------------------------------
    def _load_model(self) -> nn.Module:
        if self._model is None:
            CLIPVisionModelWithProjection = require("transformers", "clip features").CLIPVisionModelWithProjection
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

    def _embedding_dim(self) -> int:
        return self.output_dim

    def _embed(self, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=pixels).image_embeds

