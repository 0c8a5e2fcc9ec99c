"""Content hashes: the one place synref turns arrays, weights, files and options into
fingerprints (feature-cache keys, evidence-cache keys, anchor manifests)."""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["sha256_json", "fingerprint", "hash_array", "hash_state_dict", "hash_file", "sha256_file", "sha256_bytes",
           "digest", "images_hash"]

PathLike = Union[str, os.PathLike]


def sha256_json(obj: Any) -> str:
    """sha256 hex of a JSON-able object (sorted keys, compact separators)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint(kind: str, payload: Mapping[str, Any]) -> str:
    """``<kind>-<16 hex>``: a readable, filename-safe fingerprint of ``payload``."""
    return f"{kind}-{sha256_json({'kind': kind, **payload})[:16]}"


def hash_array(h: "hashlib._Hash", arr: np.ndarray, block_rows: int = 4096) -> None:
    """Feed ``arr``'s dtype, shape and bytes to the hash ``h``, a block of rows at a time (a
    memory-mapped array is never read whole)."""
    arr = np.asarray(arr)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    if arr.ndim == 0 or len(arr) == 0:
        h.update(np.ascontiguousarray(arr).tobytes())
        return
    for i in range(0, len(arr), block_rows):
        h.update(np.ascontiguousarray(arr[i:i + block_rows]).data)


def hash_state_dict(state: Mapping[str, Any]) -> str:
    """sha256 hex of a torch ``state_dict`` (names, dtypes, shapes, bytes)."""
    import torch

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


def hash_file(path: PathLike) -> str:
    """sha256 of a file's bytes. A Hugging Face cache blob is named by its sha256 (LFS files), so
    it is used as is; otherwise the hash is computed once per (path, size, mtime) per process."""
    real = os.path.realpath(path)
    name = os.path.basename(real)
    if re.fullmatch(r"[0-9a-f]{64}", name) and os.path.basename(os.path.dirname(real)) == "blobs":
        return name
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = sha256_file(real)
    return _FILE_HASHES[key]


def images_hash(pixels: Optional[np.ndarray], paths: Optional[Sequence[str]] = None) -> str:
    """sha256 hex identifying an image set: the pixels (shape, dtype, bytes) when given; else,
    for a path-backed set, each file's path, size and mtime (so nothing is decoded)."""
    h = hashlib.sha256()
    if pixels is None:
        h.update(b"paths")
        for p in paths or []:
            # a dataset row reference "hf:<source>::<column>[<row>]" (synref.data.hf, sources are
            # absolute): the source file (a saved folder's state.json) stands for its rows
            ref = p.startswith("hf:") and "::" in p
            name = p if ref else os.path.abspath(p)
            source = p[3:p.rindex("::")] if ref else p
            if ref and os.path.isdir(source):
                source = os.path.join(source, "state.json")
            try:
                st = os.stat(source)
                h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{name}\0missing\n".encode())
        return h.hexdigest()
    hash_array(h, pixels)
    return h.hexdigest()


def sha256_file(path: PathLike) -> str:
    """sha256 hex of a file's bytes, read now (no memo)."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(*parts: Any, length: int = 16) -> str:
    """A short hex key of mixed parts: arrays by shape and bytes, anything else as sorted JSON."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str(part.shape).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:length]
