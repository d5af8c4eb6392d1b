"""Headless Chromium (Debian's, not Playwright's download) driven by Playwright."""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-quic", "--no-first-run", "--disable-sync"]


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
    if not Path(path).exists():
        raise RuntimeError(
            f"Chromium not found at {path}. Install it (Debian/Ubuntu: sudo apt install chromium) "
            "or set CHROMIUM_PATH.")
    return path


def launch(playwright):
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
