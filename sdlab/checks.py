"""Self-checks that notebook cells call after an exercise.

Each check returns a `Passed` note (shown as the cell's result) or raises `CheckFailed`
with what is wrong and what to try — the message is the teaching, not just "False".
"""
from __future__ import annotations

import contextlib
import html
import io
import math
import os
import re
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


def close_images(a, b, what: str = "the two images", tolerance: int = 2) -> Passed:
    """`a` and `b` are the same picture up to `tolerance` levels of 255 (float rounding: a batch
    or another order of the same arithmetic can move the last bit)."""
    pa, pb = _pixels(a), _pixels(b)
    if pa.shape != pb.shape:
        raise CheckFailed(f"{what} have different sizes {pa.shape[1]}×{pa.shape[0]} and {pb.shape[1]}×{pb.shape[0]}")
    largest = int(np.abs(pa - pb).max())
    if largest > tolerance:
        raise CheckFailed(f"{what} differ by up to {largest} levels of 255 (more than rounding can explain): check "
                          f"the seed, the prompt and every setting")
    return Passed(f"{what} are the same picture (largest difference {largest} of 255)")


def made_with(pipe, image, prompt, what: str = "the image", **settings) -> Passed:
    """`image` is the one `generate(pipe, prompt, **settings)` makes (up to float rounding)."""
    from .generation import generate  # heavy: loads torch and diffusers only when a check needs it

    picture(image, what)
    described = ", ".join(f"{k}={v!r}" for k, v in settings.items())
    try:
        close_images(image, generate(pipe, prompt, **settings)[0].image, what)
    except CheckFailed:
        raise CheckFailed(f"{what} is not the image generate() makes for {prompt!r} with {described}: use that "
                          f"seed and setting, and keep the others at their defaults") from None
    return Passed(f"{what} is the image for {prompt!r} with {described}")


def parameter_count(module, value, name: str = "the count") -> Passed:
    """`value` is the number of learned numbers in `module` (every parameter tensor, all of it)."""
    total = sum(p.numel() for p in module.parameters())
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise CheckFailed(f"{name} should be a whole number, got {type(value).__name__}")
    if value != total:
        tensors = len(list(module.parameters()))
        hint = ("you counted tensors, not the numbers in them" if value == tensors else
                "each tensor holds many numbers: count them all (a 3×3 weight holds 9)")
        raise CheckFailed(f"{name} is {value:,}, not the module's number of parameters: {hint}")
    return Passed(f"{total:,} parameters")


def fitted_slope(x, y, value, name: str = "the slope") -> Passed:
    """`value` is the slope of the least-squares straight line through the points (x, y)."""
    slope = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)[0]
    if not isinstance(value, (int, float, np.floating)):
        raise CheckFailed(f"{name} should be one number, got {type(value).__name__}: take the first of the two "
                          f"coefficients a degree-1 fit returns")
    if not np.isclose(value, slope, rtol=1e-6):
        which = "the intercept (the second coefficient)" if np.isclose(value, np.polyfit(x, y, 1)[1]) else "not it"
        raise CheckFailed(f"{name} ({value:.6g}) is {which}: fit seconds (y) against steps (x), degree 1, and keep "
                          f"the coefficient of x")
    return Passed(f"{name} is {value:.4g}")


def best_key(scores: dict, value, what: str = "the best key") -> Passed:
    """`value` is a key of `scores` whose score is the highest (scores: key → number)."""
    if value not in scores:
        raise CheckFailed(f"{value!r} is not one of the keys ({', '.join(map(str, scores))}): give the key, not "
                          f"its score")
    top = max(scores.values())
    if scores[value] != top:
        raise CheckFailed(f"{what} {value!r} scores {scores[value]:.0%}, and another key scores more: look at "
                          f"every key's score, not the first or the last")
    return Passed(f"{what}: {value!r}, {top:.0%}")


def precision_rule(precision_for) -> Passed:
    """`precision_for(device_type)` gives float16 for the GPUs (cuda, mps) and float32 for the CPU."""
    import torch  # only where this check runs

    for device, wanted in (("cuda", torch.float16), ("mps", torch.float16), ("cpu", torch.float32)):
        got = precision_for(device)
        if got != wanted:
            raise CheckFailed(f"precision_for({device!r}) gives {got!r}; section 2 says which precision sdlab "
                              f"uses on {'a GPU' if device != 'cpu' else 'the CPU'} and why")
    return Passed("half precision on the GPUs, full precision on the CPU")


def token_reader(read_token, variable: str = "HF_TOKEN") -> Passed:
    """`read_token()` returns the environment's token without surrounding spaces, None when it is
    unset or blank, and never prints it (tried with made-up tokens; the environment is restored)."""
    saved = os.environ.get(variable)
    made_up = "hf_" + "x" * 34
    try:
        for value, wanted in ((made_up, made_up), (f"  {made_up}\n", made_up), ("", None), ("   ", None),
                              (None, None)):
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value
            shown = io.StringIO()
            with contextlib.redirect_stdout(shown):
                got = read_token()
            if made_up in shown.getvalue():
                raise CheckFailed("read_token printed the token: a printed token is saved with the notebook")
            if got != wanted:
                setting = "unset" if value is None else repr(value)
                raise CheckFailed(f"with {variable} {setting}, read_token() gives {got!r}, expected "
                                  f"{'the token without spaces' if wanted else 'None'}")
    finally:
        if saved is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = saved
    return Passed(f"reads {variable} from the environment, without spaces, and None when it is not set")


def row_of(grid, images, what: str = "the grid") -> Passed:
    """`grid` is `images` pasted side by side in one row, in order, with nothing between them."""
    parts = [_pixels(image) for image in images]
    got = _pixels(grid)
    height, width = parts[0].shape[0], sum(p.shape[1] for p in parts)
    if got.shape[:2] != (height, width):
        raise CheckFailed(f"{what} is {got.shape[1]}×{got.shape[0]}; {len(parts)} images of "
                          f"{parts[0].shape[1]}×{height} side by side make {width}×{height}")
    left = 0
    for i, part in enumerate(parts):
        if not np.array_equal(got[:, left:left + part.shape[1]], part):
            raise CheckFailed(f"the {i + 1}. place of {what} (x from {left}) is not image {i}: paste image i at "
                              f"x = i × the width")
        left += part.shape[1]
    return Passed(f"{what}: {len(parts)} images in a row")


def saved_per_prompt(paths, prompts, folder, what: str = "saved") -> Passed:
    """`paths` are PNG files in `folder`, one per prompt in order, each named after its prompt:
    lower case, runs of other characters than letters and digits as one "_", none at the ends."""
    paths = [Path(p) for p in paths] if isinstance(paths, (list, tuple)) else None
    if paths is None or len(paths) != len(prompts):
        raise CheckFailed(f"{what} should be a list of {len(prompts)} paths, one per prompt")
    for text, path in zip(prompts, paths, strict=True):
        wanted = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") + ".png"
        if path.parent.resolve() != Path(folder).resolve():
            raise CheckFailed(f"{path} is not in {folder}: save every image into out_dir")
        if path.name != wanted:
            raise CheckFailed(f"the file for {text!r} is named {path.name!r}: lower case, one '_' for each run of "
                              f"other characters than a-z and 0-9, none at the ends, then .png")
        if not path.is_file():
            raise CheckFailed(f"{path.name} was not written: save each image after making it")
        with Image.open(path) as image:
            if image.format != "PNG":
                raise CheckFailed(f"{path.name} holds a {image.format} image; save it as PNG")
    return Passed(f"{len(paths)} PNG files, each named after its prompt")


def gradio_endpoint(client, api_name: str, inputs: list[str]) -> Passed:
    """The Gradio app behind `client` (a `gradio_client.Client`) has the endpoint `api_name`, taking
    one value per name in `inputs` and answering with an image."""
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    if api_name not in endpoints:
        raise CheckFailed(f"the app has no endpoint {api_name!r} (it has {', '.join(endpoints) or 'none'}): give the "
                          f"event api_name={api_name.lstrip('/')!r}")
    parameters, returns = endpoints[api_name]["parameters"], endpoints[api_name]["returns"]
    if len(parameters) != len(inputs):
        raise CheckFailed(f"{api_name} takes {len(parameters)} value(s), expected {len(inputs)} "
                          f"({', '.join(inputs)}): list one input component for each, in that order")
    if len(returns) != 1 or returns[0].get("component") != "Image":
        got = [r.get("component") for r in returns]
        raise CheckFailed(f"{api_name} answers with {got}, expected one Image: make the image component the output")
    return Passed(f"{api_name}({', '.join(inputs)}) → image")


def ratings_stored(store, image_ids, images, rater, user: str) -> Passed:
    """Every image of `image_ids` has exactly one rating by `user` in `store`, the one `rater` gives it."""
    mine = {}
    for item in store.feedback():
        if item.user == user:
            mine.setdefault(item.image_id, []).append(item.rating)
    for image_id, image in zip(image_ids, images, strict=True):
        given = mine.get(image_id, [])
        if not given:
            raise CheckFailed(f"image {image_id} has no rating by {user!r}: rate every image, with user={user!r}")
        if len(given) > 1:
            raise CheckFailed(f"image {image_id} has {len(given)} ratings by {user!r}: rate each image once (did the "
                              f"cell run twice? run the notebook again from the start)")
        if given[0] != rater(image)[0]:
            raise CheckFailed(f"image {image_id} is stored with rating {given[0]}, but the rater gives it "
                              f"{rater(image)[0]}: store the rater's rating of that image")
    return Passed(f"{len(image_ids)} ratings by {user!r}, one per image")


def mean_rating_per_prompt(store, rows) -> Passed:
    """`rows` are (prompt, mean rating, number of ratings) for each rated prompt, best mean first,
    equal means in alphabetical order of the prompt."""
    feedback = store.feedback()
    prompt_of = {image_id: store.get(image_id).params.prompt for image_id in {item.image_id for item in feedback}}
    totals: dict[str, list[int]] = {}
    for item in feedback:
        totals.setdefault(prompt_of[item.image_id], []).append(item.rating)
    wanted = sorted(((p, sum(r) / len(r), len(r)) for p, r in totals.items()), key=lambda row: (-row[1], row[0]))
    rows = [tuple(row) for row in rows]
    if any(len(row) != 3 for row in rows):
        raise CheckFailed("each row should have three columns: the prompt, its mean rating, its number of ratings")
    if len(rows) != len(wanted):
        raise CheckFailed(f"{len(rows)} rows for {len(wanted)} rated prompts: one row per prompt (GROUP BY), and only "
                          f"prompts with a rating (an inner JOIN)")
    for got, want in zip(rows, wanted, strict=True):
        if got[0] != want[0]:
            raise CheckFailed(f"the rows are not in the asked order: {got[0]!r} comes where {want[0]!r} should; order "
                              f"by the mean, highest first, then by prompt")
        if not (math.isclose(got[1], want[1]) and got[2] == want[2]):
            raise CheckFailed(f"for {want[0]!r}: mean {got[1]}, {got[2]} ratings; the feedback rows give "
                              f"{want[1]:.3f} from {want[2]}")
    return Passed(f"{len(rows)} prompts, best first: {rows[0][0]!r} ({rows[0][1]:.2f})" if rows else "no ratings yet")


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
