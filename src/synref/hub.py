"""Where Hugging Face models are looked for: the offline switch, the cache folder, and the one
resolution of a model named by a hub id or a local ``save_pretrained`` folder (shared by the
``clip`` and ``hf:`` feature spaces and the diffusers generator)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Union

from .errors import InputError

__all__ = ["hf_offline", "hf_cache_dir", "WEIGHT_PATTERNS", "weight_files", "model_not_found",
           "is_local_model", "resolve_model_dir"]

PathLike = Union[str, os.PathLike]

#: the weight files of a ``transformers`` model folder (safetensors or PyTorch, sharded or not).
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
                   "pytorch_model*.bin.index.json")


def hf_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (or huggingface_hub says so): never download."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:   # pragma: no cover - huggingface_hub missing
        return False


def hf_cache_dir(cache_dir=None) -> str:
    """``cache_dir``, else huggingface_hub's cache folder (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    if cache_dir is not None:
        return str(cache_dir)
    try:
        from huggingface_hub import constants
        return str(constants.HF_HUB_CACHE)
    except Exception:   # pragma: no cover - huggingface_hub missing
        return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")


def weight_files(directory: PathLike) -> List[Path]:
    """The weight files (:data:`WEIGHT_PATTERNS`) in a model folder, sorted; [] when none."""
    d = Path(directory)
    return sorted({p for pattern in WEIGHT_PATTERNS for p in d.glob(pattern)})


def model_not_found(what: str, model_id: str, *, cache_dir: Optional[PathLike] = None,
                    local_files_only: bool = True, why: str = "") -> InputError:
    """The one-line error of a model that is neither in the Hugging Face cache nor a folder."""
    where = hf_cache_dir(cache_dir)
    mode = "offline (HF_HUB_OFFLINE=1)" if local_files_only else "and could not be downloaded"
    extra = f" ({why})" if why else ""
    return InputError(
        f"{what} {model_id!r} not found {mode}{extra}: hub models are looked for in the Hugging Face "
        f"cache {where} (set HF_HUB_CACHE / HF_HOME to move it; fill it online with `hf download "
        f"{model_id}`), or pass a local directory with config.json + model.safetensors (save_pretrained)")


def is_local_model(model_id: PathLike) -> bool:
    """True when ``model_id`` names a folder (one that exists, or a path written as one:
    absolute, ``./``, ``../``, ``~``) rather than a hub id such as ``org/name``."""
    text = str(model_id)
    path = Path(text).expanduser()
    return path.is_dir() or path.is_absolute() or text.startswith(("./", "../", "~", ".\\", "..\\"))


def resolve_model_dir(model_id: PathLike, *, what: str, cache_dir: Optional[PathLike] = None,
                      local_files_only: bool = True, feature: str = "Hugging Face models") -> Path:
    """The folder holding ``model_id``'s config.json: the folder itself (it must exist and hold a
    config.json), or the hub cache snapshot of a hub id (downloaded first unless
    ``local_files_only``). InputError (one line, naming the model) otherwise."""
    if is_local_model(model_id):
        d = Path(str(model_id)).expanduser()
        if not d.is_dir():
            raise InputError(f"{what} folder {str(model_id)!r} does not exist")
        if not (d / "config.json").is_file():
            raise InputError(f"{what} folder {d.resolve()} has no config.json (not a save_pretrained model folder)")
        return d.resolve()
    from .optional import require

    hf_hub_download = require("huggingface_hub", feature).hf_hub_download
    try:
        config = hf_hub_download(str(model_id), "config.json", cache_dir=None if cache_dir is None else str(cache_dir),
                                 local_files_only=local_files_only)
    except Exception as exc:
        raise model_not_found(what, str(model_id), cache_dir=cache_dir, local_files_only=local_files_only,
                              why=type(exc).__name__) from None
    return Path(config).parent
