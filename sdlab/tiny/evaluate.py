"""Measuring sdlab-tiny: generate from held-out prompts and read the attributes back.

Because the tiny model's world is known, "does the image follow the prompt?" has an exact
answer per attribute (shape, colour, background, position, size), read from pixels by
`sdlab.tiny.checker`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .captions import batch_tensors, canonical_prompt
from .checker import adherence, score
from .world import Scene

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
    from ..generation import generate  # heavy: sdlab.generation loads torch and diffusers

    images, seconds = [], 0.0
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start:start + batch_size]
        result = generate(pipe, [canonical_prompt(s) for s in chunk],
                          seed=[seed + start + i for i in range(len(chunk))],
                          guidance_scale=guidance_scale, num_inference_steps=num_inference_steps, scheduler=scheduler)
        images += result.images
        seconds += result.seconds
    scores = score(images, scenes)
    scores["mean"] = sum(scores[a] for a in MAIN) / len(MAIN)
    return Adherence(scores, seconds / len(scenes), len(scenes))


def reconstruction_accuracy(vae, count: int = 256, seed: int = 0, web: bool = True) -> dict[str, float]:
    """How well the VAE alone keeps each attribute: encode → decode held-out renders (with their
    unnamed looks if `web`), then check."""
    import torch  # heavy: the world and the checker work without torch

    pixels, _, scenes = batch_tensors(count, seed=seed, split="held_out", web=web)
    with torch.no_grad():
        device, dtype = vae.device, vae.dtype
        recon = vae.decode(vae.encode(pixels.to(device, dtype)).latent_dist.mode()).sample.float().cpu()
    images = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return score(list(images), scenes) | {"error": float((recon - pixels).abs().mean() * 127.5)}


# --------------------------------------------------------------------------
# Behaviour: what the course shows (guidance, seeds, steps), measured
# --------------------------------------------------------------------------

BEHAVIOUR_GUIDANCE = (0, 1, 2, 3, 5, 7.5, 10, 15, 20)
BEHAVIOUR_STEPS = (1, 2, 3, 5, 8, 13, 20)
REFERENCE_STEPS = 50


@dataclass
class Behaviour:
    """The curves `sdlab eval-tiny --behaviour` prints (held-out prompts, the model's scheduler).

    guidance: adherence per attribute (and "all") on fully named prompts, per guidance scale;
    plain: the same on plain prompts ("a red circle on a white background", a third with a place);
    clipped / saturation: share of pixel values at 0 or 255, and mean HSV saturation, per guidance;
    seeds_apart: mean absolute pixel difference (0-255) between two seeds of a fully named prompt,
    at `default_guidance`; seeds_follow: share of those pairs where both images follow the prompt;
    steps: mean absolute pixel distance (0-255) of each step count's image to the 50-step image.
    """

    guidance: dict[float, dict[str, float]]
    plain: dict[float, dict[str, float]]
    clipped: dict[float, float]
    saturation: dict[float, float]
    seeds_apart: float
    seeds_follow: float
    steps: dict[int, float]
    default_guidance: float
    count: int

    def lines(self) -> list[str]:
        def row(scores: dict[str, float]) -> str:
            return " ".join(f"{a} {scores.get(a, 0) * 100:5.1f}%" for a in ATTRIBUTES + ("all",) if a in scores)

        out = [f"held-out prompts: {self.count}; guidance 0 is the empty prompt's prediction alone (the formula's "
               f"uncond), 1 the prompt's alone"]
        for g in self.guidance:
            out.append(f"guidance {g:4g} | named: {row(self.guidance[g])} | plain: {row(self.plain[g])} | "
                       f"clipped {self.clipped[g] * 100:4.1f}% saturation {self.saturation[g]:.2f}")
        out.append(f"seeds (guidance {self.default_guidance:g}): two seeds of a fully named prompt differ by "
                   f"{self.seeds_apart:.1f}/255; both follow the prompt in {self.seeds_follow * 100:.1f}% of pairs")
        out.append("steps: distance to the 50-step image " +
                   ", ".join(f"{n}: {d:.1f}" for n, d in self.steps.items()) + " (/255)")
        out.append(self.summary())
        return out

    def summary(self) -> str:
        g1, g75, g20 = (self.guidance.get(g, {}) for g in (1, 7.5, 20))
        first, last = next(iter(self.steps)), list(self.steps)[-1]
        return (f"summary: all attributes {g1.get('all', 0) * 100:.0f}% "
                f"at guidance 1 -> {g75.get('all', 0) * 100:.0f}% "
                f"at 7.5; plain colour {self.plain.get(1, {}).get('colour', 0) * 100:.0f}% at 1; clipped "
                f"{self.clipped.get(7.5, 0) * 100:.1f}% -> {self.clipped.get(20, 0) * 100:.1f}% from 7.5 to 20 "
                f"(all attributes {g20.get('all', 0) * 100:.0f}% at 20); seeds {self.seeds_apart:.1f}/255 apart; "
                f"steps {self.steps[first]:.1f} -> {self.steps[last]:.1f}/255 from {first} to {last}")


def plain_prompt(scene: Scene, with_position: bool) -> tuple[str, dict[str, str]]:
    """What a student types first: "a red circle on a white background" (and maybe ", top left")."""
    text = f"a {scene.colour} {scene.shape} on a {scene.background} background"
    named = {"shape": scene.shape, "colour": scene.colour, "background": scene.background}
    if with_position:
        return f"{text}, {scene.position}", named | {"position": scene.position}
    return text, named


def _images(pipe, prompts: list[str], seeds: list[int], batch_size: int = 32, **settings) -> list:
    from ..generation import generate  # heavy: sdlab.generation loads torch and diffusers

    images = []
    for start in range(0, len(prompts), batch_size):
        images += generate(pipe, prompts[start:start + batch_size], seed=seeds[start:start + batch_size],
                           **settings).images
    return images


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])


def _saturation(pixels: np.ndarray) -> float:
    top, low = pixels.max(axis=-1), pixels.min(axis=-1)
    return float(np.mean(np.where(top > 0, (top - low) / np.maximum(top, 1e-6), 0)))


def measure_behaviour(pipe, scenes: list[Scene], *, guidance_scales=BEHAVIOUR_GUIDANCE, step_counts=BEHAVIOUR_STEPS,
                      default_guidance: float | None = None, num_inference_steps: int = 20, seed: int = 0,
                      progress=None) -> Behaviour:
    """Measure the curves of `Behaviour` on `scenes` (held-out ones: combinations never trained on)."""
    from ..generation import model_defaults  # heavy: sdlab.generation loads torch and diffusers

    default_guidance = model_defaults(pipe)[1] if default_guidance is None else default_guidance
    say = progress or (lambda text: None)
    seeds = [seed + i for i in range(len(scenes))]
    named = [canonical_prompt(s) for s in scenes]
    plain = [plain_prompt(s, with_position=i % 3 == 0) for i, s in enumerate(scenes)]
    guidance, plain_scores, clipped, saturation = {}, {}, {}, {}
    for g in guidance_scales:
        say(f"guidance {g:g}")
        # guidance 0 in the formula uncond + g (cond - uncond) is the empty prompt's prediction alone
        texts = [""] * len(scenes) if g == 0 else named
        images = _images(pipe, texts, seeds, guidance_scale=max(g, 1), num_inference_steps=num_inference_steps)
        guidance[g] = score(images, scenes)
        pixels = _pixels(images)
        clipped[g] = float(np.mean((pixels <= 1) | (pixels >= 254)))
        saturation[g] = _saturation(pixels)
        texts = [""] * len(scenes) if g == 0 else [text for text, _ in plain]
        images = _images(pipe, texts, seeds, guidance_scale=max(g, 1), num_inference_steps=num_inference_steps)
        plain_scores[g] = score(images, [target for _, target in plain])
    say("seeds")
    settings = dict(guidance_scale=default_guidance, num_inference_steps=num_inference_steps)
    first = _images(pipe, named, seeds, **settings)
    second = _images(pipe, named, [s + 10_000 for s in seeds], **settings)
    seeds_apart = float(np.abs(_pixels(first) - _pixels(second)).mean())
    follow = [all(adherence(a, s).values()) and all(adherence(b, s).values())
              for a, b, s in zip(first, second, scenes, strict=True)]
    say("steps")
    reference = _pixels(_images(pipe, named, seeds, guidance_scale=default_guidance,
                                num_inference_steps=REFERENCE_STEPS))
    steps = {n: float(np.abs(_pixels(_images(pipe, named, seeds, guidance_scale=default_guidance,
                                             num_inference_steps=n)) - reference).mean()) for n in step_counts}
    return Behaviour(guidance, plain_scores, clipped, saturation, seeds_apart, float(np.mean(follow)), steps,
                     default_guidance, len(scenes))
