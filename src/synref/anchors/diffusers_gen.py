"""``diffusers``: text-to-image anchors from a diffusers pipeline (default SDXL-Turbo).

The paper draws 100 images per class from SDXL-Turbo (1 step, no guidance) with the prompt
``"A photo of {category}."``. Every image has its own ``torch.Generator`` seeded from
``(seed, class_index, k)`` (:func:`image_seed`), and prompts are batched with a *list* of
generators, so the batch size never changes which noise an image starts from.

>>> gen = create_generator("diffusers", size=512, batch_size=8)   # loads on first use
>>> anchors = gen.generate(["cat", "pickup_truck"], per_class=100, seed=0)
>>> gen.describe(1, "pickup_truck", 0)["prompt"]
'A photo of pickup truck.'

The model is a hub id (looked up in the Hugging Face cache; nothing is downloaded when
``HF_HUB_OFFLINE=1``) or a local folder written by ``pipeline.save_pretrained``. It is loaded
lazily, on the first image or in :meth:`DiffusersGenerator.prepare`, with
``AutoPipelineForText2Image.from_pretrained``. A CUDA out-of-memory error during a batch empties
the cache and retries once with half the batch size (for the rest of the run), then stops with
an error that suggests ``--batch-size``.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..data import LabeledImages
from ..errors import InputError, SynrefError
from ..progress import progress as progress_bar
from ..progress import progress_enabled
from ..device import resolve_device
from ..hub import hf_cache_dir, hf_offline
from ..optional import require
from ..validation import check_count, check_seed, check_size
from .base import GENERATORS, AnchorGenerator, Size, as_hwc, validate_class_names
from .prompts import PromptSpec, build_prompt_spec

DEFAULT_MODEL = "stabilityai/sdxl-turbo"

_DTYPES = {
    "fp16": "float16", "float16": "float16", "half": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp32": "float32", "float32": "float32", "float": "float32",
}


class OutOfMemoryError(SynrefError):
    """The accelerator ran out of memory even after halving the batch once."""


def image_seed(seed: int, class_index: int, k: int) -> int:
    """The torch seed of image ``k`` of class ``class_index``: a 63-bit integer derived from
    ``(seed, class_index, k)`` only (numpy ``SeedSequence``), the same entropy as
    :meth:`AnchorGenerator.rng`."""
    entropy = [check_seed(seed), check_count(class_index, "class_index", minimum=0),
               check_count(k, "k", minimum=0)]
    lo, hi = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return ((int(hi) << 32) | int(lo)) & ((1 << 63) - 1)


def is_oom_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an accelerator out-of-memory error."""
    try:
        import torch

        oom_types: Tuple[type, ...] = tuple(
            t for t in (getattr(torch, "OutOfMemoryError", None),
                        getattr(torch.cuda, "OutOfMemoryError", None)) if isinstance(t, type))
    except ImportError:  # pragma: no cover - torch is a core dependency
        oom_types = ()
    if oom_types and isinstance(exc, oom_types):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _resolve_dtype(dtype: Any, device: str) -> Any:
    import torch

    if dtype is None:
        return torch.float16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower().replace("torch.", ""))
    if name is None:
        raise InputError(f"dtype must be one of fp16, bf16, fp32 (or a torch dtype), got {dtype!r}")
    return getattr(torch, name)


def _resolve_device(device: Any) -> str:
    return str(resolve_device(device, "--device"))


def _looks_like_path(model: str) -> bool:
    """A local path rather than a hub id ("org/name")."""
    return (model.startswith((".", "~", "/", "\\")) or os.path.isabs(model)
            or model.count("/") > 1 or "\\" in model or model.endswith("/"))


@contextlib.contextmanager
def _quiet_loading(enabled: bool) -> Iterator[None]:
    """Silence diffusers'/transformers' loading bars while ``enabled`` (restored afterwards)."""
    if not enabled:
        yield
        return
    restore = []
    for modname in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            mod = __import__(modname, fromlist=["x"])
            was_disabled = mod.are_progress_bars_disabled() if hasattr(
                mod, "are_progress_bars_disabled") else False
            if not was_disabled:
                mod.disable_progress_bar()
                restore.append(mod)
        except Exception:  # pragma: no cover - cosmetic only
            pass
    try:
        yield
    finally:
        for mod in restore:
            mod.enable_progress_bar()


@GENERATORS.register("diffusers")
class DiffusersGenerator(AnchorGenerator):
    """Text-to-image anchors from a diffusers pipeline.

    Args:
        model: hub id (e.g. ``"stabilityai/sdxl-turbo"``, found in the Hugging Face cache) or a
            local folder saved with ``pipeline.save_pretrained``.
        prompts: a :class:`~synref.anchors.prompts.PromptSpec` (default ``"A photo of
            {category}."``).
        templates: prompt templates replacing those of ``prompts`` (each with ``{category}``);
            image ``k`` uses template ``k % len(templates)``.
        class_prompts_file: JSON or ``class<TAB>prompt`` file of per-class prompts (they win
            over the templates for their class).
        class_prompts: per-class prompts as a mapping (added over the file's).
        steps: denoising steps (SDXL-Turbo: 1-4).
        guidance: classifier-free guidance scale (SDXL-Turbo: 0.0, i.e. none).
        size: output size, int or ``(H, W)``, multiples of 8.
        batch_size: images per pipeline call.
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``; None picks cuda when available.
        dtype: ``"fp16"``, ``"bf16"``, ``"fp32"``; None: fp16 on CUDA, fp32 on CPU.
        negative_prompt: used only when ``guidance > 1`` (the pipeline ignores it otherwise).
        variant: weight file variant to load (e.g. ``"fp16"`` when only those were downloaded).
    """

    name = "diffusers"

    def __init__(self, *, model: str = DEFAULT_MODEL, prompts: Optional[PromptSpec] = None,
                 templates: Optional[Sequence[str]] = None,
                 class_prompts_file: Optional[str] = None,
                 class_prompts: Optional[Mapping[str, Any]] = None,
                 steps: int = 1, guidance: float = 0.0, size: Size = 512, batch_size: int = 4,
                 device: Optional[str] = None, dtype: Any = None,
                 negative_prompt: Optional[str] = None, variant: Optional[str] = None) -> None:
        if not isinstance(model, (str, os.PathLike)) or not str(os.fspath(model)).strip():
            raise InputError(f"model must be a hub id or a folder, got {model!r}")
        self.model = str(os.fspath(model))
        self.prompts = build_prompt_spec(prompts, templates, class_prompts_file, class_prompts)
        self.class_prompts_file = None if class_prompts_file is None else os.fspath(
            class_prompts_file)
        self.steps = check_count(steps, "steps")
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float, np.floating)) \
                or not np.isfinite(guidance) or guidance < 0:
            raise InputError(f"guidance must be a number >= 0, got {guidance!r}")
        self.guidance = float(guidance)
        self.size = check_size(size)
        if any(s % 8 for s in self.size):
            raise InputError(f"size must be a multiple of 8 for diffusion models, got {size!r}")
        self.batch_size = check_count(batch_size, "batch_size")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise InputError(f"negative_prompt must be a string, got {negative_prompt!r}")
        self.negative_prompt = negative_prompt
        self.variant = variant
        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self._pipe: Any = None
        self._effective_batch = self.batch_size
        self._oom_retried = False

    # ------------------------------------------------------------------ options / provenance
    def config(self) -> Dict[str, Any]:
        return {
            "model": self.model, "templates": list(self.prompts.templates),
            "class_prompts": {k: list(v) for k, v in self.prompts.class_prompts.items()},
            "steps": self.steps, "guidance": self.guidance, "size": self.size,
            "batch_size": self.batch_size, "device": self.device,
            "dtype": str(self.dtype).replace("torch.", ""),
            "negative_prompt": self.negative_prompt, "variant": self.variant,
        }

    def prompt_for(self, class_name: str, k: int) -> str:
        return self.prompts.prompt_for(class_name, k)

    def describe(self, class_index: int, class_name: str, k: int, seed: int = 0) -> Dict[str, Any]:
        """Prompt, per-image seed and the options behind image ``k`` of ``class_name``."""
        out = {
            "generator": self.name, "prompt": self.prompt_for(class_name, k),
            "image_seed": image_seed(seed, class_index, k), "model": self.model,
            "steps": self.steps, "guidance": self.guidance, "size": self.size,
            "dtype": str(self.dtype).replace("torch.", ""),
        }
        if self.negative_prompt is not None:
            out["negative_prompt"] = self.negative_prompt
        return out

    # ------------------------------------------------------------------ the pipeline
    @property
    def pipeline(self) -> Any:
        """The loaded diffusers pipeline (loaded on first access)."""
        if self._pipe is None:
            self._pipe = self._load()
        return self._pipe

    def _load(self) -> Any:
        AutoPipelineForText2Image = require("diffusers", "the diffusers generator").AutoPipelineForText2Image
        model = self.model
        local = os.path.isdir(os.path.expanduser(model))
        if local:
            model = os.path.expanduser(model)
            if not os.path.isfile(os.path.join(model, "model_index.json")):
                raise InputError(
                    f"--model {self.model}: this folder is not a diffusers pipeline (no "
                    "model_index.json); give a folder written by pipeline.save_pretrained(DIR) "
                    "or a hub id in the Hugging Face cache")
        elif _looks_like_path(model):
            raise InputError(f"--model {model}: no such folder (for a hub model give its id, "
                             f"e.g. {DEFAULT_MODEL})")
        offline = hf_offline()
        kwargs: Dict[str, Any] = {_dtype_keyword(): self.dtype}
        if self.variant:
            kwargs["variant"] = self.variant
        if offline and not local:
            kwargs["local_files_only"] = True
        try:
            with _quiet_loading(not progress_enabled()), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
                pipe = AutoPipelineForText2Image.from_pretrained(model, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every load failure becomes one line
            if is_oom_error(exc):
                raise OutOfMemoryError(f"out of memory loading {model} on {self.device}: "
                                       f"{_first_line(exc)}") from None
            if local:
                raise InputError(f"--model {self.model}: cannot load the diffusers pipeline in "
                                 f"this folder: {_first_line(exc)}") from None
            raise InputError(_not_found_message(model, offline, exc)) from None
        pipe.set_progress_bar_config(disable=True)
        try:
            pipe = pipe.to(self.device)
        except Exception as exc:  # noqa: BLE001
            if is_oom_error(exc):
                _empty_cache()
                raise OutOfMemoryError(
                    f"out of memory moving {model} to {self.device}: {_first_line(exc)}; "
                    "try --dtype fp16 or another --device") from None
            raise
        return pipe

    def prepare(self, class_names: Sequence[str]) -> None:
        """Load the model now (so a bad ``--model`` fails before any work) and warn about
        per-class prompts for classes that are not in ``class_names``."""
        unused = self.prompts.unused_classes(class_names)
        if unused:
            warnings.warn(f"diffusers: class prompts given for classes not in the class list: "
                          f"{', '.join(map(repr, unused[:5]))}"
                          + (f" and {len(unused) - 5} more" if len(unused) > 5 else ""),
                          stacklevel=2)
        _ = self.pipeline

    # ------------------------------------------------------------------ images
    def generate_one(self, class_index: int, class_name: str, k: int, seed: int = 0) -> np.ndarray:
        """uint8 ``(H, W, 3)``: image ``k`` of ``class_name`` (same as in any batch)."""
        return self.generate_batch([(class_index, class_name, k)], seed)[0]

    def generate_batch(self, items: Sequence[Tuple[int, str, int]],
                       seed: int = 0) -> List[np.ndarray]:
        """uint8 ``(H, W, 3)`` images for ``(class_index, class_name, k)`` items, in order,
        ``batch_size`` per pipeline call (each image with its own generator)."""
        seed = check_seed(seed)
        work = []
        for item in items:
            try:
                c, cname, k = item
            except (TypeError, ValueError):
                raise InputError(f"generate_batch items must be (class_index, class_name, k), "
                                 f"got {item!r}") from None
            work.append((check_count(c, "class_index", minimum=0), str(cname),
                         check_count(k, "k", minimum=0)))
        out: List[np.ndarray] = []
        start = 0
        while start < len(work):
            chunk = work[start:start + self._effective_batch]
            out.extend(self._run_with_retry(chunk, seed))
            start += len(chunk)
        return out

    def generate(self, class_names: Sequence[str], per_class: int, *, seed: int = 0) -> LabeledImages:
        """Batched :meth:`AnchorGenerator.generate`: same rows, ``batch_size`` images per call
        (batches may span classes)."""
        names = validate_class_names(class_names)
        per_class = check_count(per_class, "per_class")
        seed = check_seed(seed)
        self.prepare(names)
        items = [(c, cname, k) for c, cname in enumerate(names) for k in range(per_class)]
        h, w = self.size
        images = np.empty((len(items), h, w, 3), dtype=np.uint8)
        bar = progress_bar(total=len(items), desc=f"{self.name} anchors", unit="img")
        try:
            start = 0
            while start < len(items):
                chunk = items[start:start + self._effective_batch]
                for j, img in enumerate(self._run_with_retry(chunk, seed)):
                    images[start + j] = img
                start += len(chunk)
                bar.update(len(chunk))
        finally:
            bar.close()
        labels = np.repeat(np.arange(len(names), dtype=np.int64), per_class)
        ids = [self.sample_id(cname, k) for _, cname, k in items]
        return LabeledImages(images=images, labels=labels, class_names=names, ids=ids)

    def _run_with_retry(self, chunk: List[Tuple[int, str, int]], seed: int) -> List[np.ndarray]:
        """One pipeline call; on OOM empty the cache and retry once in two halves (and keep
        the halved batch size for the rest of the run); a second OOM is an error."""
        try:
            return self._run(chunk, seed)
        except Exception as exc:  # noqa: BLE001
            if not is_oom_error(exc):
                raise
            _empty_cache()
            if self._oom_retried or len(chunk) == 1:
                raise self._oom_error(len(chunk), exc) from None
        self._oom_retried = True
        half = (len(chunk) + 1) // 2
        self._effective_batch = min(self._effective_batch, half)
        warnings.warn(f"diffusers: out of memory at batch size {len(chunk)}; retrying with "
                      f"batch size {half} (set --batch-size {half} to avoid this)", stacklevel=3)
        out: List[np.ndarray] = []
        try:
            for part in (chunk[:half], chunk[half:]):
                if part:
                    out.extend(self._run(part, seed))
        except Exception as exc:  # noqa: BLE001
            if not is_oom_error(exc):
                raise
            _empty_cache()
            raise self._oom_error(half, exc) from None
        return out

    def _oom_error(self, batch: int, exc: BaseException) -> OutOfMemoryError:
        h, w = self.size
        hint = (f"lower --batch-size (now {self.batch_size}), e.g. --batch-size "
                f"{max(1, batch // 2)}" if batch > 1 else
                "--batch-size is already 1: lower --size, use --dtype fp16 or a bigger GPU")
        return OutOfMemoryError(
            f"{self.device} out of memory generating {batch} image(s) of {h}x{w} at once with "
            f"{self.model}: {hint} ({_first_line(exc)[:120]})")

    def _run(self, chunk: List[Tuple[int, str, int]], seed: int) -> List[np.ndarray]:
        """One pipeline call for ``chunk``; uint8 ``(H, W, 3)`` per item."""
        import torch

        pipe = self.pipeline
        prompts = [self.prompt_for(cname, k) for _, cname, k in chunk]
        # CPU generators: the starting noise is the same on every device
        generators = [torch.Generator(device="cpu").manual_seed(image_seed(seed, c, k))
                      for c, _, k in chunk]
        h, w = self.size
        kwargs: Dict[str, Any] = dict(prompt=prompts, num_inference_steps=self.steps,
                                      guidance_scale=self.guidance, height=h, width=w,
                                      generator=generators, output_type="np")
        if self.negative_prompt is not None:
            kwargs["negative_prompt"] = [self.negative_prompt] * len(chunk)
        with torch.inference_mode():
            result = pipe(**kwargs)
        images = getattr(result, "images", result)
        out = [_to_uint8(img) for img in images]
        if len(out) != len(chunk):  # pragma: no cover - a pipeline that ignores the batch
            raise SynrefError(f"diffusers: pipeline returned {len(out)} images for "
                              f"{len(chunk)} prompts")
        return [as_hwc(img, self.name) for img in out]


# ---------------------------------------------------------------------- helpers
def _to_uint8(img: Any) -> np.ndarray:
    """A pipeline image (float [0, 1] array, PIL image or uint8 array) as uint8 (H, W, 3)."""
    if hasattr(img, "convert"):  # PIL
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr
    arr = np.nan_to_num(arr.astype(np.float32), nan=0.0)
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def _empty_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - best effort
        pass


def _dtype_keyword() -> str:
    """``dtype`` on diffusers versions that deprecate ``torch_dtype``, else ``torch_dtype``."""
    try:
        from diffusers.utils import deprecation_utils

        if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE"):
            return "dtype"
    except Exception:  # pragma: no cover
        pass
    return "torch_dtype"


def _not_found_message(model: str, offline: bool, exc: BaseException) -> str:
    why = ("HF_HUB_OFFLINE is set, so nothing is downloaded" if offline
           else f"and it could not be downloaded ({_first_line(exc)[:160]})")
    return (f"--model {model}: not found in the Hugging Face cache {hf_cache_dir()} "
            f"(set by HF_HOME / HF_HUB_CACHE); {why}. Download it on a machine with network "
            f"(e.g. `hf download {model}`, then copy the cache or run "
            "pipeline.save_pretrained(DIR)) and pass --model DIR, or point HF_HUB_CACHE at a "
            "cache that has it")
