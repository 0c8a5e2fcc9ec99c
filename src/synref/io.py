"""Atomic file output (nothing half-written is ever left under the final name), checked input
of torch / numpy files, and the output-folder check every command makes before any work."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Union

import numpy as np

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike, *, fsync_dir: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` for the caller to write; on success it is fsynced and
    renamed onto ``path`` (and, with ``fsync_dir``, the folder is fsynced so the rename survives
    a power cut); on any error it is removed. For writers that need a path, not a handle."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual mode
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync_dir:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", *, fsync_dir: bool = False, **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success."""
    with atomic_path(path, fsync_dir=fsync_dir) as tmp:
        with open(tmp, mode, **kwargs) as handle:
            yield handle


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False, default=json_default)
        handle.write("\n")


def write_npy(path: PathLike, array: np.ndarray) -> None:
    """Save ``array`` as .npy, atomically."""
    with atomic_open(path, "wb") as handle:
        np.save(handle, np.asarray(array), allow_pickle=False)


def write_text(path: PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def read_torch_file(path: PathLike, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (tensors, dicts, lists, numbers only:
    no pickled code runs). A missing or unreadable file raises a one-line InputError naming
    ``what`` (e.g. "classifier checkpoint") and the path."""
    import torch

    from .errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = " ".join(str(exc).split())[:200]
        raise InputError(f"cannot read {what} {path}: {msg}") from None


def read_npy(path: PathLike, what: str) -> np.ndarray:
    """``np.load(path)`` without pickles; a missing or unreadable file is a one-line InputError
    naming ``what`` (e.g. "--probs") and the path."""
    from .errors import InputError, one_line

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a bad file
        raise InputError(f"cannot read {what} file {path}: {one_line(exc)}") from None


def check_output_dir(out: PathLike, option: str = "--out") -> None:
    """Fail before any work if ``out`` cannot become a writable folder (nothing is created)."""
    from .errors import InputError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{option} {out} exists and is not a folder")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{option} {out}: {probe} is not a writable folder")


def read_json_object(path: PathLike, what: str) -> dict:
    """The JSON object in ``path``; an unreadable file, bad JSON or another JSON value is a
    one-line InputError naming ``what`` and the path."""
    from .errors import InputError, one_line

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot read {what} {path}: {one_line(exc)}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{what} {path} must hold a JSON object, got {type(obj).__name__}")
    return obj
