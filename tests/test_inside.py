"""Inside the pipeline: the VAE (`sdlab.vae`), the noise schedule (`sdlab.schedulers.noise_levels`),
the clean-image estimate (`sdlab.loop.clean_estimate`) and the trajectory (`sdlab.trajectory`), on
the real tiny pipelines."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from sdlab.errors import SdlabInputError
from sdlab.generation import generate
from sdlab.loop import clean_estimate
from sdlab.schedulers import SD15_SCHEDULE, noise_levels
from sdlab.seeds import make_latents
from sdlab.trajectory import trajectory
from sdlab.vae import channel_images, decode_latents, encode_image

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "images" / "02_reference.png"
PROMPT = "a large white cross on a green background"


def test_the_vae_round_trip_keeps_the_image_and_scaled_latents_spread_about_one(tiny_model):
    reference = Image.open(REFERENCE).convert("RGB")
    latents = encode_image(tiny_model, reference)
    assert latents.shape == (1, 4, 16, 16)  # 64×64×3 pixels → 16×16×4 latents: 12 times fewer numbers
    assert torch.equal(latents, encode_image(tiny_model, reference))  # the mean: the same on every call
    assert 0.8 < latents.std() < 1.25  # the scaling factor puts them near the noise's spread of 1
    assert (latents / tiny_model.vae.config.scaling_factor).std() < 0.8
    back = np.asarray(decode_latents(tiny_model, latents)[0], dtype=float)
    assert np.abs(back - np.asarray(reference, dtype=float)).mean() < 4  # of 255: the VAE keeps the picture


def test_decoding_the_starting_noise_is_not_a_picture(tiny_model):
    noise = np.asarray(decode_latents(tiny_model, make_latents(tiny_model, 0))[0], dtype=float)
    picture = np.asarray(generate(tiny_model, PROMPT, seed=0, num_inference_steps=10)[0].image, dtype=float)
    # the world's pictures are flat backgrounds with one object; decoded noise is speckled all over
    speckle = lambda a: np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()  # noqa: E731
    assert speckle(noise) > 3 * speckle(picture)


def test_vae_inputs_are_checked(tiny_pipe):
    with pytest.raises(SdlabInputError, match="PIL image"):
        encode_image(tiny_pipe, np.zeros((32, 32, 3)))
    with pytest.raises(SdlabInputError, match="channels"):
        decode_latents(tiny_pipe, torch.zeros(1, 3, 4, 4))
    odd = Image.new("RGB", (37, 35), "red")  # resized down to the VAE's multiple
    factor = tiny_pipe.vae_scale_factor
    assert encode_image(tiny_pipe, odd).shape[2:] == (35 // factor, 37 // factor)


def test_channel_images_show_each_channel_on_one_range(tiny_model):
    latents = encode_image(tiny_model, Image.open(REFERENCE))
    images = channel_images(latents)
    assert len(images) == 4 and {im.size for im in images} == {(128, 128)} and images[0].mode == "L"
    assert len({im.tobytes() for im in images}) == 4


def test_the_noise_schedule_is_what_add_noise_does():
    tiny = json.loads((ROOT / "models" / "sdlab-tiny" / "scheduler" / "scheduler_config.json").read_text())
    for config in (tiny, SD15_SCHEDULE):
        levels = noise_levels(config)
        assert np.allclose(levels["signal"] ** 2 + levels["noise"] ** 2, 1)
        assert np.all(np.diff(levels["signal"]) < 0)  # the clean image fades as t grows
        x0, eps = torch.randn(1, 4, 8, 8, dtype=torch.float64), torch.randn(1, 4, 8, 8, dtype=torch.float64)
        scheduler = DDIMScheduler.from_config(config)
        for t in (10, 500, 990):
            noised = scheduler.add_noise(x0, eps, torch.tensor([t]))
            assert torch.allclose(noised, levels["signal"][t] * x0 + levels["noise"][t] * eps, atol=1e-5)
    # SD 1.5's schedule never quite reaches pure noise; the tiny model's cosine schedule does
    assert noise_levels(SD15_SCHEDULE)["signal"][-1] == pytest.approx(0.068, abs=0.001)
    assert noise_levels(tiny)["signal"][-1] < 0.01


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_the_clean_estimate_is_ddims_own(prediction):
    scheduler = DDIMScheduler(prediction_type=prediction, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False)
    scheduler.set_timesteps(10)
    sample, output = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for t in scheduler.timesteps[:3]:
        theirs = scheduler.step(output, t, sample).pred_original_sample
        assert torch.allclose(clean_estimate(scheduler, sample, output, t), theirs, atol=1e-5)


@pytest.mark.parametrize("name", ["DDIM", "DPM++ 2M", "Euler"])
def test_the_trajectory_ends_in_the_pipelines_image_and_its_guesses_sharpen(tiny_model, name):
    scheduler, config = tiny_model.scheduler, dict(tiny_model.scheduler.config)
    result = trajectory(tiny_model, PROMPT, seed=7, num_inference_steps=12, scheduler=name)
    theirs = generate(tiny_model, PROMPT, seed=7, num_inference_steps=12, scheduler=name)[0].image
    assert np.array_equal(np.asarray(result.image), np.asarray(theirs))
    assert len(result) == len(result.noisy) == len(result.predicted) == 12 and result.scheduler == name
    assert result.timesteps == sorted(result.timesteps, reverse=True)
    final = np.asarray(result.image, dtype=float)
    far = [np.abs(np.asarray(im, dtype=float) - final).mean() for im in result.predicted]
    assert far[0] > 4 * far[len(far) // 2] and far[-1] < 2  # the guess settles long before the last step
    noisy = [np.abs(np.asarray(im, dtype=float) - final).mean() for im in result.noisy]
    # the latents carry the noise away step by step (sdlab-tiny, DDIM: 47 → 12 → 0 of 255)
    assert all(a >= b for a, b in zip(noisy, noisy[1:], strict=False)) and noisy[0] > 3 * noisy[len(noisy) // 2]
    assert tiny_model.scheduler is scheduler and dict(scheduler.config) == config
    assert result.filmstrip(every=4).width > 4 * 64


def test_trajectory_inputs_are_checked(tiny_pipe):
    with pytest.raises(SdlabInputError, match="num_inference_steps"):
        trajectory(tiny_pipe, PROMPT, num_inference_steps=0)
    with pytest.raises(SdlabInputError, match="scheduler"):
        trajectory(tiny_pipe, PROMPT, scheduler="Eulr")
