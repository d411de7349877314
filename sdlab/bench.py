"""Side-by-side timings: the original course's way (a Python loop, one image per call) against
sdlab's batched calls, on the same images, measured in the same run.

    sdlab bench --quick            # CPU, sdlab-tiny, under a minute
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import torch

from .generation import generate
from .pipelines import load_pipeline
from .sweeps import guidance_sweep

GUIDANCE_VALUES = [2, 5, 8, 11, 14, 17, 20]  # the course's guidance 2–21 sweep


@dataclass
class Timing:
    name: str
    seconds: float
    images: int

    @property
    def per_image(self) -> float:
        return self.seconds / self.images


def _timed(name: str, images: int, fn) -> Timing:
    start = time.perf_counter()
    fn()
    return Timing(name, time.perf_counter() - start, images)


def unet_flops_per_image_step(pipe, height: int, width: int) -> int:
    """FLOPs of one UNet evaluation for one image with guidance (2 rows: prompt and empty)."""
    from torch.utils.flop_counter import FlopCounterMode

    f = pipe.vae_scale_factor
    x = torch.zeros(2, pipe.unet.config.in_channels, height // f, width // f, device=pipe.device, dtype=pipe.unet.dtype)
    text = torch.zeros(2, 77, pipe.text_encoder.config.hidden_size, device=pipe.device, dtype=pipe.unet.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pipe.unet(x, torch.tensor([500], device=pipe.device), encoder_hidden_states=text)
    return counter.get_total_flops()


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak RSS


def run(model: str = "sdlab-tiny", images: int = 8, steps: int = 20, prompt: str = "a small red circle on a blue "
        "background", seed: int = 0, device: str = "auto", dtype: str = "auto",
        flop_limit: float | None = None) -> list[str]:
    """Measure and return the report's lines (the caller prints them)."""
    pipe = load_pipeline(model, device=device, dtype=dtype, progress=False)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    generate(pipe, prompt, seed=seed, num_inference_steps=2)  # warm-up: first calls allocate
    loop = _timed("loop (one image per call)", images, lambda: [
        generate(pipe, prompt, seed=seed + i, num_inference_steps=steps) for i in range(images)])
    batch = _timed(f"batch of {images}", images, lambda: generate(
        pipe, prompt, seed=seed, num_images_per_prompt=images, num_inference_steps=steps))
    g_loop = _timed(f"{len(GUIDANCE_VALUES)} guidance values, one call each", len(GUIDANCE_VALUES), lambda: [
        generate(pipe, prompt, seed=seed, guidance_scale=g, num_inference_steps=steps) for g in GUIDANCE_VALUES])
    g_sweep = _timed("guidance sweep, one batched loop", len(GUIDANCE_VALUES), lambda: guidance_sweep(
        pipe, prompt, GUIDANCE_VALUES, seed=seed, num_inference_steps=steps))
    flops = unet_flops_per_image_step(pipe, size, size) * steps
    lines = [f"model {model} · {size}×{size} · {steps} steps · {pipe.sdlab_device} · torch {torch.__version__}",
             f"{'':38} {'s total':>8} {'s/image':>8} {'images/s':>9} {'GFLOP/s':>8}"]
    for t in (loop, batch, g_loop, g_sweep):
        achieved = flops * t.images / t.seconds / 1e9
        lines.append(f"{t.name:38} {t.seconds:8.2f} {t.per_image:8.3f} {t.images / t.seconds:9.2f} {achieved:8.1f}")
    lines.append(f"UNet work: {flops / 1e9:.2f} GFLOP per image; peak memory {peak_memory_mb():.0f} MB")
    if flop_limit:
        best = max(flops * t.images / t.seconds for t in (batch, g_sweep))
        lines.append(f"best path reaches {best / flop_limit:.1%} of the {flop_limit / 1e12:.2f} TFLOP/s limit")
    lines.append(f"batch speedup: {loop.seconds / batch.seconds:.1f}x, "
                 f"guidance-sweep speedup: {g_loop.seconds / g_sweep.seconds:.1f}x")
    return lines
