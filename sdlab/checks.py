"""Self-checks that notebook cells call after an exercise.

Each check returns a `Passed` note (shown as the cell's result) or raises `CheckFailed`
with what is wrong and what to try — the message is the teaching, not just "False".
"""
from __future__ import annotations

import html
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from .tiny.captions import parse_prompt
from .tiny.checker import read_scene


class CheckFailed(AssertionError):
    """A self-check found a problem; the message says what to look at."""


class Passed(str):
    """A passed check; shows as a green tick line in a notebook."""

    def __str__(self) -> str:
        return f"✓ {str.__str__(self)}"

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return f"<span style='color:#080'>{html.escape(str(self))}</span>"


def _image(image) -> Image.Image:
    if hasattr(image, "image"):  # a GeneratedImage
        image = image.image
    if not isinstance(image, Image.Image):
        raise CheckFailed(f"expected a PIL image, got {type(image).__name__}; "
                          f"generate(...) returns results whose .images are PIL images")
    return image


def _pixels(image) -> np.ndarray:
    return np.asarray(_image(image).convert("RGB")).astype(np.int16)


def picture(value, name: str = "the image") -> Passed:
    """`value` is a PIL image itself, not generate()'s result for it (which a Gradio image, numpy
    and the grader cannot take as a picture)."""
    if hasattr(value, "image") and hasattr(value, "params"):
        raise CheckFailed(f"{name} is a GeneratedImage (the picture and the parameters that made it); take its "
                          f"picture: result[0].image, or result.images[0]")
    _image(value)
    return Passed(f"{name} is a picture")


def images_list(images, count: int | None = None, size: tuple[int, int] | None = None, name: str = "images"):
    """`images` is a list of `count` PIL images of `size` (width, height)."""
    if not isinstance(images, (list, tuple)):
        raise CheckFailed(f"{name} should be a list of images, got {type(images).__name__}")
    if count is not None and len(images) != count:
        raise CheckFailed(f"{name} has {len(images)} images, expected {count}")
    for i, image in enumerate(images):
        picture(image, f"{name}[{i}]")
        pixels = _pixels(image)
        if size is not None and (pixels.shape[1], pixels.shape[0]) != tuple(size):
            raise CheckFailed(f"{name}[{i}] is {pixels.shape[1]}×{pixels.shape[0]}, expected {size[0]}×{size[1]}")
    return Passed(f"{name}: {len(images)} image(s)" + (f" of {size[0]}×{size[1]}" if size else ""))


def same_images(a, b, what: str = "the two images") -> Passed:
    """`a` and `b` are identical pixel for pixel (same seed and settings → same image)."""
    pa, pb = _pixels(a), _pixels(b)
    if pa.shape != pb.shape:
        raise CheckFailed(f"{what} have different sizes {pa.shape[1]}×{pa.shape[0]} and {pb.shape[1]}×{pb.shape[0]}")
    diff = np.abs(pa - pb)
    if diff.max() > 0:
        raise CheckFailed(f"{what} differ in {(diff.max(axis=2) > 0).sum()} pixels (largest difference "
                          f"{diff.max()} of 255): did you use the same seed, a fresh generator (or the same "
                          f"latents) and the same prompt, steps and guidance for both?")
    return Passed(f"{what} are identical, pixel for pixel")


def different_images(a, b, what: str = "the two images", min_share: float = 0.005) -> Passed:
    """`a` and `b` clearly differ (different seeds → different images): at least `min_share` of
    the pixels changed by more than 10 levels (a small object moving is enough)."""
    pa, pb = _pixels(a), _pixels(b)
    share = float((np.abs(pa - pb).max(axis=2) > 10).mean()) if pa.shape == pb.shape else 1.0
    if share < min_share:
        raise CheckFailed(f"{what} are (almost) the same ({share:.1%} of the pixels differ): "
                          f"did you give them different seeds?")
    return Passed(f"{what} differ ({share:.0%} of the pixels changed)")


def matches_reference(image, reference: str | Path, tolerance: int = 3) -> Passed:
    """The replicability test: `image` reproduces the stored reference image.

    The noise is identical everywhere; what can differ is the last bit of float arithmetic
    (the number of CPU threads, the processor, the GPU), which moves a few pixels by a level or
    two out of 255. `tolerance` allows that much and no more.
    """
    reference = Path(reference)
    if not reference.exists():
        raise CheckFailed(f"reference image {reference} not found; run the notebook from its own folder")
    ref, got = _pixels(Image.open(reference)), _pixels(image)
    if ref.shape != got.shape:
        raise CheckFailed(f"your image is {got.shape[1]}×{got.shape[0]} but the reference is "
                          f"{ref.shape[1]}×{ref.shape[0]}: use the same width and height")
    diff = np.abs(ref - got)
    if diff.max() > tolerance:
        info = Image.open(reference).info.get("parameters", "")
        raise CheckFailed(f"your image differs from the reference (mean difference {diff.mean():.2f}, largest "
                          f"{diff.max()}). Use exactly the reference's settings:\n{info}\n"
                          f"and a CPU generator: torch.Generator('cpu').manual_seed(seed)")
    largest = int(diff.max())
    return Passed(f"replicated {reference.name} exactly, pixel for pixel" if largest == 0 else
                  f"replicated {reference.name}: {(diff.max(axis=2) > 0).mean():.2%} of the pixels differ, "
                  f"by at most {largest} of 255 (float rounding)")


def follows_prompt(image, prompt: str, attributes=("colour", "background", "shape")) -> Passed:
    """For sdlab-tiny: the checker reads the attributes the prompt names back from the pixels."""
    wanted = {k: v for k, v in parse_prompt(prompt).items() if k in attributes}
    if not wanted:
        raise CheckFailed(f"the prompt {prompt!r} names none of {attributes}; try 'a red circle on a blue background'")
    seen = read_scene(_image(image)).as_dict()
    wrong = {k: (v, seen.get(k)) for k, v in wanted.items() if seen.get(k) != v}
    if wrong:
        detail = ", ".join(f"{k}: asked {v!r}, got {got!r}" for k, (v, got) in wrong.items())
        raise CheckFailed(f"the image does not follow the prompt ({detail}); try another seed or a higher guidance")
    return Passed("the image follows the prompt: " + ", ".join(f"{k} {v}" for k, v in wanted.items()))


def course_file(relative: str) -> Path:
    """A file of the course (e.g. "images/02_reference.png") from a notebook's folder or the repo."""
    candidates = [Path.cwd() / ".." / relative, Path.cwd() / relative,
                  Path(__file__).resolve().parent.parent / relative]
    if relative.startswith("images/"):  # installed with the package (pip install, as in Colab)
        try:
            candidates.append(Path(str(resources.files("sdlab.images") / relative.removeprefix("images/"))))
        except (ModuleNotFoundError, TypeError):  # a checkout installed before images/ was a package
            pass
    for path in candidates:
        if path.exists():
            return path.resolve()
    raise CheckFailed(f"{relative} not found; run the notebook from the course's notebooks/ folder, or "
                      f"reinstall sdlab (pip install), which ships the course's images")
