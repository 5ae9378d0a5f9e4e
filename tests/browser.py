"""A report page opened in headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium).

``make browser`` installs the two packages (``make test`` runs it). The flags keep Chromium off the
network: on a closed machine its background connections otherwise fail at every start.
"""
from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--window-size=1280,2400")
IMAGES_JS = """return Array.from(document.images).map(i => ({src: i.src.slice(0, 40), complete: i.complete,
    width: i.naturalWidth, height: i.naturalHeight}));"""


@dataclass
class PageCheck:
    """What the browser saw: the screenshot, each image's load state, the console's errors."""

    screenshot: np.ndarray          # H × W × 3
    images: list[dict]
    console_errors: list[str]

    @property
    def ink(self) -> float:
        """Share of screenshot pixels that are not (near) white: 0 for a blank page."""
        return float((self.screenshot.min(axis=2) < 235).mean())

    @property
    def broken_images(self) -> list[dict]:
        return [i for i in self.images if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]


def require_chromium() -> None:
    """Fail (not skip) when the browser is missing: ``make test`` installs it, a skip would hide that."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    assert not missing, f"{', '.join(missing)} missing: run `make browser` (apt-get install chromium chromium-driver)"


@contextmanager
def chromium(page: Path) -> Iterator[Any]:
    """A headless Chromium (Selenium driver) with ``page`` (a file) loaded from ``file://``; quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    require_chromium()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(Path(page).resolve().as_uri())  # returns once the page has loaded
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def check(driver: Any) -> PageCheck:
    """What the driver's page shows now: screenshot, image states and SEVERE console entries so far."""
    images = driver.execute_script(IMAGES_JS)
    errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))
    return PageCheck(shot, images, errors)


def open_page(page: Path) -> PageCheck:
    """Load ``page`` (a file) in headless Chromium; screenshot, image states and SEVERE console entries."""
    with chromium(page) as driver:
        return check(driver)
