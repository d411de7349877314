"""The reference sampling loop (`sdlab.loop`): equal to the diffusers pipeline pixel for pixel, and
pure (neither the pipeline nor its scheduler changes)."""
import numpy as np
import pytest
import torch

from sdlab.generation import generate
from sdlab.loop import decode, denoise, encode_prompts, guide
from sdlab.schedulers import make_scheduler
from sdlab.seeds import make_generator, make_latents
from sdlab.sweeps import guidance_sweep

PROMPT = "a small red circle on a blue background"


def by_hand(pipe, scheduler, seed, steps, guidance, negative=""):
    cond, uncond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [PROMPT], [negative])
    latents = denoise(pipe.unet, scheduler, make_latents(pipe, seed), cond, uncond, num_inference_steps=steps,
                      guidance_scale=guidance)
    return np.asarray(pipe.image_processor.postprocess(decode(pipe.vae, latents), output_type="pil")[0])


@pytest.mark.parametrize("name", ["DDIM", "PNDM", "Euler", "DPM++ 2M"])
def test_the_loop_by_hand_equals_the_pipeline(tiny_model, name):
    scheduler = make_scheduler(name, tiny_model.scheduler.config)
    mine = by_hand(tiny_model, scheduler, seed=7, steps=6, guidance=5.0, negative="green")
    theirs = generate(tiny_model, PROMPT, negative_prompt="green", seed=7, num_inference_steps=6, guidance_scale=5.0,
                      scheduler=name)[0].image
    assert np.array_equal(mine, np.asarray(theirs)), name


def test_the_loop_equals_plain_diffusers_with_the_pipelines_own_scheduler(tiny_model):
    theirs = tiny_model(PROMPT, num_inference_steps=5, guidance_scale=7.5, generator=make_generator(3)).images[0]
    assert np.array_equal(by_hand(tiny_model, tiny_model.scheduler, 3, 5, 7.5), np.asarray(theirs))


def test_neither_the_loop_nor_generate_changes_the_pipeline(tiny_model):
    scheduler, config = tiny_model.scheduler, dict(tiny_model.scheduler.config)
    timesteps = getattr(scheduler, "num_inference_steps", None)
    by_hand(tiny_model, scheduler, 1, 3, 5.0)
    generate(tiny_model, PROMPT, seed=1, num_inference_steps=4, scheduler="Euler")
    generate(tiny_model, PROMPT, seed=1, num_inference_steps=4)
    assert tiny_model.scheduler is scheduler and dict(scheduler.config) == config
    assert getattr(scheduler, "num_inference_steps", None) == timesteps  # set_timesteps never ran on it


def test_the_step_callback_sees_every_step_and_the_clean_estimate(tiny_model):
    seen = []
    cond, uncond = encode_prompts(tiny_model.tokenizer, tiny_model.text_encoder, [PROMPT])
    last = denoise(tiny_model.unet, tiny_model.scheduler, make_latents(tiny_model, 2), cond, uncond,
                   num_inference_steps=4, callback=seen.append)
    assert [step["i"] for step in seen] == [0, 1, 2, 3] and torch.equal(seen[-1]["latents"], last)
    assert seen[0]["denoised"].shape == last.shape  # DDIM estimates the clean latents at every step


def test_guidance_is_the_formula_image_by_image():
    uncond, cond = torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2)
    mixed = guide(uncond, cond, [0.5, 1.0, 7.5])
    assert mixed[:, 0, 0, 0].tolist() == [1.0, 1.0, 7.5]  # at 1 or less: the prompt's prediction alone


def test_a_guidance_sweep_on_the_loop_still_equals_separate_calls(tiny_model):
    swept = guidance_sweep(tiny_model, PROMPT, [1, 3, 9], seed=4, num_inference_steps=5)
    for item, g in zip(swept.results, [1, 3, 9], strict=True):
        alone = generate(tiny_model, PROMPT, seed=4, num_inference_steps=5, guidance_scale=g)[0].image
        assert np.abs(np.asarray(item.image, dtype=int) - np.asarray(alone, dtype=int)).max() <= 1, g
