"""Measuring sdlab-tiny: generate from held-out prompts and read the attributes back.

Because the tiny model's world is known, "does the image follow the prompt?" has an exact
answer per attribute (shape, colour, background, position, size), read from pixels by
`sdlab.tiny.checker`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .captions import canonical_prompt
from .checker import score
from .world import Scene, held_out_scenes

ATTRIBUTES = ("colour", "background", "shape", "position", "size")
MAIN = ("colour", "background", "shape", "position")  # "mean" averages these four


@dataclass
class Adherence:
    """Share of images whose attribute matches the prompt, and the seconds per image."""

    scores: dict[str, float]
    seconds_per_image: float
    count: int

    def line(self) -> str:
        parts = " ".join(f"{a} {self.scores.get(a, 0) * 100:5.1f}%" for a in ATTRIBUTES + ("all", "mean"))
        return f"{parts} | {self.seconds_per_image:.3f} s/image, n={self.count}"


def measure_adherence(pipe, scenes: list[Scene], *, guidance_scale: float = 7.5, num_inference_steps: int = 20,
                      seed: int = 0, scheduler: str | None = None, batch_size: int = 32) -> Adherence:
    """Generate one image per scene from its canonical prompt and score them with the checker."""
    from ..generation import generate

    images, seconds = [], 0.0
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start:start + batch_size]
        result = generate(pipe, [canonical_prompt(s) for s in chunk], seed=[seed + start + i for i in range(len(chunk))],
                          guidance_scale=guidance_scale, num_inference_steps=num_inference_steps, scheduler=scheduler)
        images += result.images
        seconds += result.seconds
    scores = score(images, scenes)
    scores["mean"] = sum(scores[a] for a in MAIN) / len(MAIN)
    return Adherence(scores, seconds / len(scenes), len(scenes))


def reconstruction_accuracy(vae, count: int = 256, seed: int = 0) -> dict[str, float]:
    """How well the VAE alone keeps each attribute: encode → decode held-out renders, then check."""
    import torch

    from .world import render_batch

    scenes = held_out_scenes(count, seed)
    pixels = torch.from_numpy(render_batch(scenes)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        device, dtype = vae.device, vae.dtype
        recon = vae.decode(vae.encode(pixels.to(device, dtype)).latent_dist.mode()).sample.float().cpu()
    images = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return score(list(images), scenes)
