"""PNG metadata in AUTOMATIC1111's `parameters` format, and regenerating an image from it.

A PNG made by sdlab carries a text chunk that AUTOMATIC1111, ComfyUI and most image
viewers read:

    a small red circle on a blue background
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 42, Size: 64x64, Model: sdlab-tiny
"""
from __future__ import annotations

import io
import re
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .errors import SdlabInputError
from .generation import GeneratedImage, GenerationParams

PARAMETERS_KEY = "parameters"

# (A1111 key, GenerationParams field, parser); Size is handled apart (it is two fields)
_FIELDS = [
    ("Steps", "num_inference_steps", int),
    ("Sampler", "scheduler", str),
    ("CFG scale", "guidance_scale", float),
    ("Seed", "seed", int),
    ("Model", "model", str),
    ("Denoising strength", "strength", float),
    ("Variation seed", "variation_seed", int),
    ("Variation seed strength", "variation_strength", float),
    ("Batch size", "batch_size", int),
    ("Batch pos", "batch_pos", int),
    ("Mode", "mode", str),
]


def _quote(value) -> str:
    text = str(value)
    return f'"{text}"' if any(ch in text for ch in ',:"') else text


def _number(value: float) -> str:
    """A float as short as it reads back exactly: 7.5 → '7.5', 5.0 → '5', 1/3 → '0.3333333333333333'
    (six digits would make regenerate() use another guidance)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def format_parameters(params: GenerationParams) -> str:
    """The A1111 `parameters` text for `params`."""
    lines = [params.prompt]
    if params.negative_prompt:
        lines.append(f"Negative prompt: {params.negative_prompt}")
    pairs = [("Steps", params.num_inference_steps), ("Sampler", params.scheduler),
             ("CFG scale", _number(params.guidance_scale))] + ([] if params.seed is None else [("Seed", params.seed)])
    pairs += [("Size", f"{params.width}x{params.height}"), ("Model", params.model)]
    if params.mode != "txt2img":
        pairs += [("Mode", params.mode), ("Denoising strength", _number(params.strength))]
    if params.variation_seed is not None:
        pairs += [("Variation seed", params.variation_seed),
                  ("Variation seed strength", _number(params.variation_strength))]
    if params.batch_size > 1:
        pairs += [("Batch size", params.batch_size), ("Batch pos", params.batch_pos)]
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in pairs))
    return "\n".join(lines)


_PAIR = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^"])*"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> GenerationParams:
    """GenerationParams from an A1111 `parameters` text (the inverse of `format_parameters`)."""
    *head, last = text.strip().split("\n")
    pairs = {key.strip(): value.strip().strip('"') for key, value in _PAIR.findall(last)}
    if "Steps" not in pairs:
        raise SdlabInputError("these PNG parameters have no 'Steps: …' line; was the image saved by "
                              "sdlab or AUTOMATIC1111?")
    prompt_lines, negative = [], ""
    for i, line in enumerate(head):
        if line.startswith("Negative prompt:"):
            negative = "\n".join([line[len("Negative prompt:"):].strip()] + head[i + 1:])
            break
        prompt_lines.append(line)
    width, height = (int(v) for v in pairs.get("Size", "512x512").split("x"))
    values = {field: parse(pairs[key]) for key, field, parse in _FIELDS if key in pairs}
    values.setdefault("model", "unknown")
    values.setdefault("seed", None)
    return GenerationParams(prompt="\n".join(prompt_lines), negative_prompt=negative, width=width, height=height,
                            **values)


def _png_info(result: GeneratedImage) -> PngInfo:
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(result.params))
    return info


def save_png(result: GeneratedImage, path: str | Path) -> Path:
    """Save an image with its parameters in the PNG's `parameters` text chunk."""
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise SdlabInputError(f"cannot write {path}: {path.parent} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        result.image.save(path, pnginfo=_png_info(result))
    except OSError as err:
        raise SdlabInputError(f"cannot write {path} ({err.strerror or err}): "
                              "choose a folder you can write to") from None
    return path


def open_image(path: str | Path) -> Image.Image:
    """An image file, opened; a missing file, or one that is no image, is an error that says so."""
    path = Path(path)
    if not path.is_file():
        raise SdlabInputError(f"there is no file {path}" + ("" if path.parent.is_dir() else
                                                              f" (nor a folder {path.parent})"))
    try:
        image = Image.open(path)
        image.load()
    except (OSError, Image.DecompressionBombError) as err:  # not an image, truncated, or absurdly large
        raise SdlabInputError(f"{path} is not an image PIL can read ({err}); give a PNG or a JPEG") from None
    return image


def png_bytes(result: GeneratedImage) -> bytes:
    """The image as PNG bytes with its parameters inside (what `save_png` writes to a file)."""
    buffer = io.BytesIO()
    result.image.save(buffer, format="PNG", pnginfo=_png_info(result))
    return buffer.getvalue()


def read_params(png: str | Path | Image.Image) -> GenerationParams:
    """The parameters stored in a PNG file (or an opened PNG image)."""
    if not isinstance(png, (str, Path, Image.Image)):
        raise SdlabInputError(f"read_params takes a PNG's path or an opened PNG image, got {type(png).__name__}")
    image = png if isinstance(png, Image.Image) else open_image(png)
    text = image.info.get(PARAMETERS_KEY)
    if text is None:
        raise SdlabInputError(f"{getattr(image, 'filename', 'this image') or 'this image'} has no "
                              f"'{PARAMETERS_KEY}' text chunk; save images with sdlab.save_png to keep them")
    return parse_parameters(text)


def regenerate(png: str | Path | Image.Image, pipe=None) -> GeneratedImage:
    """Make the image stored in a PNG again from its metadata.

    Pixels are identical on the CPU for images of generate() and of seed sweeps: a batch of one
    prompt at consecutive seeds is run again whole (its "Batch size"/"Batch pos"). Other images
    are made again alone, and a batch rounds the last bit differently from one image, so an image
    from a batch of several prompts, or from guidance_sweep's batched loop, comes back within float
    rounding (a level or two), not identical. `pipe` is loaded from the metadata's Model when not given.
    """
    from .generation import generate
    from .pipelines import load_pipeline

    params = read_params(png)
    if params.mode != "txt2img":
        raise SdlabInputError(f"regenerate() remakes text-to-image results; this image was made with "
                              f"{params.mode}, which also needs the input image")
    if params.seed is None:
        raise SdlabInputError("the PNG's parameters have no Seed, so the image cannot be made again (an image "
                              "made from latents= given by hand records none)")
    pipe = pipe or load_pipeline(params.model)
    result = generate(pipe, params.prompt, negative_prompt=params.negative_prompt,
                      seed=params.seed - params.batch_pos, num_images_per_prompt=params.batch_size,
                      num_inference_steps=params.num_inference_steps, guidance_scale=params.guidance_scale,
                      height=params.height, width=params.width, scheduler=params.scheduler,
                      variation_seed=params.variation_seed, variation_strength=params.variation_strength)
    return result[params.batch_pos]
