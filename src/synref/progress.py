"""Progress bars for long steps (tqdm), silenced with SYNREF_NO_PROGRESS=1 or ``enabled=False``."""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Optional

from tqdm.auto import tqdm


def progress_enabled() -> bool:
    return os.environ.get("SYNREF_NO_PROGRESS", "") not in ("1", "true", "yes")


def progress(iterable: Optional[Iterable] = None, *, desc: str, total: Optional[int] = None,
             unit: str = "it", enabled: Optional[bool] = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr; ``enabled=None`` follows SYNREF_NO_PROGRESS."""
    if enabled is None:
        enabled = progress_enabled()
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled,
                file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)
