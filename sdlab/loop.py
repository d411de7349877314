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

from .schedulers import fresh_copy


def encode_prompts(tokenizer, text_encoder, prompts: list[str], negative_prompts: list[str] | None = None,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond): the text encoder's last hidden states for `prompts` and for `negative_prompts`
    ("" each by default), each N × 77 × width. Both are padded to the tokenizer's 77 tokens."""
    device = device or text_encoder.device
    negatives = [""] * len(prompts) if negative_prompts is None else negative_prompts

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
            callback: Callable[[dict], None] | None = None) -> torch.Tensor:
    """The denoising loop: latents made from `noise` (N × C × h × w, unit variance) under the prompts'
    embeddings `cond` and the unconditional `uncond` (N × 77 × width each).

    scheduler: any diffusers scheduler; a fresh copy of it is stepped, so the one given keeps its
    state. guidance_scale: one number or one per image (see `guide`). generator: for schedulers that
    draw noise at every step (ancestral ones), as in diffusers. callback: called after every step
    with {"i", "t", "latents", "denoised"} ("denoised": the scheduler's estimate of the clean
    latents, where it gives one, else None).
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
            step = sched.step(guide(noise_uncond, noise_cond, guidance_scale), t, latents, **extra)
            latents = step.prev_sample
            if callback is not None:
                callback({"i": i, "t": t, "latents": latents, "denoised": getattr(step, "pred_original_sample", None)})
    return latents


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents → pixels (N × 3 × H × W, about [-1, 1]) through the VAE's decoder."""
    with torch.no_grad():
        return vae.decode(latents / vae.config.scaling_factor).sample
