"""Image grids: plain grids and labelled X/Y grids (row and column titles), pure PIL.

Compute functions return a PIL image; the `show_*` functions at the end display them and
are the only ones that touch the notebook.
"""
from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from .errors import check


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans (matplotlib ships it; it has ×, →, accents), else Pillow's own font, which lacks
    some of those (× came out as an empty box)."""
    spec = importlib.util.find_spec("matplotlib")  # found, not imported: importing it is slow
    if spec and spec.origin:
        path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def _check_images(images, name: str) -> list[Image.Image]:
    """PIL images (what generate() and the sweeps return gives its `.image`), at least one."""
    images = [getattr(im, "image", im) for im in images]
    check(len(images) > 0, f"{name} needs at least one image")
    odd = next((i for i, im in enumerate(images) if not isinstance(im, Image.Image)), None)
    check(odd is None, f"{name} takes images; item {odd} is a {type(images[odd or 0]).__name__}: give PIL images "
                       f"or what generate() returns")
    return images


def image_grid(images: Sequence[Image.Image], rows: int | None = None, cols: int | None = None,
               gap: int = 2, background: str = "white") -> Image.Image:
    """Paste images (all one size) into a rows × cols grid, filled row by row."""
    images = _check_images(images, "image_grid")
    for name, value in (("rows", rows), ("cols", cols)):
        check(value is None or (isinstance(value, int) and value > 0), f"{name} must be a whole number above 0 "
                                                                        f"or None (to fit the images), got {value!r}")
    width, height = images[0].size
    check(all(im.size == (width, height) for im in images),
          f"all images in a grid must have the same size; the first is {width}×{height}, got "
          f"{sorted({im.size for im in images})}")
    if rows is None and cols is None:
        cols = math.ceil(math.sqrt(len(images)))
    if cols is None:
        cols = math.ceil(len(images) / rows)
    if rows is None:
        rows = math.ceil(len(images) / cols)
    check(rows * cols >= len(images), f"a {rows}×{cols} grid holds {rows * cols} images, not {len(images)}")
    grid = Image.new("RGB", (cols * width + (cols - 1) * gap, rows * height + (rows - 1) * gap), background)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(im.convert("RGB"), (c * (width + gap), r * (height + gap)))
    return grid


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _wrap(draw, text: str, font, width: int) -> list[str]:
    """Split `text` into lines no wider than `width` pixels (words are never cut)."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and _text_size(draw, trial, font)[0] > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def labelled_grid(images: Sequence[Image.Image], row_labels: Sequence[str] = (), col_labels: Sequence[str] = (),
                  title: str | None = None, cell: int | None = None, gap: int = 4,
                  font_size: int | None = None) -> Image.Image:
    """An X/Y grid: images row by row, a title above each column and to the left of each row.

    `images` has len(row_labels) × len(col_labels) entries (one row if there are no row labels).
    `cell` scales every image to that width first (small 64 px images become readable).
    """
    images = _check_images(images, "labelled_grid")
    cols = max(1, len(col_labels)) if col_labels else len(images) // max(1, len(row_labels))
    rows = max(1, len(row_labels))
    check(rows * cols == len(images),
          f"labelled_grid got {len(images)} images for {rows} row labels × {cols} columns; "
          f"give len(row_labels) × len(col_labels) images")
    if cell:
        images = [im.resize((cell, round(im.height * cell / im.width)), Image.NEAREST) for im in images]
    width, height = images[0].size
    font_size = font_size or max(10, min(24, width // 8))
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = _text_size(probe, "Hg", font)[1] + 4
    col_lines = [_wrap(probe, label, font, width) for label in col_labels]
    top = (max(map(len, col_lines)) * line_h + gap) if col_lines else 0
    left = (max(_text_size(probe, label, font)[0] for label in row_labels) + 2 * gap) if row_labels else 0
    title_h = (len(_wrap(probe, title, font, left + cols * (width + gap))) * line_h + gap) if title else 0
    body = image_grid(images, rows, cols, gap=gap)
    canvas = Image.new("RGB", (left + body.width, title_h + top + body.height), "white")
    canvas.paste(body, (left, title_h + top))
    draw = ImageDraw.Draw(canvas)
    if title:
        for i, line in enumerate(_wrap(draw, title, font, canvas.width)):
            draw.text((gap, i * line_h), line, fill="black", font=font)
    for c, lines in enumerate(col_lines):
        for i, line in enumerate(lines):
            x = left + c * (width + gap) + (width - _text_size(draw, line, font)[0]) // 2
            draw.text((x, title_h + i * line_h), line, fill="black", font=font)
    for r, label in enumerate(row_labels):
        y = title_h + top + r * (height + gap) + (height - line_h) // 2
        draw.text((gap, y), label, fill="black", font=font)
    return canvas


def enlarge(image: Image.Image, scale: int) -> Image.Image:
    """`image` scaled up `scale` times with sharp pixels (nearest neighbour), so tiny images stay crisp."""
    if scale <= 1:
        return image
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


# ---- display (notebooks) ------------------------------------------------------------------

def display_scale(image: Image.Image, target: int = 256, widest: int = 1024) -> int:
    """How much to enlarge an image for the screen: ×4 for sdlab-tiny's 64 px, ×1 for SD's 512. A
    strip of small images is enlarged by its short side, as long as it stays `widest` pixels wide."""
    return max(1, min(target // min(image.width, image.height), widest // max(image.width, image.height)))


def show_image(image: Image.Image, scale: int | None = None) -> None:
    """Display one image in a notebook (scaled up with sharp pixels for tiny images)."""
    from IPython.display import display  # notebooks only (IPython)

    scale = display_scale(image) if scale is None else scale
    display(enlarge(image, scale))


def show_images(images: Sequence[Image.Image], rows: int | None = None, cols: int | None = None,
                scale: int | None = None) -> None:
    """Display images as one grid in a notebook (each enlarged like `show_image` would)."""
    images = _check_images(images, "show_images")
    scale = display_scale(images[0]) if scale is None else scale
    show_image(image_grid([enlarge(im, scale) for im in images], rows, cols), scale=1)
