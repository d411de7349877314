"""Shared fixtures: tests run offline, quietly, on tiny real pipelines."""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SDLAB_PROGRESS", "0")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.pop("SDLAB_MODELS", None)  # fine-tuned versions are found only where a test puts them
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


# what `make check` leaves out (`make test` runs them all): the modules that run notebooks, kernels, a
# browser, benchmarks or training, and single tests that took 10 s or more on 2 cores
SLOW_MODULES = {"test_notebooks", "test_grading", "test_grading_hostile", "test_grading_sandbox",
                "test_grading_submissions", "test_nbgrader", "test_bench", "test_app_browser", "test_distributed",
                "test_tiny_train", "test_a1111", "test_packaging", "test_faces"}
SLOW_TESTS = {"test_on_sdlab_tiny_the_shape_word_acts_on_the_object_and_background_off_it",
              "test_the_schedulers_offered_for_a_model_run_it_at_every_step_count",
              "test_behaviour_measures_the_curves_the_course_shows",
              "test_cli_feedback_demo_rates_finetunes_and_measures",
              "test_adherence_on_held_out_prompts_and_guidance_matters", "test_plain_diffusers_loads_it_offline",
              "test_cli_bad_arguments_exit_nonzero_without_traceback",
              "test_a_weight_below_one_weakens_its_attribute_measured",
              "test_cli_finetunes_sdlab_tiny_on_your_pictures_and_the_version_is_served_by_name"}


def _uses_a_module_fixture(item) -> bool:
    """Whether a test uses a fixture kept for its module (pytest's resolved fixtures of the test)."""
    return any(defs[-1].scope == "module" for defs in item._fixtureinfo.name2fixturedefs.values() if defs)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Marks the slow tests, and orders the run for two workers (`make test`: `--dist loadgroup`, each worker
    taking the next test as it finishes one): the tests that share a module's fixture go to one worker
    together (an xdist group), as it would build the fixture again for each module it switches to; and the
    slow tests come first, so that the last ones, which one worker may run while the other is idle, are short."""
    for item in items:
        module = item.module.__name__.rpartition(".")[2]
        if module in SLOW_MODULES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if _uses_a_module_fixture(item) and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(module))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order within each
