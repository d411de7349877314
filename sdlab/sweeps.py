"""Sweeps: change one or two parameters, keep the rest, and see the effect as a labelled grid.

A sweep over seeds is one batched call (image k gets seed k). A sweep over another parameter
makes one call per value, each batched over the seeds of the other axis, so a seed × guidance
grid of 3 × 7 images takes 7 calls, not 21.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import check
from .generation import GeneratedImage, generate
from .grids import labelled_grid

LABELS = {"seed": "seed", "num_inference_steps": "steps", "guidance_scale": "guidance",
          "scheduler": "", "prompt": "", "negative_prompt": "negative:", "width": "width", "height": "height"}


def label(name: str, value) -> str:
    """'guidance 7.5', 'steps 20', 'DPM++ 2M' — how an axis value is written on a grid."""
    prefix = LABELS.get(name, name)
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{prefix} {text}".strip()


@dataclass
class Sweep:
    """Images of a sweep, row by row: rows follow `y`'s values, columns `x`'s."""

    x: str
    x_values: list
    y: str | None
    y_values: list
    results: list[GeneratedImage]

    @property
    def images(self):
        return [r.image for r in self.results]

    def grid(self, title: str | None = None, cell: int | None = None):
        """The labelled grid (small images are enlarged to `cell` pixels, 128 by default)."""
        width = self.results[0].image.width
        cell = cell or (128 if width < 128 else None)
        rows = [label(self.y, v) for v in self.y_values] if self.y else []
        return labelled_grid(self.images, rows, [label(self.x, v) for v in self.x_values], title=title, cell=cell)

    def seconds(self) -> list[float]:
        return [r.seconds for r in self.results]


def sweep(pipe, prompt: str, x: str, x_values, y: str | None = None, y_values=(), seed: int = 0,
          **settings) -> Sweep:
    """Generate a grid varying `x` (columns) and optionally `y` (rows); everything else fixed.

    `x`/`y` are generate()'s parameter names: "seed", "guidance_scale", "num_inference_steps",
    "scheduler", "prompt", "negative_prompt"…
    """
    x_values, y_values = list(x_values), list(y_values)
    check(len(x_values) > 0, f"sweep over {x!r} needs at least one value")
    check(y is None or len(y_values) > 0, f"sweep over {y!r} needs at least one value")
    check(x != y, f"x and y are both {x!r}; sweep two different parameters")
    rows = y_values if y else [None]
    grid: dict[tuple[int, int], GeneratedImage] = {}
    if "seed" in (x, y):  # batch along the seed axis: one call per value of the other axis
        other, other_values = (y, rows) if x == "seed" else (x, x_values)
        seeds = x_values if x == "seed" else y_values
        for j, value in enumerate(other_values):
            kwargs = settings | ({} if other is None else {other: value})
            for i, item in enumerate(_seed_batch(pipe, prompt, seeds, kwargs)):
                grid[(j, i) if x == "seed" else (i, j)] = item
    else:
        for r, row_value in enumerate(rows):
            for c, value in enumerate(x_values):
                kwargs = settings | {x: value} | ({} if y is None else {y: row_value})
                grid[(r, c)] = generate(pipe, kwargs.pop("prompt", prompt), seed=seed, **kwargs)[0]
    results = [grid[(r, c)] for r in range(len(rows)) for c in range(len(x_values))]
    return Sweep(x, x_values, y, y_values, results)


def _seed_batch(pipe, prompt, seeds, kwargs):
    """One batched call: the same prompt and settings, one image per seed."""
    text = kwargs.pop("prompt", prompt)
    return generate(pipe, [text] * len(seeds), seed=list(seeds), **kwargs)
