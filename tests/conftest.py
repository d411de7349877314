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




@pytest.fixture
def browser(tmp_path):
    """Headless Chromium driven by Selenium (Debian's chromium and chromium-driver; .ci/run installs them)."""
    from sdlab.app.screenshot import chromium_driver, missing_browser

    lacking = missing_browser()
    if lacking:
        pytest.fail(f"{lacking} not found: the browser tests need Chromium and its driver; install the Debian "
                    f"packages with `sudo apt-get install -y chromium chromium-driver`")
    driver = chromium_driver(Path(tmp_path) / "profile")
    yield driver
    driver.quit()
