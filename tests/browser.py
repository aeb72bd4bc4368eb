"""Open a page in real headless Chromium (Debian's package): its DOM after scripts ran, and a screenshot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def needs_chromium() -> None:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'; .ci/run installs it)")


def chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)


def dump_dom(page: Path, profile: Path) -> tuple[str, str]:
    """(the DOM after the page's scripts ran, Chromium's log)."""
    done = chromium(page, profile, "--dump-dom", "--enable-logging=stderr", "--v=0")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def screenshot(page: Path, profile: Path, png: Path, size: str = "1300,3000") -> Path:
    done = chromium(page, profile, f"--screenshot={png}", f"--window-size={size}")
    assert done.returncode == 0 and png.is_file(), done.stderr[-2000:]
    return png
