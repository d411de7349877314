"""Seeds and latents: where an image's randomness comes from.

A pipeline starts from a tensor of Gaussian noise, the *latents* (1×4×H/8×W/8 for Stable
Diffusion). A seed fixes that noise. sdlab always draws it on the CPU with one
`torch.Generator` per image, so a seed gives the same latents — and the same image — on a
laptop, a CUDA GPU or Colab, and image k of a batch equals a single run with seed k.
"""
from __future__ import annotations

import random

import torch

from .errors import SdlabInputError, check, is_number, is_whole, suggest_multiple

MAX_SEED = 2**64 - 1  # torch.Generator accepts seeds in [0, 2**64)


def check_seed(seed, name: str = "seed") -> int:
    """Return `seed` as an int, or raise a teaching error if it cannot be a seed."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        if isinstance(seed, float) and seed.is_integer():
            seed = int(seed)
        else:
            raise SdlabInputError(f"{name} must be a whole number in [0, 2**64), got {seed!r} "
                                  f"({type(seed).__name__}); e.g. {name}=42")
    if not 0 <= seed <= MAX_SEED:
        raise SdlabInputError(f"{name} must be in [0, 2**64), got {seed}; e.g. {name}=42")
    return seed


def random_seed() -> int:
    """A fresh random seed (what AUTOMATIC1111 does for seed -1), small enough to type."""
    return random.SystemRandom().randrange(0, 2**32)


def seeds_for(seed: int | list[int] | None, count: int) -> list[int]:
    """One seed per image: an explicit list is used as is; one seed s gives s, s+1, s+2, …"""
    if seed is None:
        seed = random_seed()
    if isinstance(seed, (list, tuple)):
        if len(seed) != count:
            raise SdlabInputError(f"seed is a list of {len(seed)} seeds but {count} images are asked for; "
                                  f"give one seed per image or a single seed")
        return [check_seed(s) for s in seed]
    seed = check_seed(seed)
    if seed + count - 1 > MAX_SEED:
        raise SdlabInputError(f"seed {seed} + {count} images goes past 2**64 - 1; use a smaller seed")
    return [seed + i for i in range(count)]


def are_consecutive(seeds: list[int]) -> bool:
    """Whether `seeds` are s, s+1, s+2, … (what one seed s gives a batch)."""
    return seeds == list(range(seeds[0], seeds[0] + len(seeds)))


def check_variation(variation_seed, variation_strength) -> None:
    """A variation_strength is a number in [0, 1], and above 0 only with a variation_seed to mix towards."""
    if not (is_number(variation_strength) and 0 <= variation_strength <= 1):  # NaN fails both comparisons
        raise SdlabInputError(f"variation_strength must be a number from 0 to 1, got {variation_strength!r}; "
                              f"0.1 gives a close variation")
    if variation_seed is not None:
        check_seed(variation_seed, "variation_seed")
    elif variation_strength > 0:
        raise SdlabInputError(f"variation_strength {variation_strength:g} has no seed to mix towards: pass "
                              f"variation_seed= too, e.g. variation_seed=7")


def make_generator(seed: int) -> torch.Generator:
    """A CPU random generator for `seed` (CPU so that results do not depend on the GPU)."""
    return torch.Generator("cpu").manual_seed(check_seed(seed))


def latent_shape(pipe, height: int, width: int, batch_size: int = 1) -> tuple[int, int, int, int]:
    """(batch, channels, height/f, width/f), f being the VAE's downscale factor (8 for SD)."""
    factor = pipe.vae_scale_factor
    return (batch_size, pipe.unet.config.in_channels, height // factor, width // factor)


def default_size(pipe) -> int:
    """The image size a pipeline's UNet was trained for (512 for SD 1.5, 64 for sdlab-tiny)."""
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE = 32, 2048, 8


def check_size(name: str, value) -> int:
    """The one rule for an image's height or width, in pixels (every entry point checks through it)."""
    check(is_whole(value),
          f"{name} must be a whole number of pixels, got {value!r}")
    check(value % SIZE_MULTIPLE == 0,
          f"{name} must be a multiple of {SIZE_MULTIPLE}, got {value}; {suggest_multiple(value, SIZE_MULTIPLE)}")
    check(MIN_SIZE <= value <= MAX_SIZE, f"{name} must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {value}")
    return value


def make_latents(pipe, seed: int, height: int | None = None, width: int | None = None,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """Exactly the starting noise the pipeline draws for `seed` (before scheduler scaling).

    Passing these as `latents=` gives the same image as passing `generator=make_generator(seed)`.
    """
    from diffusers.utils.torch_utils import randn_tensor  # heavy: diffusers loads only to make latents

    height = check_size("height", default_size(pipe) if height is None else height)
    width = check_size("width", default_size(pipe) if width is None else width)
    return randn_tensor(latent_shape(pipe, height, width), generator=make_generator(seed),
                        device=torch.device("cpu"), dtype=dtype or pipe.unet.dtype)


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `a` (t=0) to `b` (t=1).

    Straight averaging of two Gaussian noises shrinks their length, and the model sees "less
    noise" than it expects; slerp keeps the length, so every in-between is valid noise.
    """
    if a.shape != b.shape:
        raise SdlabInputError(f"slerp mixes two noises of one shape, got {tuple(a.shape)} and {tuple(b.shape)}; "
                              f"make both with make_latents(pipe, seed) at the same height and width")
    a32, b32 = a.float(), b.float()
    dot = (a32 * b32).sum() / (a32.norm() * b32.norm())
    omega = torch.arccos(dot.clamp(-1, 1))
    if omega.abs() < 1e-4:
        return ((1 - t) * a32 + t * b32).to(a.dtype)
    mixed = (torch.sin((1 - t) * omega) * a32 + torch.sin(t * omega) * b32) / torch.sin(omega)
    return mixed.to(a.dtype)


def variation_latents(pipe, seed: int, variation_seed: int, strength: float,
                      height: int | None = None, width: int | None = None) -> torch.Tensor:
    """Latents `strength` of the way from `seed`'s noise to `variation_seed`'s (AUTOMATIC1111's
    "variation seed"): small strengths give close variations of the same image."""
    if not 0.0 <= strength <= 1.0:
        raise SdlabInputError(f"variation strength must be in [0, 1], got {strength}; try 0.1 for a close variation")
    base = make_latents(pipe, seed, height, width)
    other = make_latents(pipe, variation_seed, height, width)
    return slerp(strength, base, other)
