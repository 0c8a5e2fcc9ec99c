"""Progress bars for long steps (tqdm on stderr) and the one switch that shows or hides them.

The switch is a module-level setting: :func:`set_progress` sets it, :func:`progress_setting`
sets it for a ``with`` block (the CLI's ``--quiet``), and while it is unset (None) the user's
default applies: bars are shown unless the environment says ``SYNREF_NO_PROGRESS=1``. Nothing
else in synref takes a progress flag, and nothing writes the environment.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterable, Iterator, Optional

from tqdm.auto import tqdm

__all__ = ["progress", "progress_enabled", "set_progress", "progress_setting"]

_SETTING: Optional[bool] = None


def progress_enabled() -> bool:
    """Whether bars are shown now: the setting, else ``SYNREF_NO_PROGRESS`` (unset: shown)."""
    if _SETTING is not None:
        return _SETTING
    return os.environ.get("SYNREF_NO_PROGRESS", "") not in ("1", "true", "yes")


def set_progress(enabled: Optional[bool]) -> Optional[bool]:
    """Show (True) or hide (False) progress bars from now on; None returns to the user's default
    (``SYNREF_NO_PROGRESS``). Returns the previous setting."""
    global _SETTING
    previous, _SETTING = _SETTING, None if enabled is None else bool(enabled)
    return previous


@contextlib.contextmanager
def progress_setting(enabled: Optional[bool]) -> Iterator[None]:
    """``with progress_setting(False): ...`` hides bars inside the block and restores the
    setting after it."""
    previous = set_progress(enabled)
    try:
        yield
    finally:
        set_progress(previous)


def progress(iterable: Optional[Iterable] = None, *, desc: str, total: Optional[int] = None,
             unit: str = "it", enabled: Optional[bool] = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, shown when :func:`progress_enabled`; ``enabled=False`` hides this
    one bar whatever the setting (e.g. a step too short to be worth a bar)."""
    show = progress_enabled() and enabled is not False
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not show,
                file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)
