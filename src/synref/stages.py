"""Per-stage wall time, peak memory and feature bytes read of a long computation (the scale
benchmark's table and ``summary.json``'s ``timings``).

    clock = StageClock()
    with clock.stage("neighbours"):
        ...
    clock.records  # [{"stage": "neighbours", "seconds": 1.2, "peak_rss_mb": 812.0, "bytes_read": ...}]

Peak RSS is the process's high-water mark (``VmHWM``), reset at the start of each stage where
Linux allows it (``/proc/self/clear_refs``), so each stage reports its own peak; elsewhere it is
the peak so far. Bytes read are the feature rows :class:`~synref.arrays.UnitRows` served.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

from .arrays import bytes_served

__all__ = ["StageClock", "peak_rss_bytes"]


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> Optional[int]:
    """The process's peak resident set size in bytes (None where unknown)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except Exception:  # pragma: no cover - non-POSIX
        return None


class StageClock:
    """Records of named stages, in order (a stage entered twice adds up)."""

    def __init__(self) -> None:
        self.records: List[Dict[str, Any]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        _reset_peak()
        t0, read0 = time.perf_counter(), bytes_served()
        try:
            yield
        finally:
            peak = peak_rss_bytes()
            record = {"stage": name, "seconds": round(time.perf_counter() - t0, 3),
                      "peak_rss_mb": None if peak is None else round(peak / 2 ** 20, 1),
                      "bytes_read": int(bytes_served() - read0)}
            for old in self.records:
                if old["stage"] == name:
                    old["seconds"] = round(old["seconds"] + record["seconds"], 3)
                    old["bytes_read"] += record["bytes_read"]
                    if record["peak_rss_mb"] is not None:
                        old["peak_rss_mb"] = max(old["peak_rss_mb"] or 0.0, record["peak_rss_mb"])
                    break
            else:
                self.records.append(record)

    def seconds(self) -> Dict[str, float]:
        """{stage: seconds}."""
        return {r["stage"]: r["seconds"] for r in self.records}
