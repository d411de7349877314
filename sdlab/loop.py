"""The sampling loop by hand: what a Stable Diffusion pipeline does between the prompt and the
picture, as three small pure functions (notebook 03 has the student write them; 05 the guidance).

1. `encode_prompts`: tokenizer → text encoder, for the prompts and for the negative (or empty)
   prompts, the "unconditional" embeddings classifier-free guidance pushes away from.
2. `denoise`: start from noise × the scheduler's `init_noise_sigma`; at every timestep scale the
   input, run the UNet on the unconditional and the prompt's embeddings in one batch, mix the two
   predictions with the guidance formula, and let the scheduler take its step.
3. `decode`: latents ÷ the VAE's scaling factor → the VAE's decoder → pixels in [-1, 1].

Like k-diffusion's samplers, each takes the parts it needs and returns tensors; none changes the
pipeline or the scheduler it is given (`denoise` steps a fresh copy of the scheduler). With the
same parts, seed and settings, `decode(denoise(...))` equals diffusers' `StableDiffusionPipeline`
pixel for pixel on the CPU.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from .prompts import embed_prompts, is_weighted
from .schedulers import fresh_copy


def encode_prompts(tokenizer, text_encoder, prompts: list[str], negative_prompts: list[str] | None = None,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond): the text encoder's last hidden states for `prompts` and for `negative_prompts`
    ("" each by default), each N × 77 × width. Both are padded to the tokenizer's 77 tokens. Prompts
    with weights (`(word:1.3)`, `word++`) are embedded with them (`sdlab.prompts`)."""
    device = device or text_encoder.device
    negatives = [""] * len(prompts) if negative_prompts is None else negative_prompts
    if any(is_weighted(text) for text in [*prompts, *negatives]):  # (word:1.3), word++: see sdlab.prompts
        both = embed_prompts(tokenizer, text_encoder, [*prompts, *negatives]).to(device)
        return both[:len(prompts)], both[len(prompts):]

    def embed(texts: list[str]) -> torch.Tensor:
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            return text_encoder(ids)[0]

    return embed(list(prompts)), embed(list(negatives))


def guide(noise_uncond: torch.Tensor, noise_cond: torch.Tensor, guidance_scale) -> torch.Tensor:
    """Classifier-free guidance: uncond + g · (cond − uncond), image by image.

    `guidance_scale` is one number or one per image. At g ≤ 1 an image takes the prompt's prediction
    alone, as diffusers does (it turns guidance off there).
    """
    scale = torch.as_tensor(guidance_scale, dtype=noise_cond.dtype, device=noise_cond.device)
    scale = scale.reshape(-1, *[1] * (noise_cond.dim() - 1))
    return torch.where(scale > 1, noise_uncond + scale * (noise_cond - noise_uncond), noise_cond)


def denoise(unet, scheduler, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, *,
            num_inference_steps: int, guidance_scale=7.5, generator=None,
            callback: Callable[[dict], None] | None = None,
            formula: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None) -> torch.Tensor:
    """The denoising loop: latents made from `noise` (N × C × h × w, unit variance) under the prompts'
    embeddings `cond` and the unconditional `uncond` (N × 77 × width each).

    scheduler: any diffusers scheduler; a fresh copy of it is stepped, so the one given keeps its
    state. guidance_scale: one number or one per image (see `guide`). generator: for schedulers that
    draw noise at every step (ancestral ones), as in diffusers. callback: called after every step
    with {"i", "t", "latents", "denoised"} ("denoised": the estimate of the clean latents, the
    scheduler's own where it gives one, else `clean_estimate`'s). formula: how to mix the two
    predictions, formula(noise_uncond, noise_cond, guidance_scale) (notebook 05 has the student
    write it); `guide` by default.
    """
    sched = fresh_copy(scheduler)  # set_timesteps and step change a scheduler's state
    sched.set_timesteps(num_inference_steps, device=noise.device)
    extra = {"generator": generator} if "generator" in inspect.signature(sched.step).parameters else {}
    embeds = torch.cat([uncond, cond])
    latents = noise * sched.init_noise_sigma
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            model_input = sched.scale_model_input(torch.cat([latents] * 2), t)
            noise_uncond, noise_cond = unet(model_input, t, encoder_hidden_states=embeds).sample.chunk(2)
            guided = (formula or guide)(noise_uncond, noise_cond, guidance_scale)
            step = sched.step(guided, t, latents, **extra)
            if callback is not None:
                denoised = getattr(step, "pred_original_sample", None)
                if denoised is None:  # PNDM, DPM++ and UniPC do not hand their estimate out
                    denoised = clean_estimate(sched, model_input.chunk(2)[0], guided, t)
                callback({"i": i, "t": t, "latents": step.prev_sample, "denoised": denoised})
            latents = step.prev_sample
    return latents


def clean_estimate(scheduler, model_input: torch.Tensor, model_output: torch.Tensor, t) -> torch.Tensor:
    """The clean latents the model's output at timestep t points to: x̂₀ = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t
    for a model that predicts the noise ε, x̂₀ = √ᾱ_t·x_t − √(1−ᾱ_t)·v for one that predicts v.

    model_input: the scaled input the UNet saw (`scheduler.scale_model_input`, which puts every
    scheduler's latents on the training scale x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε). t may fall between two
    training timesteps (Euler's do); ᾱ is then interpolated.
    """
    table = scheduler.alphas_cumprod.double()
    where = float(t)
    low = min(int(where), len(table) - 1)
    high = min(low + 1, len(table) - 1)
    alpha_bar = (table[low] + (where - low) * (table[high] - table[low])).item()
    signal, noise = alpha_bar ** 0.5, (1 - alpha_bar) ** 0.5
    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        return (model_input - noise * model_output) / signal
    if prediction == "v_prediction":
        return signal * model_input - noise * model_output
    return model_output  # "sample": the model predicts x₀ itself


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents → pixels (N × 3 × H × W, about [-1, 1]) through the VAE's decoder."""
    with torch.no_grad():
        return vae.decode(latents / vae.config.scaling_factor).sample
