"""Resume inside long training loops: atomic per-epoch checkpoints.

A run that has an output folder wraps its long steps in :func:`checkpoint_folder`; every training
loop run inside (:func:`~synref.train.fit` and so :func:`~synref.train.fine_tune`,
:func:`~synref.train.cross_fit` folds and PLC; SimCLR; LRA-diffusion) then saves its whole state
after each epoch -- weights, optimiser, best-so-far weights, history, every random generator --
to ``<folder>/<loop>-<key>.ckpt`` (written atomically), and a re-run of the same loop (same
key: configuration, data and initial weights) continues after the last saved epoch. The result
is the one of an uninterrupted run, bit for bit on the CPU. A finished loop's checkpoint lets a
re-run skip it; the caller deletes the folder (:func:`clear_checkpoints`) once the step's result
is saved.

    with checkpoint_folder(out / "checkpoints"):
        result = fit(model, images, labels, config=config)   # resumes a killed run
    clear_checkpoints(out / "checkpoints")
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

import torch

from ..hashing import digest
from ..io import atomic_path

__all__ = ["checkpoint_folder", "checkpointing", "clear_checkpoints", "LoopCheckpoint", "tensor_state", "CHECKPOINT_SUFFIX"]

PathLike = Union[str, "os.PathLike[str]"]
CHECKPOINT_SUFFIX = ".ckpt"

_FOLDER: contextvars.ContextVar[Optional[Path]] = contextvars.ContextVar("synref_checkpoint_folder", default=None)


@contextlib.contextmanager
def checkpoint_folder(folder: Optional[PathLike]) -> Iterator[Optional[Path]]:
    """Training loops run inside the block checkpoint into ``folder`` every epoch and resume from
    it (None: no checkpoints)."""
    token = _FOLDER.set(None if folder is None else Path(folder))
    try:
        yield _FOLDER.get()
    finally:
        _FOLDER.reset(token)


def checkpointing() -> bool:
    """Whether training loops run now save checkpoints (inside :func:`checkpoint_folder`)."""
    return _FOLDER.get() is not None


def clear_checkpoints(folder: PathLike) -> None:
    """Delete ``folder`` and the checkpoints in it (once the step they resume has its result saved)."""
    shutil.rmtree(folder, ignore_errors=True)


class LoopCheckpoint:
    """The checkpoint of one training loop, named by what defines the loop (``key`` parts:
    configurations, data arrays, initial weights; hashed with :func:`synref.hashing.digest`).
    Disabled (``path is None``) outside :func:`checkpoint_folder`."""

    def __init__(self, loop: str, *key: Any) -> None:
        folder = _FOLDER.get()
        self.path: Optional[Path] = None if folder is None else folder / f"{loop}-{digest(*key)}{CHECKPOINT_SUFFIX}"

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def load(self) -> Optional[Dict[str, Any]]:
        """The saved state, or None (none saved, or unreadable: the loop then starts over)."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a checkpoint is a cache: one that cannot be read is rebuilt
            return None
        return state if isinstance(state, dict) and "epoch" in state else None

    def save(self, state: Dict[str, Any]) -> None:
        """Write ``state`` (tensors, numbers, strings, lists and dicts of them) atomically."""
        if self.path is None:
            return
        with atomic_path(self.path, fsync=False) as tmp:  # a cache: a kill never tears it, a power cut may lose it
            torch.save(state, tmp)


def tensor_state(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """A detached CPU copy of a ``state_dict`` (what a checkpoint stores)."""
    return {k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in state_dict.items()}
