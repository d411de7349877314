"""The VAE: where pixels become latents and latents become pixels (notebook 02).

Stable Diffusion does not denoise pixels. Its VAE's encoder squeezes an image into a small
*latent* tensor (4 channels at 1/8 of the size for SD 1.5: 512×512×3 → 64×64×4, 48 times fewer
numbers; 1/4 for sdlab-tiny: 64×64×3 → 16×16×4), the UNet works there, and the decoder paints the
result back into pixels. Two things to know:

- the encoder gives a distribution per image (`latent_dist`); `encode_image` takes its mean, so the
  same image always gives the same latents (diffusers' img2img draws a sample from it instead);
- the latents are multiplied by `vae.config.scaling_factor` (0.18215 for SD 1.5) so that their
  spread is about 1, the spread of the noise the UNet learned to remove; `decode_latents`
  divides it back out before decoding.

`encode_image`/`decode_latents` compute; `channel_images` turns latents into pictures;
`show_channels` only displays.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .errors import check
from .grids import labelled_grid, show_image
from .loop import decode


def encode_image(pipe, image: Image.Image) -> torch.Tensor:
    """An image → its latents (1 × C × H/f × W/f), already multiplied by the VAE's scaling factor.

    The image is resized to a whole multiple of the VAE's factor f (8 for SD, 4 for sdlab-tiny)
    when it is not one; a non-RGB image is converted to RGB. The mean of the encoder's distribution
    is used, so the result is the same on every call.
    """
    check(isinstance(image, Image.Image), f"image must be a PIL image (e.g. Image.open(path)), got "
                                          f"{type(image).__name__}")
    factor = pipe.vae_scale_factor
    check(min(image.size) >= factor, f"image is {image.width}×{image.height} pixels; the VAE needs at least "
                                     f"{factor}×{factor} (give a bigger image)")
    image = image.convert("RGB")
    size = (image.width // factor * factor, image.height // factor * factor)
    if size != image.size:
        image = image.resize(size, Image.LANCZOS)
    vae = pipe.vae
    pixels = pipe.image_processor.preprocess(image).to(device=vae.device, dtype=vae.dtype)  # [-1, 1], 1×3×H×W
    with torch.no_grad():
        return vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor


def decode_latents(pipe, latents: torch.Tensor) -> list[Image.Image]:
    """Latents (N × C × h × w, scaled as the UNet sees them) → N images through the VAE's decoder."""
    check(isinstance(latents, torch.Tensor) and latents.dim() == 4,
          f"latents must be a 4-D tensor (images × channels × height × width), got "
          f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}")
    channels = pipe.vae.config.latent_channels
    check(latents.shape[1] == channels, f"latents have {latents.shape[1]} channels; this VAE decodes {channels} "
                                        f"(latents are images × {channels} × height/{pipe.vae_scale_factor} × "
                                        f"width/{pipe.vae_scale_factor})")
    pixels = decode(pipe.vae, latents.to(device=pipe.vae.device, dtype=pipe.vae.dtype))
    return pipe.image_processor.postprocess(pixels, output_type="pil")


def channel_images(latents: torch.Tensor, index: int = 0, scale: int | None = None) -> list[Image.Image]:
    """Each channel of one latent image as a grey picture (black = low, white = high), all channels on
    one shared range so that their brightness compares; enlarged `scale` times with sharp pixels
    (by default to about 128 pixels a side)."""
    check(isinstance(latents, torch.Tensor) and latents.dim() in (3, 4),
          "latents must be a tensor of channels × height × width (or images × channels × height × width)")
    one = latents[index] if latents.dim() == 4 else latents
    values = one.detach().float().cpu().numpy()
    low, high = np.percentile(values, [1, 99])
    grey = np.clip((values - low) / max(high - low, 1e-6), 0, 1)
    scale = scale or max(1, 128 // max(values.shape[1:]))
    return [Image.fromarray((g * 255).round().astype(np.uint8)).resize(
        (g.shape[1] * scale, g.shape[0] * scale), Image.NEAREST) for g in grey]


def latent_summary(latents: torch.Tensor) -> str:
    """Shape, mean and spread of latents, in one line."""
    values = latents.detach().float()
    return f"shape {tuple(values.shape)}, mean {values.mean():+.2f}, standard deviation {values.std():.2f}"


# ---- display (notebooks) ------------------------------------------------------------------

def show_channels(latents: torch.Tensor, index: int = 0, title: str | None = None) -> None:
    """Display the channels of one latent image side by side, labelled."""
    images = channel_images(latents, index)
    show_image(labelled_grid(images, col_labels=[f"channel {c}" for c in range(len(images))], title=title), scale=1)

