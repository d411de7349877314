"""A picture of the running web app, taken by a headless Chromium through Selenium: what notebook 07
keeps in its outputs, so that a reader without a live server sees the page, and what the browser
tests drive.

Needs Chromium, its chromedriver (Debian: `apt-get install chromium chromium-driver`) and the
`selenium` package; where one is missing, `screenshot` says so and returns None (Colab has none:
there the app shows live in the notebook).
"""
from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

from PIL import Image

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)


def _found(names) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


def missing_browser() -> str | None:
    """What this machine lacks for a headless browser, or None when it has all of it."""
    lacking = [what for what, names in (("Chromium", CHROMIUM_NAMES), ("chromedriver", DRIVER_NAMES))
               if _found(names) is None]
    try:
        import selenium  # noqa: F401  optional: the dev and course extras install it
    except ImportError:
        lacking.append("the selenium package")
    return ", ".join(lacking) or None


def chromium_driver(profile: str | Path, width: int = 1280, height: int = 1300):
    """A headless Chromium driven by Selenium, with its profile in `profile` (a folder of its own)."""
    from selenium import webdriver  # optional (dev and course extras)
    from selenium.webdriver.chrome.service import Service  # optional (dev and course extras)

    options = webdriver.ChromeOptions()
    options.binary_location = _found(CHROMIUM_NAMES)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(_found(DRIVER_NAMES)), options=options)


def screenshot(url: str, prompt: str | None = None, seed: int | None = None, *, width: int = 1280,
               height: int = 1100, timeout: float = 120) -> Image.Image | None:
    """The page at `url` as a picture. With `prompt`, the app's text-to-image tab is used first: the
    prompt (and `seed`) typed in, Generate pressed, and the picture taken once the image is shown.
    Returns None, after saying what is missing, where this machine has no headless browser."""
    lacking = missing_browser()
    if lacking:
        print(f"no picture of the page: this machine lacks {lacking} (open {url} in a browser instead)")
        return None
    from selenium.webdriver.common.by import By  # optional (dev and course extras)
    from selenium.webdriver.support import expected_conditions as appears  # optional (dev and course extras)
    from selenium.webdriver.support.ui import WebDriverWait  # optional (dev and course extras)

    with tempfile.TemporaryDirectory(prefix="sdlab-browser-") as profile:
        driver = chromium_driver(profile, width, height)
        try:
            wait = WebDriverWait(driver, timeout)
            driver.get(url)
            # Gradio draws the page with scripts after it loads: wait for its first button
            wait.until(appears.visibility_of_element_located((By.CSS_SELECTOR, "button")))
            if prompt is not None:
                box = wait.until(appears.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea")))
                box.send_keys(prompt)
                if seed is not None:
                    field = wait.until(appears.element_to_be_clickable((By.CSS_SELECTOR, "#seed input")))
                    field.clear()
                    field.send_keys(str(seed))
                driver.find_element(By.CSS_SELECTOR, "#generate").click()
                wait.until(appears.visibility_of_element_located((By.CSS_SELECTOR, "#gallery img")))
                wait.until(appears.text_to_be_present_in_element((By.CSS_SELECTOR, "#summary"), "seed"))
            return Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        finally:
            driver.quit()
