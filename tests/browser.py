"""Headless Chromium for the tests that look at rendered pages (the report, optuna-dashboard).

Debian's `chromium` package (/usr/bin/chromium; `.ci/run` installs it) driven by Playwright's Python client
(`playwright`, in the dev extra; it downloads no browser: the system one is given by path). Where either is
missing, `chromium_page` skips the test and says which.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

#: Flags for a closed network and a root user (no sandbox), as Debian's chromium needs here.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    """The system Chromium, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_missing() -> str | None:
    """Why a browser test cannot run here, or None when it can."""
    if chromium_path() is None:
        return "no Chromium here (Debian package `chromium`; .ci/run installs it)"
    if importlib.util.find_spec("playwright") is None:
        return "Playwright's Python client is not installed (pip install -e '.[dev]')"
    return None


@contextmanager
def chromium_page(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A Playwright page in headless system Chromium; skips the calling test when there is none."""
    reason = browser_missing()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def screenshot_is_blank(png: bytes) -> bool:
    """Whether a PNG screenshot is one flat colour (nothing rendered)."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    return float(pixels.std()) < 1.0
