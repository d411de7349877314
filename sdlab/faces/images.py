"""The pictures face repair accepts: checked and turned into RGB pixel arrays before any work."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ..errors import check

MIN_SIDE = 32      # a face needs ~16 px to be found at all; smaller pictures hold none
MAX_SIDE = 8192    # per side, for the input and for the upscaled output
MAX_UPSCALE = 4
CONVERTIBLE_MODES = {"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr"}


def as_pil(image, name: str = "image") -> Image.Image:
    """A PIL image from a PIL image or a uint8 array (H, W) / (H, W, 3|4), or a clear error."""
    if isinstance(image, np.ndarray):
        check(image.dtype == np.uint8,
              f"{name} is a {image.dtype} array; face repair reads 8-bit pixels 0–255: "
              f"pass (array * 255).round().astype('uint8') for 0–1 floats")
        check(image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4)),
              f"{name} is an array of shape {image.shape}; give (height, width, 3) RGB or (height, width) grey")
        return Image.fromarray(image)
    check(isinstance(image, Image.Image),
          f"{name} must be a PIL image or a uint8 numpy array, got {type(image).__name__}; "
          f"open files with PIL.Image.open(path)")
    check(image.mode in CONVERTIBLE_MODES,
          f"{name} has mode {image.mode!r} (not 8-bit RGB, grey, palette or CMYK), which face repair cannot read "
          f"without losing levels; convert it to 8-bit RGB yourself first, e.g. "
          f"Image.fromarray((np.asarray(im) / 256).astype('uint8')).convert('RGB') for 16-bit")
    return image


def check_size(image: Image.Image, upscale: float, name: str = "image") -> None:
    """Reject pictures too small to hold a face, or too big (before or after upscaling)."""
    width, height = image.size
    check(min(width, height) >= MIN_SIDE,
          f"{name} is {width}×{height} pixels; face repair needs at least {MIN_SIDE}×{MIN_SIDE} "
          f"(a face must be ~16 px wide to be found); use a bigger picture")
    check(max(width, height) <= MAX_SIDE,
          f"{name} is {width}×{height} pixels, larger than {MAX_SIDE} on a side; "
          f"shrink it first, e.g. image.thumbnail(({MAX_SIDE // 2}, {MAX_SIDE // 2}))")
    out = max(width, height) * upscale
    check(out <= MAX_SIDE,
          f"upscale={upscale:g} would make a {round(width * upscale)}×{round(height * upscale)} picture, larger "
          f"than {MAX_SIDE} on a side; use upscale <= {math.floor(MAX_SIDE / max(width, height) * 100) / 100:g}")


def check_upscale(upscale) -> float:
    check(isinstance(upscale, (int, float)) and not isinstance(upscale, bool) and math.isfinite(upscale)
          and 1 <= upscale <= MAX_UPSCALE,
          f"upscale must be a number from 1 to {MAX_UPSCALE} (how many times bigger the result is), "
          f"got {upscale!r}; 1 keeps the size, 2 doubles it")
    return float(upscale)


def check_weight(weight) -> float:
    check(isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight)
          and 0 <= weight <= 1,
          f"weight must be between 0 and 1 (0 keeps the original face, 1 takes the restored one), "
          f"got {weight!r}; 0.5 mixes them half and half")
    return float(weight)


def rgb_pixels(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an already checked image."""
    return np.asarray(image.convert("RGB"))


def resize_pixels(pixels: np.ndarray, upscale: float) -> np.ndarray:
    """The whole picture made `upscale` times bigger (Lanczos, as GFPGAN does without a background model)."""
    import cv2  # optional dependency (the faces extra: opencv)

    if upscale == 1:
        return pixels.copy()
    height, width = pixels.shape[:2]
    size = (round(width * upscale), round(height * upscale))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_LANCZOS4)


def with_alpha(result: Image.Image, original: Image.Image) -> Image.Image:
    """Give `result` the original's transparency (resized), if it had any: an alpha band, or a
    palette's or a grey image's transparent colour."""
    if "A" not in original.getbands() and not original.has_transparency_data:
        return result
    alpha = (original if "A" in original.getbands() else original.convert("RGBA")).getchannel("A")
    result = result.convert("RGBA")
    result.putalpha(alpha.resize(result.size, Image.LANCZOS))
    return result
