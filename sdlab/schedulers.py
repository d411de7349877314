"""Scheduler (sampler) names → diffusers classes, including AUTOMATIC1111's display names.

A scheduler decides how noise is removed step by step. All of them share one config (the
noise schedule the model was trained with), so swapping is `Class.from_config(old.config)`.
"""
from __future__ import annotations

from contextlib import contextmanager

from diffusers import (
    DDIMScheduler,
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
    return cls.from_config(config, **extra)


def scheduler_name(scheduler) -> str:
    """The display name of a scheduler instance (the inverse of `make_scheduler`)."""
    karras = bool(getattr(scheduler.config, "use_karras_sigmas", False))
    for name, (cls, extra) in SCHEDULERS.items():
        if type(scheduler) is cls and extra.get("use_karras_sigmas", False) == karras:
            return name
    return type(scheduler).__name__


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
