"""The ``hf:ID_OR_FOLDER`` feature space: any ``transformers`` vision backbone (DINOv2, SigLIP,
CLIP, ViT, ConvNeXt, ResNet, ...) loaded through the Auto classes, frozen, label-free.

``hf:facebook/dinov2-small`` (a hub id, looked for in the Hugging Face cache; never downloaded
with ``HF_HUB_OFFLINE=1``) or ``hf:/path/to/folder`` (a ``save_pretrained`` folder with
``config.json``, the weights and ``preprocessor_config.json``).

**Preprocessing** is read from the model's image processor (loaded with transformers' PIL
backend, so its class defaults apply) and done here in numpy / PIL / torch
(:func:`~synref.features.clip.clip_preprocess`: resize, center crop, rescale, normalise; no
torchvision, whose "fast" processors synref does not use): ``size`` as shortest edge or exact
height x width, ``crop_size`` when ``do_center_crop``, ``resample``, ``rescale_factor``,
``image_mean`` / ``image_std``, and ConvNeXt's ``crop_pct`` (shortest edge ``size / crop_pct``
then a ``size`` crop below 384 px, a square warp from 384 up). A processor that preprocesses in
its own way (patch packing, padding, offsets) is refused with one line.

**Pooled output** (``pooling="auto"``, per architecture):

1. image-text models (``get_image_features``: CLIP, SigLIP, ... full checkpoints): the image
   embedding, where the contrastive loss lives (CLIP: projected CLS; SigLIP: the attention-pool
   head);
2. otherwise the backbone's own ``pooler_output`` when the checkpoint holds every weight of its
   pooler (DINOv2 / CLIP vision: layer-normed CLS token; SigLIP vision: the attention-pool head;
   ConvNeXt: layer-normed global average; ResNet: global average pool);
3. otherwise the mean of ``last_hidden_state`` over tokens / positions (e.g. a ViT from an
   ImageNet classification checkpoint, whose pooler is not in the checkpoint and would be random).

``pooling`` may also be ``"image-embeds"``, ``"pooler"``, ``"cls"`` (first token of
``last_hidden_state``) or ``"mean"``. Features are L2-normalised float32 (``normalize``).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..hub import weight_files
from ..optional import require
from .base import FEATURE_EXTRACTORS, ExtractorContext, PathLike
from .hub_model import HubModelExtractor

__all__ = ["HFExtractor", "HF_POOLINGS", "hf_preprocess_config"]

#: the pooled outputs a user may ask for (``auto``: see the module docstring).
HF_POOLINGS = ("auto", "image-embeds", "pooler", "cls", "mean")
#: image processors (transformers 4.x slow classes; the PIL backend of 5.x is checked by method)
#: whose preprocessing is resize / center crop / rescale / normalise and nothing else.
_PLAIN_PROCESSORS = ("BitImageProcessor", "CLIPImageProcessor", "ViTImageProcessor", "SiglipImageProcessor",
                     "DeiTImageProcessor", "BlipImageProcessor", "ChineseCLIPImageProcessor",
                     "BeitImageProcessor", "ConvNextImageProcessor")
#: the steps a processor may override and still be read here (BEiT only adds segmentation maps).
_OWN_STEPS = ("preprocess", "_preprocess", "resize", "center_crop", "rescale", "normalize")
#: missing checkpoint tensors that inference never uses (DINOv2's mask token).
_UNUSED_TENSORS = ("mask_token",)


# ------------------------------------------------------------------------------ preprocessing
def _field(obj: Any, key: str) -> Any:
    """``obj[key]`` of a dict or ``obj.key`` of a transformers SizeDict (None when absent)."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _plain_processor(processor: Any) -> bool:
    """True when ``processor`` does resize / crop / rescale / normalise only."""
    name = type(processor).__name__
    base = name[:-3] if name.endswith("Pil") else name
    if base in _PLAIN_PROCESSORS:
        return True
    try:
        from transformers.image_processing_backends import PilBackend
    except ImportError:   # transformers 4.x: the named classes only
        return False
    return isinstance(processor, PilBackend) and all(
        getattr(type(processor), step, None) is getattr(PilBackend, step, None) for step in _OWN_STEPS)


def _load_processor(directory: Path, what: str) -> Any:
    """The model's image processor (PIL backend, no torchvision)."""
    if not (directory / "preprocessor_config.json").is_file():
        raise InputError(f"{what}: {directory} has no preprocessor_config.json, so its preprocessing is unknown "
                         "(save the image processor beside the model: processor.save_pretrained(folder))")
    transformers = require("transformers", "hf features")
    major = int(str(transformers.__version__).split(".")[0])
    options: Dict[str, Any] = {"backend": "pil"} if major >= 5 else {"use_fast": False}
    try:
        with _quiet_transformers():
            return transformers.AutoImageProcessor.from_pretrained(str(directory), local_files_only=True, **options)
    except Exception as exc:
        raise InputError(f"{what}: cannot read its image processor in {directory} "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None


def hf_preprocess_config(directory: PathLike, *, what: str = "hf model") -> Dict[str, Any]:
    """The :func:`~synref.features.clip.clip_preprocess` options of the image processor saved in
    ``directory`` (``preprocessor_config.json``, read by transformers' PIL-backend class so its
    defaults apply): ``resize`` (``("shortest_edge", n)`` / ``("exact", (h, w))`` / None),
    ``crop`` (``(h, w)`` / None), ``resample`` (PIL code), ``rescale``, ``mean``, ``std``, and
    ``processor`` (its class name). InputError for a processor whose steps are not these."""
    directory = Path(directory)
    proc = _load_processor(directory, what)
    name = type(proc).__name__
    if not _plain_processor(proc):
        raise InputError(f"{what}: its image processor {name} preprocesses in its own way, which synref does not "
                         "reproduce (it reads resize / center crop / rescale / normalize processors and ConvNeXt's)")
    if getattr(proc, "do_pad", False):
        raise InputError(f"{what}: its image processor {name} pads images (do_pad), which synref does not reproduce")
    size = getattr(proc, "size", None)
    edge, height, width = _field(size, "shortest_edge"), _field(size, "height"), _field(size, "width")
    others = [k for k in ("longest_edge", "max_height", "max_width", "min_pixels", "max_pixels") if _field(size, k)]
    crop_pct = getattr(proc, "crop_pct", None)
    resize: Any = None
    crop: Optional[Tuple[int, int]] = None
    if getattr(proc, "do_resize", False):
        if others or not (edge or (height and width)):
            raise InputError(f"{what}: image processor {name} has size {size!r}; synref reads a shortest edge or a "
                             "height x width")
        if crop_pct is not None and name.startswith("ConvNext"):
            if not edge:
                raise InputError(f"{what}: ConvNeXt image processor without size.shortest_edge ({size!r})")
            if getattr(proc, "do_center_crop", False):
                raise InputError(f"{what}: ConvNeXt image processor with crop_pct and do_center_crop together")
            if int(edge) < 384:          # ConvNextImageProcessor.resize
                resize, crop = ("shortest_edge", int(int(edge) / float(crop_pct))), (int(edge), int(edge))
            else:
                resize = ("exact", (int(edge), int(edge)))
        else:
            resize = ("shortest_edge", int(edge)) if edge else ("exact", (int(height), int(width)))
    if getattr(proc, "do_center_crop", False):
        crop_size = getattr(proc, "crop_size", None)
        ch, cw = _field(crop_size, "height"), _field(crop_size, "width")
        if not (ch and cw):
            raise InputError(f"{what}: image processor {name} crops to {crop_size!r}; synref reads height x width")
        crop = (int(ch), int(cw))
    resample = getattr(proc, "resample", None)
    normalize = bool(getattr(proc, "do_normalize", False))
    mean = np.atleast_1d(np.asarray(proc.image_mean, dtype=np.float64)).tolist() if normalize else None
    std = np.atleast_1d(np.asarray(proc.image_std, dtype=np.float64)).tolist() if normalize else None
    return {
        "processor": name[:-3] if name.endswith("Pil") else name,
        "resize": resize, "crop": crop,
        "resample": 2 if resample is None else int(resample),     # the PIL backend's default: bilinear
        "rescale": float(getattr(proc, "rescale_factor", 1 / 255)) if getattr(proc, "do_rescale", False) else 1.0,
        "mean": mean, "std": std,
    }


def _input_side(config: Dict[str, Any]) -> Optional[int]:
    """The square side images are best decoded at for ``config``: the resize target (a square
    image then needs no second resize before the crop), else the crop."""
    resize, crop = config.get("resize"), config.get("crop")
    if resize is not None:
        kind, value = resize
        return int(value) if kind == "shortest_edge" else int(max(value))
    return None if crop is None else int(max(crop))


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' loading reports and progress bars off (synref says what went wrong itself)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:   # pragma: no cover - transformers missing: require() reports it
        yield
        return
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


# ------------------------------------------------------------------------------ extractor
@FEATURE_EXTRACTORS.register("hf", argument="model")
class HFExtractor(HubModelExtractor):
    """Pooled features of any ``transformers`` vision backbone (``AutoModel``), frozen.

    Options:
        model: hub id (found in the Hugging Face cache; downloaded only when online) or a local
            ``save_pretrained`` folder with config.json, the weights and preprocessor_config.json.
            ``hf:MODEL`` names it from the CLI.
        pooling: ``auto`` (default; module docstring), ``image-embeds``, ``pooler``, ``cls``, ``mean``.
        normalize: L2-normalise the features (default True).
        device: default ``cuda`` when available, else ``cpu``.
        dtype: ``float32`` / ``bfloat16`` / ``float16``; default float32 on cpu, bfloat16 on cuda
            (float16 where bfloat16 is not supported).
        cache_dir: Hugging Face cache to look in (default ``HF_HUB_CACHE``).
        local_files_only: never download (default: on when ``HF_HUB_OFFLINE`` is set).

    The fingerprint hashes config.json, every weight file (a hub cache blob by its name, so no
    read), the preprocessing read from the processor, ``pooling``, ``normalize`` and ``dtype``:
    the same model in the hub cache and in a folder share their cached features. The model is
    loaded lazily (a cache hit never loads it).
    """

    name = "hf"
    what = "hf model"

    @classmethod
    def from_context(cls, context: ExtractorContext) -> "HFExtractor":
        if not context.argument:
            raise InputError("feature space 'hf' needs a model: hf:ID_OR_FOLDER (a hub id in the Hugging Face "
                             "cache, e.g. hf:facebook/dinov2-small, or a save_pretrained folder)")
        return cls(context.argument, device=context.device)

    def __init__(self, model: PathLike, *, pooling: str = "auto", normalize: bool = True,
                 device: Optional[Union[str, torch.device]] = None, dtype: Optional[str] = None,
                 cache_dir: Optional[PathLike] = None, local_files_only: Optional[bool] = None) -> None:
        if pooling not in HF_POOLINGS:
            raise InputError(f"hf extractor: pooling must be one of {', '.join(HF_POOLINGS)}, got {pooling!r}")
        self.pooling = pooling
        cuda_dtype = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"
        self._init_source(model, normalize=normalize, device=device, dtype=dtype, cuda_dtype=cuda_dtype,
                          cache_dir=cache_dir, local_files_only=local_files_only)
        #: how errors name this model
        self.label = f"hf model {self.model_id!r}"
        self._model: Optional[nn.Module] = None
        self._pooler_loaded = True
        self._preprocess: Optional[Dict[str, Any]] = None
        #: the pooling actually used (``pooling``, or what ``auto`` chose on the first batch)
        self.resolved_pooling: Optional[str] = None if pooling == "auto" else pooling

    def preprocess_config(self) -> Dict[str, Any]:
        """:func:`hf_preprocess_config` of the model's folder."""
        if self._preprocess is None:
            self._preprocess = hf_preprocess_config(self.model_dir(), what=self.label)
        return self._preprocess

    @property
    def input_side(self) -> Optional[int]:  # type: ignore[override]
        return _input_side(self.preprocess_config())

    def _fingerprint_options(self) -> Dict[str, Any]:
        return {"pooling": self.pooling}

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        try:
            model_type = json.loads((self.model_dir() / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError):
            model_type = None
        d.update(model=self.model_id, model_dir=str(self.model_dir()), model_type=model_type,
                 pooling=self.pooling, resolved_pooling=self.resolved_pooling, normalize=self.normalize,
                 dtype=self.dtype, preprocess=self.preprocess_config())
        return d

    # -- model ---------------------------------------------------------------------------
    def _load_model(self) -> nn.Module:
        if self._model is not None:
            return self._model
        transformers = require("transformers", "hf features")
        d = self.model_dir()
        src = str(d) if (self.is_local or weight_files(d)) else self.model_id
        try:
            with _quiet_transformers():
                model, info = transformers.AutoModel.from_pretrained(
                    src, cache_dir=self.cache_dir, local_files_only=self.local_files_only, output_loading_info=True)
        except OSError as exc:
            raise self._not_found(" ".join(str(exc).split())[:160]) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{self.label}: transformers cannot build a model from {d / 'config.json'} "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None
        if not hasattr(model, "get_image_features") and getattr(model, "main_input_name", None) != "pixel_values":
            raise InputError(f"{self.label} ({type(model).__name__}) is not a vision model: its input is "
                             f"{getattr(model, 'main_input_name', '?')}, not pixel_values")
        missing = sorted(info.get("missing_keys") or [])
        pooler = [k for k in missing if k.split(".")[0] == "pooler" or ".pooler." in f".{k}"]
        lost = [k for k in missing if k not in pooler and not k.endswith(_UNUSED_TENSORS)]
        if lost:
            raise InputError(f"{self.label}: its weights do not cover the {type(model).__name__} backbone "
                             f"({len(lost)} tensors missing, e.g. {lost[0]}): not a checkpoint of this architecture")
        self._pooler_loaded = not pooler
        if self.pooling == "pooler" and pooler:
            raise InputError(f"{self.label}: its checkpoint has no pooler weights ({pooler[0]} missing), so "
                             "pooling='pooler' would be random; use pooling='mean' or 'cls'")
        if self.pooling == "image-embeds" and not hasattr(model, "get_image_features"):
            raise InputError(f"{self.label} ({type(model).__name__}) has no image embedding (get_image_features); "
                             "use pooling='auto', 'pooler', 'cls' or 'mean'")
        self._model = model.to(device=self.device, dtype=getattr(torch, self.dtype)).eval()
        return self._model

    def _embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The pooled features ``(n, D)`` of pixel values ``x`` ``(n, 3, h, w)``."""
        pooling = self.resolved_pooling or self.pooling
        if pooling in ("auto", "image-embeds") and hasattr(model, "get_image_features"):
            out = model.get_image_features(pixel_values=x)
            emb = out if isinstance(out, torch.Tensor) else _output(out, "pooler_output")
            self.resolved_pooling = "image-embeds"
            return emb.flatten(1)
        out = model(pixel_values=x)
        if pooling == "auto":
            if _output(out, "image_embeds") is not None:
                pooling = "image-embeds"
            elif _output(out, "pooler_output") is not None and self._pooler_loaded:
                pooling = "pooler"
            elif _output(out, "last_hidden_state") is not None:
                pooling = "mean"
            else:
                raise InputError(f"{self.label} ({type(model).__name__}) has no usable pooled output (no image_embeds, "
                                 "pooler_output or last_hidden_state)")
            self.resolved_pooling = pooling
        key = {"image-embeds": "image_embeds", "pooler": "pooler_output"}.get(pooling, "last_hidden_state")
        value = _output(out, key)
        if value is None:
            raise InputError(f"{self.label} ({type(model).__name__}) has no {key}; use another pooling "
                             f"({', '.join(HF_POOLINGS)})")
        if pooling == "cls":
            if value.ndim != 3:
                raise InputError(f"{self.label}: pooling='cls' needs token outputs, got {tuple(value.shape)}")
            return value[:, 0]
        if pooling == "mean":
            return value.mean(dim=1) if value.ndim == 3 else value.flatten(2).mean(dim=2)
        return value.flatten(1)

    @property
    def feature_dim(self) -> int:
        """Length of a feature vector (runs the model on one blank image)."""
        side = _input_side(self.preprocess_config()) or 224
        return int(self._extract(np.zeros((1, side, side, 3), np.uint8), batch_size=1).shape[1])

    def _embedding_dim(self) -> int:
        return self.feature_dim


def _output(out: Any, key: str) -> Optional[torch.Tensor]:
    """``out.key`` of a transformers ModelOutput (None when absent)."""
    value = out.get(key) if hasattr(out, "get") else getattr(out, key, None)
    return value if isinstance(value, torch.Tensor) else None
