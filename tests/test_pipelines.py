import time

import numpy as np
import pytest
import torch

from sdlab.device import pick_device
from sdlab.errors import SdlabInputError
from sdlab.pipelines import img2img_pipeline, inpaint_pipeline, load_pipeline
from sdlab.presets import default_model, tiny_model_dir
from sdlab.testing import build_tiny_random_pipeline


def test_tiny_random_is_reproducible_and_fast():
    start = time.perf_counter()
    a = build_tiny_random_pipeline()
    assert time.perf_counter() - start < 10
    b = build_tiny_random_pipeline()
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_random_has_no_safety_checker(tiny_pipe):
    assert tiny_pipe.safety_checker is None
    assert tiny_pipe.sdlab_model_name == "tiny-random"


def test_cpu_choice_and_fp16_on_cpu_is_a_teaching_error():
    choice = pick_device("cpu")
    assert choice.device.type == "cpu" and choice.dtype == torch.float32
    with pytest.raises(SdlabInputError, match="float16.*CPU"):
        pick_device("cpu", "fp16")
    with pytest.raises(SdlabInputError, match="float16"):
        load_pipeline("tiny-random", device="cpu", dtype="float16")


def test_unknown_preset_lists_what_exists(tmp_path):
    with pytest.raises(SdlabInputError, match="sdlab-tiny, tiny-random, sd15-random, sd15, sd-turbo"):
        load_pipeline("no-such-model")
    with pytest.raises(SdlabInputError, match="model_index.json"):
        load_pipeline(str(tmp_path))


def test_hub_model_offline_fails_fast_with_a_clear_message():
    start = time.perf_counter()
    with pytest.raises(SdlabInputError, match="cannot be reached.*sdlab-tiny"):
        load_pipeline("sd15")
    with pytest.raises(SdlabInputError, match="cannot be reached"):
        load_pipeline("stabilityai/sd-turbo")
    assert time.perf_counter() - start < 30


def test_local_folder_loads(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "m")
    pipe = load_pipeline(str(tmp_path / "m"))
    saved, loaded = tiny_pipe.unet.state_dict(), pipe.unet.state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert pipe.safety_checker is None


def test_variants_share_components(tiny_pipe):
    for variant in (img2img_pipeline(tiny_pipe), inpaint_pipeline(tiny_pipe)):
        assert variant.unet is tiny_pipe.unet and variant.vae is tiny_pipe.vae
        assert variant.text_encoder is tiny_pipe.text_encoder


def test_default_model_is_offline():
    assert default_model() in ("sdlab-tiny", "tiny-random")
    if tiny_model_dir() is not None:
        assert default_model() == "sdlab-tiny"


def test_tiny_random_images_are_exact(tiny_pipe):
    from sdlab.generation import generate

    a = np.asarray(generate(tiny_pipe, "a red circle", seed=0, num_inference_steps=2)[0].image)
    fresh = build_tiny_random_pipeline()
    fresh.set_progress_bar_config(disable=True)
    b = np.asarray(generate(fresh, "a red circle", seed=0, num_inference_steps=2)[0].image)
    assert a.shape == (64, 64, 3) and np.array_equal(a, b)
    assert a.std() > 1  # a real decoded image, not a constant


def test_pixel_slice_like_diffusers_tests(tiny_pipe):
    """The diffusers way: a 3×3 corner of a 2-step image from the seeded toy pipeline."""
    from sdlab.seeds import make_generator

    image = tiny_pipe("a red circle", num_inference_steps=2, generator=make_generator(0), output_type="np").images
    expected = np.array([[0.6613, 0.5071, 0.4450], [0.5484, 0.5224, 0.4467], [0.4464, 0.3659, 0.4777]])
    assert image.shape == (1, 64, 64, 3)
    assert np.abs(image[0, -3:, -3:, -1] - expected).max() < 1e-3
