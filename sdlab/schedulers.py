"""Scheduler (sampler) names → diffusers classes, including AUTOMATIC1111's display names.

A scheduler decides how noise is removed step by step. All of them share one config (the
noise schedule the model was trained with), so swapping is `Class.from_config(old.config)`.
Not every scheduler can run every model's schedule at every step count: `check_scheduler_steps`
says so before any work.
"""
from __future__ import annotations

import functools
import inspect
import json
from contextlib import contextmanager

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from .errors import SdlabInputError

# display name (AUTOMATIC1111's) → (diffusers class, extra config)
SCHEDULERS = {
    "PNDM": (PNDMScheduler, {}),
    "DDIM": (DDIMScheduler, {}),
    "LMS": (LMSDiscreteScheduler, {"use_karras_sigmas": False}),
    "LMS Karras": (LMSDiscreteScheduler, {"use_karras_sigmas": True}),
    "Euler": (EulerDiscreteScheduler, {"use_karras_sigmas": False}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "Heun": (HeunDiscreteScheduler, {"use_karras_sigmas": False}),
    "DPM++ 2M": (DPMSolverMultistepScheduler, {"use_karras_sigmas": False}),
    "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "UniPC": (UniPCMultistepScheduler, {}),
}

# other names people use: the k-diffusion/Stable Diffusion API names and diffusers class names
ALIASES = {
    "K_LMS": "LMS",
    "K_EULER": "Euler",
    "K_EULER_ANCESTRAL": "Euler a",
    "K_HEUN": "Heun",
    "K_DPMPP_2M": "DPM++ 2M",
    "DPMSolverMultistep": "DPM++ 2M",
    "PNDMScheduler": "PNDM",
    "DDIMScheduler": "DDIM",
    "LMSDiscreteScheduler": "LMS",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "HeunDiscreteScheduler": "Heun",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "UniPCMultistepScheduler": "UniPC",
}

# what a display name chooses beyond its class: each name sets it, none inherits it from the
# scheduler before (else "UniPC" after "DPM++ 2M Karras" would keep Karras sigmas)
NAME_FLAGS = ("use_karras_sigmas",)

_LOOKUP = {name.lower(): name for name in SCHEDULERS} | {a.lower(): n for a, n in ALIASES.items()}


def scheduler_names() -> list[str]:
    """The display names, in the order a dropdown shows them."""
    return list(SCHEDULERS)


def resolve_scheduler_name(name: str) -> str:
    """'k_euler_ancestral', 'Euler a' or 'EulerAncestralDiscreteScheduler' → 'Euler a'."""
    canonical = _LOOKUP.get(str(name).strip().lower())
    if canonical is None:
        raise SdlabInputError(f"scheduler {name!r} is unknown; choose one of {scheduler_names()} "
                              f"(or the aliases {sorted(ALIASES)})")
    return canonical


def make_scheduler(name: str, config):
    """A new scheduler of kind `name` that keeps the noise schedule in `config`."""
    cls, extra = SCHEDULERS[resolve_scheduler_name(name)]
    schedule = {key: value for key, value in dict(config).items() if key not in NAME_FLAGS}
    return cls.from_config(schedule, **extra)


def _uses_karras(scheduler) -> bool:
    accepts = "use_karras_sigmas" in inspect.signature(type(scheduler).__init__).parameters
    return accepts and bool(scheduler.config.get("use_karras_sigmas", False))


def fresh_copy(scheduler):
    """A new scheduler of the same kind and config, without the state `set_timesteps` leaves."""
    return type(scheduler).from_config(scheduler.config)


def own_scheduler(pipe, name: str | None):
    """A scheduler for one call: `name`'s (resolved from any of its names), or a fresh copy of the
    pipeline's own; schedulers keep state, so the pipeline's is never stepped."""
    return make_scheduler(resolve_scheduler_name(name), pipe.scheduler.config) if name else fresh_copy(pipe.scheduler)


def scheduler_name(scheduler) -> str:
    """The display name of a scheduler instance (the inverse of `make_scheduler`)."""
    karras = _uses_karras(scheduler)
    for name, (cls, extra) in SCHEDULERS.items():
        if type(scheduler) is cls and extra.get("use_karras_sigmas", False) == karras:
            return name
    return type(scheduler).__name__


def steps_problem(scheduler, num_inference_steps: int, from_noise: bool = True) -> str | None:
    """Why diffusers cannot run `scheduler` for `num_inference_steps` steps, or None if it can.

    A model's noise schedule can defeat a scheduler: PNDM's warm-up needs 4 steps of a
    "trailing" schedule, and Karras sigmas on a cosine schedule round the first steps to one
    timestep, while diffusers finds its place by the timestep and so cannot start from a repeated
    one. Image to image starts partway with its place given, so only runs `from_noise` meet that.
    """
    key = (type(scheduler), _config_json(scheduler.config), num_inference_steps, from_noise)
    if key not in LAYOUT_PROBLEMS:  # a copy to lay out: set_timesteps changes a scheduler's state
        LAYOUT_PROBLEMS[key] = _layout_problem(fresh_copy(scheduler), num_inference_steps, from_noise)
    return LAYOUT_PROBLEMS[key]


#: steps_problem's answers by scheduler class, config, step count and start: every generate() call
#: asks, a server for every request, and laying out the timesteps takes milliseconds
LAYOUT_PROBLEMS: dict[tuple, str | None] = {}


def _layout_problem(probe, num_inference_steps: int, from_noise: bool) -> str | None:
    """`steps_problem` on a scheduler whose state may change (its timesteps are laid out anew)."""
    try:
        probe.set_timesteps(num_inference_steps)
    except (ValueError, IndexError, RuntimeError):
        return "diffusers fails to lay out its timesteps"
    first = probe.timesteps[0]
    repeats = int((probe.timesteps == first).sum())
    if from_noise and repeats > 1:
        return (f"its first {repeats} timesteps are all {int(first)}, and diffusers cannot start from a "
                f"repeated timestep")
    if from_noise and _adds_noise(probe) and not _steps_stay_finite(type(probe), _config_json(probe.config),
                                                                    num_inference_steps):
        return (f"its arithmetic gives no number (NaN) on this schedule, whose first noise level is "
                f"{float(probe.init_noise_sigma):.0f} times the image's")
    return None


def _adds_noise(scheduler) -> bool:
    """Whether a scheduler's step draws noise (it takes a generator): the ancestral samplers, whose
    step takes the square root of a difference of sigmas (DDIM takes one too, for its eta)."""
    return "generator" in inspect.signature(scheduler.step).parameters


def _config_json(config) -> str:
    """A scheduler config as a key for the caches below (the same config, the same text)."""
    return json.dumps(dict(config), sort_keys=True, default=str)


@functools.lru_cache(maxsize=256)
def _steps_stay_finite(scheduler_class, config_json: str, num_inference_steps: int) -> bool:
    """Whether `num_inference_steps` steps of a scheduler, run from noise on a 2×2 latent with a model
    that predicts 0, keep every value finite. A schedule that ends in pure noise gives the sigma-based
    samplers a huge first sigma (sdlab-tiny's: 20291), and float32 rounding then makes "Euler a" take
    the square root of a negative number at 3 steps: the image would be NaN, shown black. Cached: the
    answer depends on these three only, and every generate() call asks (7-80 ms for 20-500 steps)."""
    probe = scheduler_class.from_config(json.loads(config_json))
    probe.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 1, 2, 2, generator=generator) * probe.init_noise_sigma
    for t in probe.timesteps:
        probe.scale_model_input(sample, t)  # sets the step index the sigma-based samplers count with
        sample = probe.step(torch.zeros_like(sample), t, sample, generator=generator).prev_sample
    return bool(torch.isfinite(sample).all())


#: The step counts every scheduler offered for a model must run (the course's sweeps use 1 to 50).
OFFERED_STEPS = range(1, 51)


def schedulers_for(config) -> list[str]:
    """The display names that can run a model's noise schedule (`config`, its scheduler's config) at
    every step count in `OFFERED_STEPS`: what `sdlab schedulers --model`, the UI and the widget offer.

    Karras sigmas on a cosine schedule, for example, cannot start from noise at 4 steps or more.
    """
    return list(_runnable(_config_json(config)))


@functools.lru_cache(maxsize=32)
def _runnable(config_json: str) -> tuple[str, ...]:
    config = json.loads(config_json)
    names = []
    for name in SCHEDULERS:
        probe = make_scheduler(name, config)
        if all(_layout_problem(probe, n, from_noise=True) is None for n in OFFERED_STEPS):
            names.append(name)
    return tuple(names)


def check_scheduler_steps(scheduler, num_inference_steps: int, from_noise: bool = True,
                          max_steps: int = 500) -> None:
    """Refuse a scheduler and step count diffusers would fail on, naming what works instead."""
    problem = steps_problem(scheduler, num_inference_steps, from_noise)
    if problem is None:
        return
    schedule = f"{scheduler.config.get('beta_schedule')}, {scheduler.config.get('timestep_spacing')} spacing"
    steps = f"{num_inference_steps} step{'s' if num_inference_steps > 1 else ''}"
    fixes = _what_works(scheduler, num_inference_steps, from_noise, max_steps)
    raise SdlabInputError(f"scheduler {scheduler_name(scheduler)!r} cannot run {steps} on this model's noise schedule "
                          f"({schedule}): {problem}; use {', or '.join(fixes) or 'another scheduler'}")


def _what_works(scheduler, num_inference_steps: int, from_noise: bool, max_steps: int) -> list[str]:
    """The fewest more steps that work (tried up to about twice as many), and the first other
    scheduler that works: its own name without Karras, then "DPM++ 2M", then the list's order."""
    fixes = []
    nearby = range(num_inference_steps + 1, min(max_steps, 2 * num_inference_steps + 8) + 1)
    works = [n for n in nearby if steps_problem(scheduler, n, from_noise) is None]
    if works:
        fixes.append(f"num_inference_steps={works[0]}" +
                     (" or more" if works == list(range(works[0], nearby.stop)) else ""))
    name = scheduler_name(scheduler)
    for other in dict.fromkeys([name.removesuffix(" Karras"), "DPM++ 2M", *scheduler_names()]):
        if other != name and other in SCHEDULERS and \
                steps_problem(make_scheduler(other, scheduler.config), num_inference_steps, from_noise) is None:
            return fixes + [f"scheduler={other!r}"]
    return fixes


def set_scheduler(pipe, name: str):
    """Swap `pipe`'s scheduler for `name` in place and return the pipe."""
    pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
    return pipe


@contextmanager
def using_scheduler(pipe, name: str | None):
    """Use scheduler `name` inside a `with` block, then put the old one back."""
    if name is None or resolve_scheduler_name(name) == scheduler_name(pipe.scheduler):
        yield pipe
        return
    old = pipe.scheduler
    set_scheduler(pipe, name)
    try:
        yield pipe
    finally:
        pipe.scheduler = old


# SD 1.5's training noise schedule (its scheduler_config.json), so that the course can plot it
# without downloading the model
SD15_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                 "beta_schedule": "scaled_linear"}


def noise_levels(config) -> dict[str, np.ndarray]:
    """The forward process a model was trained with: at every training timestep t, how much of the
    clean image and how much noise a noised image holds.

    `scheduler.add_noise(x0, noise, t)` returns `signal[t] · x0 + noise[t] · noise`, where
    signal = √ᾱ_t and noise = √(1 − ᾱ_t) (ᾱ_t, `alphas_cumprod`, the product of 1 − β over the
    first t steps), so signal² + noise² = 1. Returns {"t", "signal", "noise", "snr"} (snr =
    signal² / noise², the signal-to-noise ratio). `config`: a scheduler's config or a dict such as
    `SD15_SCHEDULE`.
    """
    config = dict(config)
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    alphas_cumprod = DDPMScheduler(**{k: config[k] for k in keys if k in config}).alphas_cumprod.double().numpy()
    signal, noise = np.sqrt(alphas_cumprod), np.sqrt(1 - alphas_cumprod)
    return {"t": np.arange(len(alphas_cumprod)), "signal": signal, "noise": noise, "snr": signal**2 / noise**2}
