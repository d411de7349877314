"""Shared fixtures: tests run offline, quietly, on tiny real pipelines."""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SDLAB_PROGRESS", "0")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# the notebooks' kernels and the commands the tests start take their temporary folders here (notebook
# 08 keeps its feedback store and model versions in one), and it goes when the tests end
_KERNELS_TMP = tempfile.mkdtemp(prefix="sdlab-tests-")  # this process keeps the usual folder
os.environ["TMPDIR"] = _KERNELS_TMP
atexit.register(shutil.rmtree, _KERNELS_TMP, ignore_errors=True)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_pipe():
    """The seeded random-weight pipeline (same weights every build)."""
    from sdlab.pipelines import load_pipeline

    return load_pipeline("tiny-random")


@pytest.fixture(scope="session")
def tiny_model():
    """The trained sdlab-tiny model, shipped in models/."""
    from sdlab.pipelines import load_pipeline
    from sdlab.presets import tiny_model_dir

    if tiny_model_dir() is None:
        pytest.fail("models/sdlab-tiny is missing: the shipped model must be in the repository")
    return load_pipeline("sdlab-tiny")


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium driven by Selenium (Debian's chromium and chromium-driver; .ci/run installs them)."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: the browser tests need Chromium and its driver; install "
                    f"the Debian packages with `sudo apt-get install -y chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1300",
                 f"--user-data-dir={Path(tmp_path) / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
