"""restore_faces(): the whole chain on one picture.

1. check inputs, 2. detect faces (5 landmarks each), 3. align each face to the FFHQ 512
template, 4. restore all the crops in one batch, 5. paste each back with the inverse
transform under a feathered mask, on the picture made `upscale` times bigger.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..errors import SdlabWarning, check
from .alignment import FACE_SIZE, align_face, paste_face
from .detection import Face, detect_faces
from .images import as_pil, check_size, check_upscale, check_weight, resize_pixels, rgb_pixels, with_alpha
from .restorers import RESTORERS, load_restorer


class NoFaceFoundWarning(SdlabWarning):
    """restore_faces found no face, so the picture comes back unchanged (only resized by upscale)."""


@dataclass
class FaceRestoration:
    """A repaired picture and how it was made.

    faces: the detections, in the *input* picture's coordinates (multiply by `upscale` for `image`).
    regions: for each face, the (left, top, right, bottom) box of `image` its paste could change;
        every pixel outside these boxes is the (resized) input's.
    aligned / restored: each face's 512×512 crop before and after restoration.
    seconds: time of each step ("detect", "align", "restore", "paste", "total").
    """

    image: Image.Image
    faces: list[Face]
    regions: list[tuple[int, int, int, int] | None]
    aligned: list[Image.Image]
    restored: list[Image.Image]
    restorer: str
    upscale: float
    weight: float
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        if not self.faces:
            return "no face found: the picture is unchanged"
        return (f"{len(self.faces)} face(s) restored with {self.restorer} in {self.seconds['total']:.2f} s "
                f"(upscale {self.upscale:g}, weight {self.weight:g})")

    def _repr_png_(self):  # shows as the picture in Jupyter
        return self.image._repr_png_()


def restore_faces(image, restorer="GFPGANv1.4", *, upscale: float = 1, weight: float = 1.0,
                  min_score: float = 0.9, max_faces: int | None = None, weights_dir: str | os.PathLike | None = None,
                  device: str = "auto", backend: str = "sdlab") -> FaceRestoration:
    """Detect, align, restore and paste back every face in `image`.

    image: a PIL image (RGB, grey, RGBA… — transparency is kept) or a uint8 array.
    restorer: what `load_restorer` returns (load once, reuse it), or a name/path for it:
        "GFPGANv1.4", "GFPGANv1.3", "RestoreFormer", "classical", a .pth file.
    upscale: 1–4, how many times bigger the result is (the background is resized with Lanczos).
    weight: 0–1, how much of the restored face replaces the original (0 = none, 1 = all).
    min_score/max_faces: which detections count (see `detect_faces`).
    With no face found, a NoFaceFoundWarning says so and the picture is returned unchanged.
    """
    # 1. Check inputs before any work
    start = time.perf_counter()
    original = as_pil(image)
    upscale, weight = check_upscale(upscale), check_weight(weight)
    check_size(original, upscale)
    pixels = rgb_pixels(original)
    if isinstance(restorer, (str, os.PathLike)):
        restorer = load_restorer(restorer, weights_dir=weights_dir, device=device, backend=backend)
    check(callable(restorer) or hasattr(restorer, "repair"),
          f"restorer must be a name ({', '.join(RESTORERS)}), a .pth path or what load_restorer returns, "
          f"got {type(restorer).__name__}")
    name = getattr(restorer, "name", getattr(restorer, "__name__", type(restorer).__name__))
    if hasattr(restorer, "repair"):  # the gfpgan package does the whole chain itself
        return _repair_with_package(restorer, original, pixels, upscale, weight, start)
    seconds = {}

    # 2. Detect faces and their landmarks
    tick = time.perf_counter()
    faces = detect_faces(pixels, min_score=min_score, max_faces=max_faces)
    seconds["detect"] = time.perf_counter() - tick
    if not faces:
        warnings.warn("no face found in the picture (try a lower min_score, or a bigger picture); "
                      "it is returned unchanged", NoFaceFoundWarning, stacklevel=2)

    # 3. Align each face to the FFHQ template
    tick = time.perf_counter()
    aligned, matrices = [], []
    for face in faces:
        crop, matrix = align_face(pixels, face.landmarks)
        aligned.append(crop)
        matrices.append(matrix)
    seconds["align"] = time.perf_counter() - tick

    # 4. Restore all the crops in one batch
    tick = time.perf_counter()
    restored = restorer(aligned) if aligned else []
    seconds["restore"] = time.perf_counter() - tick
    _check_restored(restored, len(aligned), name)

    # 5. Paste back, on the picture made `upscale` times bigger
    tick = time.perf_counter()
    canvas = resize_pixels(pixels, upscale)
    regions = [paste_face(canvas, face, matrix, upscale, weight)
               for face, matrix in zip(restored, matrices, strict=True)]
    seconds["paste"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - start
    return FaceRestoration(with_alpha(Image.fromarray(canvas), original), faces, regions,
                           [Image.fromarray(a) for a in aligned], [Image.fromarray(r) for r in restored],
                           name, upscale, weight, seconds)


def _check_restored(restored, count: int, name: str) -> None:
    """A restorer must give back one 512×512 RGB uint8 crop per face."""
    shapes = {getattr(crop, "shape", None) for crop in restored}
    check(len(restored) == count and shapes <= {(FACE_SIZE, FACE_SIZE, 3)}
          and all(getattr(crop, "dtype", None) == np.uint8 for crop in restored),
          f"restorer {name} returned {len(restored)} crop(s) of shape(s) {sorted(map(str, shapes))} for {count} "
          f"face(s); it must return one {FACE_SIZE}×{FACE_SIZE}×3 uint8 array per aligned crop")


def _repair_with_package(restorer, original, pixels, upscale, weight, start) -> FaceRestoration:
    output, faces, regions, aligned, restored = restorer.repair(pixels, upscale, weight)
    if not faces:
        warnings.warn("GFPGANer found no face in the picture; it is returned unchanged (only resized)",
                      NoFaceFoundWarning, stacklevel=3)
    return FaceRestoration(with_alpha(Image.fromarray(output), original), faces, regions,
                           [Image.fromarray(a) for a in aligned], [Image.fromarray(r) for r in restored],
                           restorer.name, upscale, weight, {"total": time.perf_counter() - start})
