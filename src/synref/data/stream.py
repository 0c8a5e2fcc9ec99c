"""Streaming a path-backed image set batch by batch at a fixed working size (what the feature
cache uses, so folders of any size are never decoded whole)."""
from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..progress import progress as progress_bar
from .decode import choose_geometry, decode_image, probe_image

__all__ = ["PathStream", "probe_geometry", "decode_file"]


def decode_file(path: str, size: Tuple[int, int], channels: int) -> np.ndarray:
    """One file as uint8 ``(H, W, channels)`` (:func:`synref.data.decode.decode_image`; InputError naming
    the file when it cannot be read). A module-level name so tests can watch decoding."""
    return decode_image(path, size, channels)


class PathStream:
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

    def __enter__(self) -> "PathStream":
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
            return decode_file(self.paths[i], self.size, self.channels), None
        try:
            return decode_file(self.paths[i], self.size, self.channels), None
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


def probe_geometry(paths: Sequence[str], size: Optional[Tuple[int, int]],
                   channels: Optional[int], *, skip_bad: bool, num_workers: int
                   ) -> Tuple[Tuple[int, int], int, Dict[int, str]]:
    """The working ``(H, W)`` and channels of a path-backed set exactly as
    :func:`synref.data.materialize` chooses them (file headers only, no pixels): channels 1 when
    every file is single-channel, else 3; the most common size, with a UserWarning when sizes
    differ. Returns them with the unreadable files found (``skip_bad``)."""

    bad: Dict[int, str] = {}
    if size is not None and channels is not None:
        return size, channels, bad

    def probe(i: int):
        if not skip_bad:
            return probe_image(paths[i])
        try:
            return probe_image(paths[i])
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
                                                 unit="img", enabled=None if n >= 2000 else False)]
    ok = [p for p in probed if p is not None]
    if not ok:
        raise InputError(f"none of the {n} images could be read (first: {bad[min(bad)]})")
    size, channels = choose_geometry(ok, size, channels, stacklevel=3)
    return size, channels, bad

