"""What the feature spaces backed by a Hugging Face model share (``clip``, ``hf:ID_OR_FOLDER``):
the model named by a hub id (found in the Hugging Face cache, offline-safe) or a
``save_pretrained`` folder, its weight files, the dtype, and a content-addressed fingerprint."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from ..device import resolve_device
from ..errors import InputError
from ..hashing import fingerprint, hash_file
from ..hub import hf_offline, is_local_model, model_not_found, resolve_model_dir, weight_files
from .base import FeatureExtractor, PathLike, batched_bar

__all__ = ["HubModelExtractor"]

DTYPES = ("float16", "bfloat16", "float32")


class HubModelExtractor(FeatureExtractor):
    """Base of the spaces whose network is a Hugging Face model; subclasses set ``what`` (how
    errors name the model, e.g. ``"CLIP model"``), implement ``preprocess_config()`` (JSON-able,
    :func:`~synref.features.clip.clip_preprocess` options), ``_load_model()``, ``_embed()`` and
    ``_embedding_dim()``, and call :meth:`_init_source` from ``__init__``."""

    what = "Hugging Face model"

    def _init_source(self, model: PathLike, *, normalize: bool, device: Optional[Union[str, torch.device]],
                     dtype: Optional[str], cuda_dtype: str, cache_dir: Optional[PathLike],
                     local_files_only: Optional[bool]) -> None:
        """Set the options every such space has (``dtype`` None: ``cuda_dtype`` on cuda, float32 on cpu)."""
        self.model_id = str(model).strip()
        if not self.model_id:
            raise InputError(f"{self.name} extractor: model is empty (give a hub id or a save_pretrained folder)")
        self.is_local = is_local_model(self.model_id)
        self.normalize = bool(normalize)
        self.device = resolve_device(device, f"{self.name} extractor")
        if dtype is None:
            dtype = cuda_dtype if self.device.type == "cuda" else "float32"
        if dtype not in DTYPES:
            raise InputError(f"{self.name} extractor: dtype must be float16, bfloat16 or float32, got {dtype!r}")
        self.dtype = str(dtype)
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.local_files_only = hf_offline() if local_files_only is None else bool(local_files_only)
        self._dir: Optional[Path] = None
        self._fingerprint: Optional[str] = None

    def _not_found(self, why: str = "") -> InputError:
        return model_not_found(self.what, self.model_id, cache_dir=self.cache_dir,
                               local_files_only=self.local_files_only, why=why)

    def model_dir(self) -> Path:
        """The folder holding config.json (the local folder, or the hub cache snapshot)."""
        if self._dir is None:
            self._dir = resolve_model_dir(self.model_id, what=self.what, cache_dir=self.cache_dir,
                                          local_files_only=self.local_files_only, feature=f"{self.name} features")
        return self._dir

    def _weight_files(self) -> List[Path]:
        d = self.model_dir()
        files = weight_files(d)
        if not files and not self.is_local and not self.local_files_only:
            self._load_model()           # downloads the weights when online
            files = weight_files(d)
        if not files:
            if self.is_local:
                raise InputError(f"{self.what} {self.model_id!r}: folder {d} has no weights file (model.safetensors "
                                 "or pytorch_model.bin; save_pretrained writes them)")
            raise self._not_found(f"no weights file in {d}")
        return files

    def preprocess_config(self) -> Dict[str, Any]:
        raise NotImplementedError

    def _load_model(self) -> Any:
        raise NotImplementedError

    def _embed(self, model: Any, pixels: torch.Tensor) -> torch.Tensor:
        """``(n, D)`` embeddings of preprocessed pixels ``(n, 3, h, w)``."""
        raise NotImplementedError

    def _embedding_dim(self) -> int:
        """D (for an empty image set)."""
        raise NotImplementedError

    def _extract(self, images: np.ndarray, *, batch_size: int) -> np.ndarray:
        from .clip import clip_preprocess

        model = self._load_model()
        cfg = self.preprocess_config()
        dtype = getattr(torch, self.dtype)
        outs: List[np.ndarray] = []
        with torch.inference_mode():
            for i in batched_bar(len(images), batch_size, f"{self.name} features"):
                x = clip_preprocess(images[i:i + batch_size], cfg).to(self.device, dtype)
                emb = self._embed(model, x).float()
                if self.normalize:
                    emb = torch.nn.functional.normalize(emb, dim=1)
                outs.append(emb.cpu().numpy())
        if not outs:
            return np.zeros((0, self._embedding_dim()), np.float32)
        return np.concatenate(outs).astype(np.float32, copy=False)

    def _fingerprint_options(self) -> Dict[str, Any]:
        """Options beyond the model, its preprocessing, ``normalize`` and ``dtype`` that change the
        features (none by default)."""
        return {}

    def fingerprint(self) -> str:
        """Hashes config.json, every weight file (a hub cache blob by its name, so no read), the
        preprocessing, ``normalize`` and ``dtype``: the same model in the hub cache and in a folder
        share their cached features."""
        if self._fingerprint is None:
            d = self.model_dir()
            weights = {p.name: hash_file(p) for p in self._weight_files()}
            self._fingerprint = fingerprint(self.name, {
                "config": hash_file(d / "config.json"),
                "weights": weights,
                "preprocess": self.preprocess_config(),
                "normalize": self.normalize,
                "dtype": self.dtype,
                **self._fingerprint_options(),
            })
        return self._fingerprint
