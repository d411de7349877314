"""Shared fixtures: tests run offline, quietly, on tiny real pipelines."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SDLAB_PROGRESS", "0")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

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
