"""The headless Chromium every real-browser test uses (tests/test_report.py's screenshot / DOM
dump, and the Playwright tests of the review page): the Debian package's ``/usr/bin/chromium``
(``apt-get install chromium``), launched with the same flags. Playwright drives it through
``executable_path``; Playwright's own browser download is never used. CI (.ci/run) installs
Chromium and fails when one of these tests skips."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, List, Optional

import pytest

#: the flags every real-browser test launches Chromium with
CHROMIUM_FLAGS: List[str] = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                             "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> Optional[str]:
    """``/usr/bin/chromium``, or a ``chromium`` / ``chromium-browser`` on PATH; None without one."""
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_chromium() -> str:
    """The Chromium binary, or a skip naming the package (CI fails on the skip)."""
    browser = chromium_path()
    if browser is None:
        pytest.skip("chromium is not installed: the real-browser checks need it (Debian: apt-get install chromium)")
    return browser


def launch(playwright: Any):
    """A Playwright Chromium browser on the Debian binary (headless, the flags above)."""
    return playwright.chromium.launch(executable_path=require_chromium(), headless=True, args=CHROMIUM_FLAGS)
