"""generate(): images from a pipeline, each carrying every parameter that made it.

It follows the diffusers pipeline's own order: 1. check inputs, 2. seeds and latents,
3. run the pipeline once for the whole batch, 4. attach parameters and timing. `plan_generation`
is the first phase (and the seeds), `run_plan` the rest: a class server (`sdlab.app`) plans each
request when it comes and runs the plans of requests that came together in one call.
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from PIL import Image

from .errors import SdlabWarning, check, check_text, is_number, is_whole
from .pipelines import img2img_pipeline, inpaint_pipeline, model_name, txt2img_pipeline
from .presets import find_preset
from .prompts import embed_prompts, is_weighted, to_compel
from .schedulers import check_scheduler_steps, own_scheduler, resolve_scheduler_name, scheduler_name
from .seeds import (
    MIN_SIZE,
    SIZE_MULTIPLE,
    are_consecutive,
    check_size,
    check_variation,
    default_size,
    make_generator,
    seeds_for,
    variation_latents,
)

MAX_IMAGES = 64  # per call; sweeps split bigger jobs
#: a prompt or negative prompt: CLIP reads 77 tokens (a few hundred characters); more is kept in the
#: image's parameters but only slows the server and bloats the stored PNG
MAX_PROMPT_CHARS = 4000
MAX_STEPS = 500
#: The most one server request, or a `regenerate` unasked, may take: image-steps at the model's own size
#: (`work_of`): 64 images at 25 steps, or 8 images at 50 steps at twice the model's side.
MAX_WORK = 1600
MAX_GUIDANCE = 50.0


class PromptTruncatedWarning(SdlabWarning):
    """A prompt was longer than CLIP's 77 tokens, so its end was ignored."""


@dataclass(frozen=True)
class GenerationParams:
    """Everything needed to make one image again."""

    prompt: str
    seed: int | None
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    scheduler: str
    model: str
    negative_prompt: str = ""
    mode: str = "txt2img"  # txt2img | img2img | inpaint
    strength: float | None = None
    variation_seed: int | None = None
    variation_strength: float = 0.0
    # position in a batch that regenerate() can run again (one prompt, consecutive seeds):
    # batched arithmetic can differ from a single run in the last bit, so the batch is rerun
    batch_size: int = 1
    batch_pos: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "GenerationParams":
        return replace(self, **changes)


@dataclass
class GeneratedImage:
    """One image, how it was made, and its share of the batch's time in seconds."""

    image: Image.Image
    params: GenerationParams
    seconds: float

    def _repr_png_(self):  # shows as the image in Jupyter
        return self.image._repr_png_()


@dataclass
class Generation:
    """The result of one generate() call: images in order, and the call's total seconds."""

    results: list[GeneratedImage] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images(self) -> list[Image.Image]:
        return [r.image for r in self.results]

    @property
    def params(self) -> list[GenerationParams]:
        return [r.params for r in self.results]

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self):
        return iter(self.results)

    def __getitem__(self, index):
        return self.results[index]


def model_defaults(pipe) -> tuple[int, float]:
    """The (steps, guidance) a model works best with: its preset's, else diffusers' 50 and 7.5."""
    preset = find_preset(model_name(pipe))
    return (preset.num_inference_steps, preset.guidance_scale) if preset else (50, 7.5)


def work_of(pipe, num_images: int, steps: int, height: int | None = None, width: int | None = None) -> float:
    """A job's work in image-steps at the model's own size: images × steps × (pixels / its pixels).
    (A server and `regenerate` bound it; attention grows faster than the pixels, so big sizes count low.)"""
    size = default_size(pipe)
    return num_images * steps * ((height or size) * (width or size)) / (size * size)


def check_steps(value, name: str = "num_inference_steps") -> int:
    """The rule for a number of denoising steps (`name`: how the caller's user calls it)."""
    check(is_whole(value) and 1 <= value <= MAX_STEPS,
          f"{name} must be a whole number from 1 to {MAX_STEPS}, got {value!r}; 20–50 is typical")
    return value


def check_guidance(value, name: str = "guidance_scale") -> float:
    """The rule for a guidance scale (`name`: how the caller's user calls it)."""
    check(is_number(value) and 0 <= value <= MAX_GUIDANCE,  # NaN fails both comparisons
          f"{name} must be between 0 and {MAX_GUIDANCE:g}, got {value!r}; 7.5 is typical, 1 turns guidance off")
    return value


def check_generate_inputs(prompts, *, num_inference_steps, guidance_scale, height, width, num_images_per_prompt=1,
                          strength=1.0, image=None, mask_image=None) -> None:
    """Reject bad arguments before any work, naming the argument, the value and the fix (the rule every
    entry point that generates checks through: generate, sweeps, widgets, the CLI, the trajectory)."""
    check(len(prompts) > 0 and all(isinstance(p, str) for p in prompts),
          f"prompt must be a string or a non-empty list of strings, got {prompts!r:.200}")
    for text in dict.fromkeys(prompts):
        check_text("prompt", text, MAX_PROMPT_CHARS)
    check(is_whole(num_images_per_prompt) and 1 <= num_images_per_prompt <= MAX_IMAGES,
          f"num_images_per_prompt must be between 1 and {MAX_IMAGES}, got {num_images_per_prompt!r}")
    check(len(prompts) * num_images_per_prompt <= MAX_IMAGES,
          f"{len(prompts) * num_images_per_prompt} images in one call is more than {MAX_IMAGES}; "
          f"split the prompts or use sdlab.sweeps, which batches in chunks")
    check_steps(num_inference_steps)
    check_guidance(guidance_scale)
    check_size("height", height)
    check_size("width", width)
    if image is None:
        check(mask_image is None, "mask_image needs an image to paint into: pass image= as well")
        return
    check(is_number(strength) and 0 < strength <= 1,
          f"strength must be in (0, 1], got {strength!r}: 0.3 keeps most of the image, 1.0 replaces it")
    fewest = next(n for n in range(math.ceil(1 / strength), MAX_STEPS + 2) if int(n * strength) >= 1)
    check(num_inference_steps >= fewest,  # image to image runs int(steps × strength) of the steps
          f"strength {strength:g} of {num_inference_steps} steps leaves no step to run (image to image runs "
          f"int(steps × strength) of them): raise num_inference_steps to {fewest} or more, or strength to "
          f"{1 / num_inference_steps:.2g} or more")
    if mask_image is not None:
        check(mask_image.size == image.size,
              f"mask_image is {mask_image.size[0]}×{mask_image.size[1]} but image is "
              f"{image.size[0]}×{image.size[1]}; resize the mask to the image's size")


def check_noise_inputs(image, latents, variation_seed, variation_strength) -> None:
    """The starting-noise arguments: a valid variation, not with latents, and neither variations nor
    latents with an image (image to image starts from the image's own noised latents)."""
    check_variation(variation_seed, variation_strength)
    check(latents is None or variation_seed is None, "pass either latents= or variation_seed=, not both")
    if image is not None:
        check(latents is None, "latents= is the starting noise of text to image, but image to image starts from "
                               "the image, noised with the seed's noise: drop latents= and choose seed=")
        check(variation_seed is None, "variation_seed= mixes the starting noise of text to image, but image to image "
                                      "starts from the image: drop variation_seed= and variation_strength=, or "
                                      "try other seeds")


def negative_prompts(negative_prompt, prompts: list[str]) -> list[str]:
    """One negative prompt per prompt: None is "" (diffusers' default), a string is shared by all,
    a list gives one to each prompt."""
    if negative_prompt is None or isinstance(negative_prompt, str):
        return [check_text("negative_prompt", negative_prompt or "", MAX_PROMPT_CHARS)] * len(prompts)
    check(isinstance(negative_prompt, (list, tuple)) and all(isinstance(n, str) for n in negative_prompt),
          f"negative_prompt must be a string, or a list of strings (one per prompt), got {negative_prompt!r}")
    check(len(negative_prompt) == len(prompts),
          f"negative_prompt is a list of {len(negative_prompt)} but there are {len(prompts)} prompts; give one "
          f"negative prompt per prompt, or one string for all")
    for text in dict.fromkeys(negative_prompt):
        check_text("negative_prompt", text, MAX_PROMPT_CHARS)
    return list(negative_prompt)


def rerun_batch_size(prompts: list[str], negatives: list[str], seeds: list[int]) -> int:
    """How many images regenerate() must run together to remake one of these exactly: a batch of
    one prompt at consecutive seeds (what seed=s, num_images_per_prompt=n makes) is run again as
    a whole, since a batch's arithmetic can round differently from one image's; anything else, 1."""
    return len(seeds) if len(set(zip(prompts, negatives, strict=True))) == 1 and are_consecutive(seeds) else 1


def warn_if_truncated(tokenizer, prompt: str, stacklevel: int = 3) -> str | None:
    """Warn (and return the cut text) when `prompt` is longer than the tokenizer reads."""
    limit = tokenizer.model_max_length
    ids = tokenizer(prompt, truncation=False).input_ids
    if len(ids) <= limit:
        return None
    cut = tokenizer.decode(ids[limit - 1:-1])
    warnings.warn(f"prompt is {len(ids)} tokens but CLIP reads only {limit} (start and end included); "
                  f"this part was ignored: {cut!r}. Put the important words first.",
                  PromptTruncatedWarning, stacklevel=stacklevel)
    return cut


def _as_rgb(image, name: str) -> Image.Image:
    check(isinstance(image, Image.Image), f"{name} must be a PIL image, got {type(image).__name__}; "
                                          f"open files with PIL.Image.open(path)")
    return image.convert("RGB") if name == "image" else image.convert("L")


def generate(pipe, prompt: str | list[str], *, negative_prompt: str | list[str] | None = "",
             seed: int | list[int] | None = None,
             num_images_per_prompt: int = 1, num_inference_steps: int | None = None,
             guidance_scale: float | None = None, height: int | None = None, width: int | None = None,
             scheduler: str | None = None, image: Image.Image | None = None, strength: float = 0.8,
             mask_image: Image.Image | None = None, latents: torch.Tensor | None = None,
             variation_seed: int | None = None, variation_strength: float = 0.0,
             should_stop: Callable[[], bool] | None = None) -> Generation:
    """Generate images in one batched pipeline call.

    prompt: one prompt or a list (each gets `num_images_per_prompt` images).
    negative_prompt: one for all prompts, or a list with one per prompt; None is "".
    seed: one seed s gives images the seeds s, s+1, …; a list gives one per image; None is random.
    image/strength: image-to-image; add mask_image (white = repaint) for inpainting.
    latents: the starting noise, e.g. from `sdlab.seeds.make_latents` (overrides the seeds' noise,
    so the images record no seed).
    variation_seed/variation_strength: slerp each image's noise towards another seed's.
    should_stop: asked after every denoising step; when it says True the call ends with
    `GenerationCancelled` (a server uses it to drop the work of a client that went away).
    """
    # 1. Check inputs, and choose the defaults and each image's seed
    plan = plan_generation(pipe, prompt, negative_prompt=negative_prompt, seed=seed,
                           num_images_per_prompt=num_images_per_prompt, num_inference_steps=num_inference_steps,
                           guidance_scale=guidance_scale, height=height, width=width, scheduler=scheduler,
                           image=image, strength=strength, mask_image=mask_image, latents=latents,
                           variation_seed=variation_seed, variation_strength=variation_strength)
    # 2.–4. Starting noise, one pipeline call for the whole batch, parameters on every image
    return run_plan(pipe, plan, should_stop)


@dataclass(frozen=True, eq=False)  # eq=False: its images and tensors have no plain ==
class GenerationPlan:
    """One pipeline call, checked, with every default chosen: one prompt, negative prompt and seed
    per image, and the settings the images share. A server runs the plans of requests that arrive
    together as one call (`join_plans`): an image's row of the batch depends only on its own prompt,
    negative prompt and seed (up to the batch's float rounding)."""

    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    scheduler: str | None  # resolved; None: the pipeline's own
    image: Image.Image | None = None
    strength: float = 0.8
    mask_image: Image.Image | None = None
    latents: torch.Tensor | None = None  # given by hand: then the images record no seed
    variation_seed: int | None = None
    variation_strength: float = 0.0

    @property
    def mode(self) -> str:
        return "txt2img" if self.image is None else ("img2img" if self.mask_image is None else "inpaint")

    @property
    def weighted(self) -> bool:
        """Whether a prompt uses weights: then every text of the call goes through compel's embeddings."""
        return any(is_weighted(text) for text in self.prompts + self.negative_prompts)

    def settings(self) -> tuple:
        """What the images of one call share (for text to image from the seeds' noise: all but the
        prompts, negative prompts and seeds; weighted prompts take another path to the text encoder)."""
        return (self.num_inference_steps, self.guidance_scale, self.height, self.width, self.scheduler,
                self.variation_seed, self.variation_strength, self.weighted)

    def rerun_batch_size(self) -> int:
        """The "Batch size" its images record, for regenerate() (see `rerun_batch_size`)."""
        if self.latents is not None:
            return 1
        return rerun_batch_size(list(self.prompts), list(self.negative_prompts), list(self.seeds))

    def part(self, start: int, stop: int) -> "GenerationPlan":
        """The plan of images start to stop-1 alone."""
        latents = self.latents
        if latents is not None and latents.shape[0] > 1:
            latents = latents[start:stop]
        return replace(self, prompts=self.prompts[start:stop], negative_prompts=self.negative_prompts[start:stop],
                       seeds=self.seeds[start:stop], latents=latents)


def join_plans(plans: list[GenerationPlan]) -> GenerationPlan:
    """One call for the images of several text-to-image plans that share their `settings()`."""
    first = plans[0]
    check(all(p.image is None and p.latents is None and p.settings() == first.settings() for p in plans),
          "only text-to-image plans from the seeds' noise with the same settings can share one call")
    return replace(first, prompts=sum((p.prompts for p in plans), ()),
                   negative_prompts=sum((p.negative_prompts for p in plans), ()),
                   seeds=sum((p.seeds for p in plans), ()))


def plan_generation(pipe, prompt: str | list[str], *, negative_prompt: str | list[str] | None = "",
                    seed: int | list[int] | None = None, num_images_per_prompt: int = 1,
                    num_inference_steps: int | None = None, guidance_scale: float | None = None,
                    height: int | None = None, width: int | None = None, scheduler: str | None = None,
                    image: Image.Image | None = None, strength: float = 0.8, mask_image: Image.Image | None = None,
                    latents: torch.Tensor | None = None, variation_seed: int | None = None,
                    variation_strength: float = 0.0, tokenizer=None) -> GenerationPlan:
    """generate()'s first phase: check every argument before any work (each refusal names the
    argument, the value and the fix), warn about prompts CLIP will cut, choose the model's defaults
    and each image's seed (random ones drawn now).

    tokenizer: what counts the prompts' tokens (None: the pipeline's). A tokenizer must not be used
    by two threads at once (its settings change on every call), so a server that plans requests
    while the pipeline runs passes a copy of its own.
    """
    check(isinstance(prompt, (str, list, tuple)), f"prompt must be a string or a list of strings, got "
                                                  f"{type(prompt).__name__}")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    default_steps, default_guidance = model_defaults(pipe)
    num_inference_steps = default_steps if num_inference_steps is None else num_inference_steps
    guidance_scale = default_guidance if guidance_scale is None else guidance_scale
    if image is not None:
        image = _as_rgb(image, "image")
        mask_image = None if mask_image is None else _as_rgb(mask_image, "mask_image")
        check(min(image.size) >= MIN_SIZE or (height is not None and width is not None),
              f"image is {image.width}×{image.height} pixels, smaller than the {MIN_SIZE}×{MIN_SIZE} the model "
              f"needs: give a bigger image (or height= and width= to resize it to)")
        height = image.height // SIZE_MULTIPLE * SIZE_MULTIPLE if height is None else height
        width = image.width // SIZE_MULTIPLE * SIZE_MULTIPLE if width is None else width
    height = default_size(pipe) if height is None else height  # None, not 0: 0 is refused below
    width = default_size(pipe) if width is None else width
    scheduler = resolve_scheduler_name(scheduler) if scheduler is not None else None
    check_generate_inputs(prompts, num_images_per_prompt=num_images_per_prompt,
                          num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, height=height,
                          width=width, strength=strength, image=image, mask_image=mask_image)
    negatives = negative_prompts(negative_prompt, prompts)
    check_noise_inputs(image, latents, variation_seed, variation_strength)
    named = own_scheduler(pipe, scheduler) if scheduler is not None else None
    check_scheduler_steps(named or pipe.scheduler, num_inference_steps, from_noise=image is None,
                          max_steps=MAX_STEPS)  # it only reads the scheduler
    if named is not None and type(named) is type(pipe.scheduler) and named.config == pipe.scheduler.config:
        scheduler = None  # the pipeline's own, by its name: the same plan as leaving it out
    for text in dict.fromkeys(prompts + negatives):
        if is_weighted(text):
            to_compel(text)  # a malformed weight is refused here, before any work
    for text in dict.fromkeys(prompts + negatives):
        warn_if_truncated(tokenizer or pipe.tokenizer, text, stacklevel=4)

    # one seed per image (the images' own prompts and negative prompts beside them)
    all_prompts = tuple(p for p in prompts for _ in range(num_images_per_prompt))
    all_negatives = tuple(n for n in negatives for _ in range(num_images_per_prompt))
    seeds = tuple(seeds_for(seed, len(all_prompts)))
    if latents is not None:
        latents = _check_latents(pipe, latents, len(all_prompts), height, width)
    has_variation = variation_seed is not None and variation_strength > 0
    return GenerationPlan(all_prompts, all_negatives, seeds, num_inference_steps, float(guidance_scale), height,
                          width, scheduler, image=image, strength=strength, mask_image=mask_image, latents=latents,
                          variation_seed=variation_seed if has_variation else None,
                          variation_strength=float(variation_strength) if variation_seed is not None else 0.0)


def run_plan(pipe, plan: GenerationPlan, should_stop: Callable[[], bool] | None = None) -> Generation:
    """generate()'s phases 2 to 4: the starting noise, one pipeline call, parameters on every image."""
    # 2. One CPU generator and (optionally) one noise tensor per image
    count, latents = len(plan.seeds), plan.latents
    if plan.variation_seed is not None:
        latents = torch.cat([variation_latents(pipe, s, plan.variation_seed, plan.variation_strength, plan.height,
                                               plan.width) for s in plan.seeds])
        latents = _check_latents(pipe, latents, count, plan.height, plan.width)

    # 3. Run the pipeline once for the whole batch, with this call's own scheduler (schedulers keep state)
    call_scheduler = own_scheduler(pipe, plan.scheduler)
    mode = plan.mode
    runner = {"txt2img": txt2img_pipeline, "img2img": img2img_pipeline, "inpaint": inpaint_pipeline}[mode](
        pipe, scheduler=call_scheduler)
    call = dict(prompt=list(plan.prompts), negative_prompt=list(plan.negative_prompts),
                num_inference_steps=plan.num_inference_steps, guidance_scale=plan.guidance_scale,
                generator=[make_generator(s) for s in plan.seeds], output_type="pil")
    if plan.weighted:  # the weights' embeddings instead of the text (plain prompts keep diffusers' own path)
        embeds = embed_prompts(pipe.tokenizer, pipe.text_encoder, list(plan.prompts + plan.negative_prompts))
        del call["prompt"], call["negative_prompt"]
        call |= dict(prompt_embeds=embeds[:count], negative_prompt_embeds=embeds[count:])
    height, width = plan.height, plan.width
    if mode == "txt2img":
        call |= dict(height=height, width=width, latents=latents)
    else:
        image = plan.image
        image = image.resize((width, height), Image.LANCZOS) if image.size != (width, height) else image
        call |= dict(image=image, strength=plan.strength)
        if mode == "inpaint":
            call |= dict(mask_image=plan.mask_image.resize((width, height), Image.NEAREST), height=height,
                         width=width)
    if should_stop is not None:
        call["callback_on_step_end"] = _stop_when(should_stop)
    start = time.perf_counter()
    output = runner(**call)
    seconds = time.perf_counter() - start

    # 4. Every image carries the parameters that made it
    own_latents = plan.latents is not None  # then the seeds did not make the starting noise
    base = GenerationParams(prompt="", seed=None, num_inference_steps=plan.num_inference_steps,
                            guidance_scale=plan.guidance_scale, height=height, width=width,
                            scheduler=scheduler_name(call_scheduler), model=model_name(pipe), mode=mode,
                            strength=None if mode == "txt2img" else float(plan.strength),
                            variation_seed=plan.variation_seed, variation_strength=plan.variation_strength)
    share = seconds / count
    batch = plan.rerun_batch_size()
    results = [GeneratedImage(img, base.replace(prompt=p, negative_prompt=n, seed=None if own_latents else s,
                                                batch_size=batch, batch_pos=k if batch > 1 else 0), share)
               for k, (img, p, n, s) in enumerate(zip(output.images, plan.prompts, plan.negative_prompts, plan.seeds,
                                                      strict=True))]
    return Generation(results, seconds)


class GenerationCancelled(Exception):
    """A generation ended between two denoising steps because its `should_stop()` said so."""


def _stop_when(should_stop: Callable[[], bool]):
    """A diffusers `callback_on_step_end` that ends the call when `should_stop()` is true."""
    def callback(pipe, step: int, timestep, tensors: dict) -> dict:
        if should_stop():
            raise GenerationCancelled(f"stopped after denoising step {step + 1}")
        return tensors
    return callback


def _check_latents(pipe, latents: torch.Tensor, count: int, height: int, width: int) -> torch.Tensor:
    expected = (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    check(isinstance(latents, torch.Tensor) and latents.dim() == 4 and tuple(latents.shape[1:]) == expected,
          f"latents must have shape (N, {', '.join(map(str, expected))}) for {width}×{height} images, got "
          f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}; "
          f"make them with sdlab.seeds.make_latents(pipe, seed, height, width)")
    if latents.shape[0] == 1 and count > 1:
        latents = latents.expand(count, -1, -1, -1)
    check(latents.shape[0] == count, f"latents hold {latents.shape[0]} noise tensors but {count} images are asked for")
    return latents.to(pipe.device, pipe.unet.dtype)
