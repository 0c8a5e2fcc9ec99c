"""Where Hugging Face models are looked for: the offline switch and the cache folder (shared by
the CLIP extractor and the diffusers generator)."""
from __future__ import annotations

import os

__all__ = ["hf_offline", "hf_cache_dir"]


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
