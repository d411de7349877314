"""Sweeps: change one or two parameters, keep the rest, and see the effect as a labelled grid.

A sweep over seeds is one batched call (image k gets seed k). A guidance sweep at one seed is
one batched denoising loop with a guidance value per image (`guidance_sweep`). A sweep over
another parameter makes one call per value, each batched over the seeds of the other axis, so
a seed × guidance grid of 3 × 7 images takes 7 calls, not 21. Batches bigger than fit (see
`images_per_call`) are split into chunks; the images stay the same.
"""
from __future__ import annotations

import inspect
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .errors import check, is_whole
from .generation import (
    MAX_IMAGES,
    MAX_STEPS,
    GeneratedImage,
    GenerationParams,
    check_generate_inputs,
    generate,
    model_defaults,
)
from .grids import labelled_grid
from .loop import decode, denoise, encode_prompts
from .pipelines import model_name
from .schedulers import check_scheduler_steps, make_scheduler, resolve_scheduler_name, scheduler_name
from .seeds import check_seed, check_size, default_size, make_latents

LABELS = {"seed": "seed", "num_inference_steps": "steps", "guidance_scale": "guidance",
          "scheduler": "", "prompt": "", "negative_prompt": "negative:", "width": "width", "height": "height"}


def label(name: str, value) -> str:
    """'guidance 7.5', 'steps 20', 'DPM++ 2M' — how an axis value is written on a grid."""
    prefix = LABELS.get(name, name)
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{prefix} {text}".strip()


@dataclass
class Sweep:
    """Images of a sweep, row by row: rows follow `y`'s values, columns `x`'s."""

    x: str
    x_values: list
    y: str | None
    y_values: list
    results: list[GeneratedImage]

    @property
    def images(self):
        return [r.image for r in self.results]

    def grid(self, title: str | None = None, cell: int | None = None):
        """The labelled grid (small images are enlarged to `cell` pixels, 128 by default)."""
        width = self.results[0].image.width
        cell = cell or (128 if width < 128 else None)
        rows = [label(self.y, v) for v in self.y_values] if self.y else []
        return labelled_grid(self.images, rows, [label(self.x, v) for v in self.x_values], title=title, cell=cell)

    def seconds(self) -> list[float]:
        return [r.seconds for r in self.results]


def sweep(pipe, prompt: str, x: str, x_values, y: str | None = None, y_values=(), seed: int = 0,
          **settings) -> Sweep:
    """Generate a grid varying `x` (columns) and optionally `y` (rows); everything else fixed.

    `x`/`y` are generate()'s parameter names: "seed", "guidance_scale", "num_inference_steps",
    "scheduler", "prompt", "negative_prompt"…
    """
    for name in (x, *([] if y is None else [y]), *settings):
        check(name in SWEEPABLE, f"{name!r} is not a parameter of generate(); sweep or set one of "
                                 f"{', '.join(sorted(SWEEPABLE))} (e.g. \"guidance_scale\", not \"guidance\")")
    x_values = sweep_values("x_values", x, x_values)
    y_values = [] if y is None else sweep_values("y_values", y, y_values)
    check(x != y, f"x and y are both {x!r}; sweep two different parameters")
    check_negative_prompt(settings.get("negative_prompt"))
    if x == "guidance_scale" and y is None and set(settings) <= BATCHED_GUIDANCE_SETTINGS:
        return guidance_sweep(pipe, prompt, x_values, seed, **settings)
    return _sweep_by_calls(pipe, prompt, x, x_values, y, y_values, seed, settings)


BATCHED_GUIDANCE_SETTINGS = {"negative_prompt", "num_inference_steps", "height", "width", "scheduler"}
# what a sweep may vary or fix: generate()'s keyword parameters ("prompt" too, as an axis)
SWEEPABLE = {name for name, p in inspect.signature(generate).parameters.items() if p.kind is p.KEYWORD_ONLY} | {
    "prompt"}


def sweep_values(argument: str, name: str, values) -> list:
    """`values` (the `argument` that lists what `name` takes) as a list; one value or a string is an
    error, since a string would be swept letter by letter."""
    check(isinstance(values, Iterable) and not isinstance(values, (str, bytes)),
          f"{argument} must be a list of the values {name} takes, got {values!r} ({type(values).__name__}); "
          f"put even one value in a list: [{values!r}]")
    values = list(values)
    check(len(values) > 0, f"sweep over {name!r} needs at least one value")
    return values


def check_negative_prompt(negative_prompt) -> None:
    """A sweep has one prompt, so one negative prompt: a string (None is "")."""
    check(negative_prompt is None or isinstance(negative_prompt, str),
          f"negative_prompt must be one string for a sweep's one prompt, got {negative_prompt!r}; to compare "
          f"negative prompts, sweep them: sweep(pipe, prompt, \"negative_prompt\", [...])")


def _sweep_by_calls(pipe, prompt, x, x_values, y, y_values, seed, settings) -> Sweep:
    """One generate() call per grid value, batched along the seed axis when there is one."""
    rows = y_values if y else [None]
    grid: dict[tuple[int, int], GeneratedImage] = {}
    if "seed" in (x, y):  # batch along the seed axis: one call per value of the other axis
        other, other_values = (y, rows) if x == "seed" else (x, x_values)
        seeds = x_values if x == "seed" else y_values
        for j, value in enumerate(other_values):
            kwargs = settings | ({} if other is None else {other: value})
            for i, item in enumerate(_seed_batch(pipe, prompt, seeds, kwargs)):
                grid[(j, i) if x == "seed" else (i, j)] = item
    else:
        for r, row_value in enumerate(rows):
            for c, value in enumerate(x_values):
                kwargs = settings | {x: value} | ({} if y is None else {y: row_value})
                grid[(r, c)] = generate(pipe, kwargs.pop("prompt", prompt), seed=seed, **kwargs)[0]
    results = [grid[(r, c)] for r in range(len(rows)) for c in range(len(x_values))]
    return Sweep(x, x_values, y, y_values, results)


# GPU memory one image takes while it is generated with guidance, per pixel and per byte of
# its dtype: measured with SD 1.5 at 512×512 in float16 on an H200 (about 1 GB per image in a
# batch of 8, weights apart), rounded up
BYTES_PER_PIXEL_BYTE = 2000


def images_per_call(pipe, height: int, width: int) -> int:
    """How many images one batched call may hold: `MAX_IMAGES`, fewer on a GPU whose free memory
    would not hold them (with the VAE decoding one image at a time for big images)."""
    if pipe.device.type != "cuda":
        return MAX_IMAGES
    free, _ = torch.cuda.mem_get_info(pipe.device)
    per_image = height * width * pipe.unet.dtype.itemsize * BYTES_PER_PIXEL_BYTE
    fits = max(1, min(MAX_IMAGES, int(free * 0.8 // per_image)))
    if fits > 1 and height * width >= 512 * 512:
        pipe.vae.enable_slicing()  # decoding a whole batch of big images at once needs the most memory
    return fits


def _chunks(values: list, size: int) -> list[list]:
    return [values[i:i + size] for i in range(0, len(values), size)]


def _seed_batch(pipe, prompt, seeds, kwargs):
    """Batched calls (as few as fit): the same prompt and settings, one image per seed."""
    text = kwargs.pop("prompt", prompt)
    height = default_size(pipe) if kwargs.get("height") is None else kwargs["height"]
    width = default_size(pipe) if kwargs.get("width") is None else kwargs["width"]
    size = images_per_call(pipe, check_size("height", height), check_size("width", width))  # checked, then sized
    return [item for chunk in _chunks(list(seeds), size)
            for item in generate(pipe, [text] * len(chunk), seed=chunk, **kwargs)]


def guidance_sweep(pipe, prompt: str, guidance_values, seed: int = 0, *, negative_prompt: str | None = "",
                   num_inference_steps: int | None = None, height: int | None = None, width: int | None = None,
                   scheduler: str | None = None, max_batch: int | None = None) -> Sweep:
    """A guidance sweep at one seed as ONE batched denoising loop, each image its own guidance.

    The prompt is encoded once; the batch holds the same starting noise N times; at each step
    the UNet runs once on all N (twice that with the unconditional half) and image k is pushed
    with guidance_values[k], or, at guidance 1 or less, by the prompt's prediction alone (diffusers
    turns guidance off there): `sdlab.loop`'s reference loop, with one guidance per image.
    The images equal separate generate() calls up to float rounding.
    Schedulers that draw fresh noise at every step (ancestral ones, "Euler a") would draw it
    differently in a batch, so for those this falls back to one call per value.
    max_batch: at most this many images per loop (default: `images_per_call`); more values are
    swept in chunks.
    """
    # 1. Check inputs
    values = sweep_values("guidance_values", "guidance_scale", guidance_values)
    check_negative_prompt(negative_prompt)
    negative_prompt = negative_prompt or ""
    check(max_batch is None or (is_whole(max_batch) and max_batch >= 1),
          f"max_batch must be a whole number of images, 1 or more (or None for as many as fit), got {max_batch!r}")
    steps = model_defaults(pipe)[0] if num_inference_steps is None else num_inference_steps
    height = default_size(pipe) if height is None else height
    width = default_size(pipe) if width is None else width
    for g in values:  # each value as one image: more values than one call holds are swept in chunks
        check_generate_inputs([prompt], num_inference_steps=steps, guidance_scale=g, height=height, width=width)
    values = [float(g) for g in values]
    seed = check_seed(seed)
    name = resolve_scheduler_name(scheduler) if scheduler else scheduler_name(pipe.scheduler)
    sched = make_scheduler(name, pipe.scheduler.config)  # a fresh one: schedulers keep state
    check_scheduler_steps(sched, steps, max_steps=MAX_STEPS)
    if "Ancestral" in type(sched).__name__:
        return _sweep_by_calls(pipe, prompt, "guidance_scale", values, None, [], seed,
                               dict(negative_prompt=negative_prompt, num_inference_steps=steps, height=height,
                                    width=width, scheduler=name))
    size = max_batch or images_per_call(pipe, height, width)
    if len(values) > size:
        parts = [guidance_sweep(pipe, prompt, chunk, seed, negative_prompt=negative_prompt, num_inference_steps=steps,
                                height=height, width=width, scheduler=name, max_batch=size)
                 for chunk in _chunks(values, size)]
        return Sweep("guidance_scale", values, None, [], [r for part in parts for r in part.results])
    # 2. Encode the prompt once; repeat the same noise for every guidance value
    start = time.perf_counter()
    device, n = pipe._execution_device, len(values)
    cond, uncond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [prompt], [negative_prompt], device)
    noise = make_latents(pipe, seed, height, width).to(device, cond.dtype).repeat(n, 1, 1, 1)
    # 3. One denoising loop for the whole batch, each image with its own guidance
    latents = denoise(pipe.unet, sched, noise, cond.expand(n, -1, -1), uncond.expand(n, -1, -1),
                      num_inference_steps=steps, guidance_scale=values)
    with torch.no_grad():
        # the same safety check the pipeline itself runs (a no-op for models without one)
        decoded, nsfw = pipe.run_safety_checker(decode(pipe.vae, latents), device, cond.dtype)
    keep = [True] * n if nsfw is None else [not flagged for flagged in nsfw]
    images = pipe.image_processor.postprocess(decoded, output_type="pil", do_denormalize=keep)
    seconds = time.perf_counter() - start
    # 4. Every image carries its parameters
    results = [GeneratedImage(image, GenerationParams(prompt=prompt, seed=seed, num_inference_steps=steps,
                                                      guidance_scale=g, height=height, width=width, scheduler=name,
                                                      model=model_name(pipe), negative_prompt=negative_prompt),
                              seconds / n)
               for image, g in zip(images, values, strict=True)]
    return Sweep("guidance_scale", values, None, [], results)
