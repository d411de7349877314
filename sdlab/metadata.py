"""PNG metadata in AUTOMATIC1111's `parameters` format, and regenerating an image from it.

A PNG made by sdlab carries a text chunk that AUTOMATIC1111, ComfyUI and most image
viewers read:

    a small red circle on a blue background
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 42, Size: 64x64, Model: sdlab-tiny
"""
from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .errors import SdlabInputError, check
from .generation import (
    MAX_IMAGES,
    MAX_STEPS,
    MAX_WORK,
    GeneratedImage,
    GenerationParams,
    generate,
    work_of,
)
from .pipelines import load_pipeline
from .presets import find_preset, find_version, models_dirs, tiny_model_dir
from .seeds import MAX_SEED, MAX_SIZE, MIN_SIZE

PARAMETERS_KEY = "parameters"

MAX_PARAMETERS_CHARS = 20_000  # two prompts at their limit and the settings line
MODES = ("txt2img", "img2img", "inpaint")


def _whole(text: str) -> int:
    if not re.fullmatch(r"-?\d{1,20}", text):
        raise ValueError("a whole number")
    return int(text)


def _decimal(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("a number") from None
    if not math.isfinite(value):
        raise ValueError("a finite number")
    return value


# (A1111 key, GenerationParams field, parser); Size is handled apart (it is two fields)
_FIELDS = [
    ("Steps", "num_inference_steps", _whole),
    ("Sampler", "scheduler", str),
    ("CFG scale", "guidance_scale", _decimal),
    ("Seed", "seed", _whole),
    ("Model", "model", str),
    ("Denoising strength", "strength", _decimal),
    ("Variation seed", "variation_seed", _whole),
    ("Variation seed strength", "variation_strength", _decimal),
    ("Batch size", "batch_size", _whole),
    ("Batch pos", "batch_pos", _whole),
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


def split_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """An A1111 `parameters` text as (prompt, negative prompt, {setting: value as written})."""
    *head, last = text.strip().split("\n")
    pairs = {key.strip(): value.strip().strip('"') for key, value in _PAIR.findall(last)}
    prompt_lines, negative = [], ""
    for i, line in enumerate(head):
        if line.startswith("Negative prompt:"):
            negative = "\n".join([line[len("Negative prompt:"):].strip()] + head[i + 1:])
            break
        prompt_lines.append(line)
    return "\n".join(prompt_lines), negative, pairs


def parse_parameters(text: str) -> GenerationParams:
    """GenerationParams from an A1111 `parameters` text (the inverse of `format_parameters`); a field
    that is not what sdlab or AUTOMATIC1111 writes is a SdlabInputError naming it and its value."""
    check(len(text) <= MAX_PARAMETERS_CHARS, f"the PNG's parameters are {len(text)} characters; sdlab writes at "
                                             f"most {MAX_PARAMETERS_CHARS}: this is not a parameters text it made")
    prompt, negative, pairs = split_parameters(text)
    if "Steps" not in pairs:
        raise SdlabInputError("these PNG parameters have no 'Steps: …' line; was the image saved by "
                              "sdlab or AUTOMATIC1111?")
    size = pairs.get("Size", "512x512")
    match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", size)
    check(match is not None, f"Size is {size!r} in the PNG's parameters; it must be width x height, e.g. 64x64")
    width, height = int(match[1]), int(match[2])
    values = {}
    for key, field, parse in _FIELDS:
        if key in pairs:
            try:
                values[field] = parse(pairs[key])
            except ValueError as err:
                raise SdlabInputError(f"{key} is {pairs[key][:40]!r} in the PNG's parameters; it must be {err}") \
                    from None
    values.setdefault("model", "unknown")
    values.setdefault("seed", None)
    params = GenerationParams(prompt=prompt, negative_prompt=negative, width=width,
                              height=height, **values)
    _check_params(params)
    return params


def _check_params(p: GenerationParams) -> None:
    """What generate() would refuse anyway, said as a fault of the PNG's parameters."""
    where = "in the PNG's parameters"
    check(1 <= p.num_inference_steps <= MAX_STEPS,
          f"Steps is {p.num_inference_steps} {where}; it must be 1–{MAX_STEPS}")
    for name, value in (("width", p.width), ("height", p.height)):
        check(MIN_SIZE <= value <= MAX_SIZE and value % 8 == 0,
              f"Size has {name} {value} {where}; it must be a multiple of 8 from {MIN_SIZE} to {MAX_SIZE}")
    check(p.seed is None or 0 <= p.seed <= MAX_SEED, f"Seed is {p.seed} {where}; it must be 0 to 2**64 - 1")
    check(1 <= p.batch_size <= MAX_IMAGES, f"Batch size is {p.batch_size} {where}; it must be 1–{MAX_IMAGES}")
    check(0 <= p.batch_pos < p.batch_size,
          f"Batch pos is {p.batch_pos} {where}; in a batch of {p.batch_size} it must be 0–{p.batch_size - 1}")
    check(p.mode in MODES, f"Mode is {p.mode!r} {where}; it must be one of {', '.join(MODES)}")
    check(0 <= p.variation_strength <= 1, f"Variation seed strength is {p.variation_strength:g} {where}; it must "
                                          f"be 0–1")


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
    except (OSError, ValueError, Image.DecompressionBombError) as err:  # not an image, truncated, absurdly
        # large, or a text chunk too big to inflate (ValueError)
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


def trusted_model(model: str) -> bool:
    """A preset, a fine-tuned version's name in the models folders, or a folder inside a `models`
    folder (the project's, this folder's, the feedback store's or $SDLAB_MODELS'): what a PNG may name
    for `regenerate` to load without asking."""
    if find_preset(model) is not None or find_version(model) is not None:
        return True
    shipped = tiny_model_dir()
    homes = [Path("models"), Path("feedback") / "models", *models_dirs()] + ([shipped.parent] if shipped else [])
    folder = Path(model).resolve()
    return any(folder.is_relative_to(home.resolve()) for home in homes)


def regenerate(png: str | Path | Image.Image, pipe=None, *, force: bool = False,
               trust_model: bool = False) -> GeneratedImage:
    """Make the image stored in a PNG again from its metadata.

    Pixels are identical on the CPU for images of generate() and of seed sweeps: a batch of one
    prompt at consecutive seeds is run again whole (its "Batch size"/"Batch pos"). Other images
    are made again alone, and a batch rounds the last bit differently from one image, so an image
    from a batch of several prompts, from guidance_sweep's batched loop, or from a class server's
    call shared with other requests (`sdlab.app`), comes back within float rounding (a level or
    two), not identical.

    pipe: the model to use; None loads the metadata's Model, if it is a preset, a fine-tuned version's
    label (found by name in the models folders: `sdlab.presets`) or a folder inside a `models` folder
    (`trusted_model`), or anything with `trust_model=True`: a PNG is not a reason to
    load code or weights from anywhere on the disk.
    force: start a job bigger than `MAX_WORK` image-steps at the model's own size (refused, with
    the estimate, without it).
    """
    params = read_params(png)
    if params.mode != "txt2img":
        raise SdlabInputError(f"regenerate() remakes text-to-image results; this image was made with "
                              f"{params.mode}, which also needs the input image")
    if params.seed is None:
        raise SdlabInputError("the PNG's parameters have no Seed, so the image cannot be made again (an image "
                              "made from latents= given by hand records none)")
    if pipe is None:
        check(trust_model or trusted_model(params.model),
              f"the PNG names the model {params.model!r}, which is not a preset, a fine-tuned version in the models "
              f"folders ({', '.join(str(folder) for folder in models_dirs())}; $SDLAB_MODELS lists others) or a "
              f"folder inside a models folder; give the model yourself (sdlab regenerate --model NAME, or "
              f"regenerate(png, pipe)) or, if you trust that folder, --trust-model (trust_model=True)")
        pipe = load_pipeline(params.model)
    work = work_of(pipe, params.batch_size, params.num_inference_steps, params.height, params.width)
    check(force or work <= MAX_WORK,
          f"this PNG asks for {params.batch_size} image(s) × {params.num_inference_steps} steps at "
          f"{params.width}×{params.height}: {work:g} image-steps at the model's own size, more than the "
          f"{MAX_WORK} regenerate starts unasked; pass --force (force=True) to run it anyway")
    result = generate(pipe, params.prompt, negative_prompt=params.negative_prompt,
                      seed=params.seed - params.batch_pos, num_images_per_prompt=params.batch_size,
                      num_inference_steps=params.num_inference_steps, guidance_scale=params.guidance_scale,
                      height=params.height, width=params.width, scheduler=params.scheduler,
                      variation_seed=params.variation_seed, variation_strength=params.variation_strength)
    return result[params.batch_pos]


def pixel_difference(before, after) -> str | None:
    """None for identical pixels, else how far apart they are, in words (and why a level or two can be):
    what `sdlab regenerate` prints."""
    a, b = np.asarray(before.convert("RGB")).astype(int), np.asarray(after.convert("RGB")).astype(int)
    if a.shape != b.shape:
        return f"{before.width}×{before.height} against {after.width}×{after.height} pixels"
    diff = np.abs(a - b).max(axis=-1)
    if not diff.any():
        return None
    most = int(diff.max())
    text = f"{int((diff > 0).sum())} of {diff.size} pixels differ, by at most {most} level{'s' if most > 1 else ''}"
    return text + (" (float rounding: a batch of several prompts or a guidance sweep rounds differently from "
                   "one image, and so can another device or torch version)" if most <= 2 else "")
