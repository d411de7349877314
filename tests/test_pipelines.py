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


@pytest.mark.parametrize("remove, part", [("tokenizer", "tokenizer"), ("unet", "unet"),
                                          ("unet/diffusion_pytorch_model.safetensors", "unet"),
                                          ("scheduler/scheduler_config.json", "scheduler")])
def test_a_folder_missing_a_part_names_it_before_loading(tiny_pipe, tmp_path, remove, part):
    import shutil

    tiny_pipe.save_pretrained(tmp_path / "m")
    target = tmp_path / "m" / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(SdlabInputError, match=f"lacks its {part} .{part}/ is missing or incomplete"):
        load_pipeline(str(tmp_path / "m"))


def test_a_folder_keeps_its_safety_checker_unless_turned_off(tiny_pipe, tmp_path):
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    small = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1)
    checker = StableDiffusionSafetyChecker(CLIPConfig(text_config=small, projection_dim=32,
                                                      vision_config=small | dict(image_size=32, patch_size=8)))
    StableDiffusionPipeline(**tiny_pipe.components | {"safety_checker": checker,
                                                      "feature_extractor": CLIPImageProcessor(crop_size=32, size=32)},
                            requires_safety_checker=True).save_pretrained(tmp_path / "checked")
    assert load_pipeline(tmp_path / "checked").safety_checker is not None  # as diffusers keeps it (a Path works too)
    assert load_pipeline(str(tmp_path / "checked"), safety_checker=False).safety_checker is None
    with pytest.raises(SdlabInputError, match="'tiny-random' has no safety checker to turn on"):
        load_pipeline("tiny-random", safety_checker=True)


def test_what_sdlab_cannot_load_is_named_before_loading(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(SdlabInputError, match="is a single-file checkpoint, as A1111 keeps them.*from_single_file"):
        load_pipeline(str(tmp_path / "model.safetensors"))
    with pytest.raises(SdlabInputError, match="no file at .*x.ckpt"):
        load_pipeline(tmp_path / "x.ckpt")
    for kwargs, message in [(dict(device="mps"), "device='mps' is Apple's GPU, which this machine does not have"),
                            (dict(dtype=torch.int8), "dtype must be a floating-point type"),
                            (dict(scheduler="Eular"), "scheduler 'Eular' is unknown")]:
        start = time.perf_counter()
        with pytest.raises(SdlabInputError, match=message):
            load_pipeline("sd15-random", **kwargs)  # 860 M parameters: refused before building them
        assert time.perf_counter() - start < 2


def test_sdxl_and_inpainting_models_are_refused_with_what_to_use(tiny_pipe, tmp_path):
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    nine = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=9,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=2, attention_head_dim=2)
    StableDiffusionInpaintPipeline(**tiny_pipe.components | {"unet": nine},
                                   requires_safety_checker=False).save_pretrained(tmp_path / "inpaint")
    with pytest.raises(SdlabInputError, match="has a 9-channel UNet .an inpainting model."):
        load_pipeline(str(tmp_path / "inpaint"))

    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    xl_unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=32,
                                   down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                   up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                                   norm_num_groups=2, attention_head_dim=2, addition_embed_type="text_time",
                                   addition_time_embed_dim=8, projection_class_embeddings_input_dim=80)
    second = CLIPTextModelWithProjection(tiny_pipe.text_encoder.config)
    StableDiffusionXLPipeline(vae=tiny_pipe.vae, text_encoder=tiny_pipe.text_encoder, text_encoder_2=second,
                              tokenizer=tiny_pipe.tokenizer, tokenizer_2=tiny_pipe.tokenizer, unet=xl_unet,
                              scheduler=tiny_pipe.scheduler).save_pretrained(tmp_path / "xl")
    with pytest.raises(SdlabInputError, match="is an SDXL-type model.*StableDiffusionXLPipeline"):
        load_pipeline(str(tmp_path / "xl"))


def test_quiet_loading_leaves_the_libraries_progress_bars_as_they_were(monkeypatch):
    from diffusers.utils import logging as diffusers_logging

    import sdlab.pipelines as pipelines

    diffusers_logging.disable_progress_bar()
    try:
        load_pipeline("tiny-random", progress=False)
        assert not diffusers_logging.is_progress_bar_enabled()  # the user's choice stays
    finally:
        diffusers_logging.enable_progress_bar()
    for value, offline in (("1", True), ("ON", True), ("0", False), ("no", False), ("False", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert pipelines._hub_offline() is offline  # as huggingface_hub reads it


def test_a_cached_model_without_half_precision_files_loads_from_the_full_ones(tiny_pipe, tmp_path):
    from diffusers import StableDiffusionPipeline

    from sdlab.pipelines import _from_hub

    revision = "0123456789abcdef0123456789abcdef01234567"  # the Hugging Face cache's layout, offline
    repo = tmp_path / "models--someorg--tinysd"
    tiny_pipe.save_pretrained(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    pipe = _from_hub(StableDiffusionPipeline, "someorg/tinysd", ("fp16", None), cache_dir=tmp_path)
    assert torch.equal(pipe.unet.conv_in.weight, tiny_pipe.unet.conv_in.weight)
    with pytest.raises(SdlabInputError, match="'someorg/other' is not in the local Hugging Face cache"):
        _from_hub(StableDiffusionPipeline, "someorg/other", ("fp16", None), cache_dir=tmp_path)
