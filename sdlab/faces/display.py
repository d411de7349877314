"""Pictures of face repair for notebooks: boxes and landmarks, crops side by side.

`draw_faces` and `side_by_side` return PIL images; the `show_*` functions display them.
"""
from __future__ import annotations

import io
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from ..grids import labelled_grid
from .detection import Face

LANDMARK_COLOURS = ("red", "yellow", "magenta", "lime", "cyan")  # eyes, nose, mouth corners


def draw_faces(image: Image.Image, faces: Sequence[Face], scale: float = 1.0) -> Image.Image:
    """A copy of `image` with each face's box, score and 5 landmarks drawn on it.

    scale: multiply the coordinates (e.g. `result.upscale` to draw on an upscaled result).
    """
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    for face in faces:
        left, top, right, bottom = (v * scale for v in face.box)
        width = max(2, round((right - left) / 40))
        draw.rectangle((left, top, right, bottom), outline="deepskyblue", width=width)
        font = ImageFont.load_default(size=max(10, round((right - left) / 6)))
        draw.text((left + width + 2, top + width), f"{face.score:.3f}", fill="white", font=font,
                  stroke_width=2, stroke_fill="black")
        for (x, y), colour in zip(face.landmarks * scale, LANDMARK_COLOURS, strict=True):
            r = width + 1
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return canvas


def side_by_side(images: Sequence[Image.Image], labels: Sequence[str], height: int = 256) -> Image.Image:
    """Images scaled to one height, in a row, each titled by its label."""
    images = [im.convert("RGB").resize((round(im.width * height / im.height), height), Image.LANCZOS)
              for im in images]
    width = max(im.width for im in images)
    cells = []
    for im in images:  # labelled_grid wants one size: centre each on a white cell
        cell = Image.new("RGB", (width, height), "white")
        cell.paste(im, ((width - im.width) // 2, 0))
        cells.append(cell)
    return labelled_grid(cells, col_labels=list(labels))


# ---- display (notebooks) ------------------------------------------------------------------

def show_faces(image: Image.Image, faces: Sequence[Face], scale: float = 1.0) -> None:
    """Display `image` with its detected faces drawn on it (PNG: sharp lines)."""
    from IPython.display import display  # notebooks only (IPython)

    display(draw_faces(image, faces, scale), include=["image/png"])


def show_photo(image: Image.Image, quality: int = 90) -> None:
    """Display a photo as JPEG: a fraction of a PNG's size in the saved notebook, no visible loss."""
    from IPython.display import Image as JupyterImage  # notebooks only (IPython)
    from IPython.display import display  # notebooks only (IPython)

    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    display(JupyterImage(data=buffer.getvalue(), format="jpeg"))


def show_side_by_side(images: Sequence[Image.Image], labels: Sequence[str], height: int = 256) -> None:
    """Display images in a titled row (e.g. before / after)."""
    show_photo(side_by_side(images, labels, height))
