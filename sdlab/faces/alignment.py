"""Align a face to the FFHQ template and paste it back: the geometry of face repair.

GFPGAN was trained on FFHQ faces, where the eyes, nose and mouth corners always sit at the
same 5 points of a 512×512 square. A similarity transform (rotation, uniform scale, shift —
no shearing) moves a detected face's 5 landmarks as close as possible to those points; its
inverse puts the restored face back, under a feathered mask so no seam shows.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

FACE_SIZE = 512
# The 5 landmarks of an FFHQ face at 512×512 (as in facexlib/GFPGAN), in LANDMARK_NAMES order.
FFHQ_TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                          [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float32)
BORDER_GREY = (135, 133, 132)  # what fills the crop beyond the picture's edge (GFPGAN's choice)
FEATHER_MARGIN, FEATHER_BLUR = 64, 101  # mask: zero in a 64 px border of the crop, blurred over ~100 px


def alignment_matrix(landmarks: np.ndarray) -> np.ndarray:
    """The 2×3 similarity transform taking the 5 landmarks onto FFHQ_TEMPLATE."""
    import cv2  # optional dependency (the faces extra: opencv)

    matrix, _ = cv2.estimateAffinePartial2D(np.asarray(landmarks, np.float32), FFHQ_TEMPLATE, method=cv2.LMEDS)
    return matrix


def align_face(pixels: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 512×512 aligned crop of one face, and the matrix that made it."""
    import cv2  # optional dependency (the faces extra: opencv)

    matrix = alignment_matrix(landmarks)
    crop = cv2.warpAffine(pixels, matrix, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_GREY)
    return crop, matrix


@lru_cache(maxsize=1)
def feather_mask() -> np.ndarray:
    """A 512×512 float mask: 1 in the middle of the crop, fading to exactly 0 well inside its edge."""
    import cv2  # optional dependency (the faces extra: opencv)

    mask = np.zeros((FACE_SIZE, FACE_SIZE), np.float32)
    mask[FEATHER_MARGIN:-FEATHER_MARGIN, FEATHER_MARGIN:-FEATHER_MARGIN] = 1
    return cv2.GaussianBlur(mask, (FEATHER_BLUR, FEATHER_BLUR), 0)


def paste_matrix(matrix: np.ndarray, upscale: float) -> np.ndarray:
    """The inverse of `matrix`, from crop pixels to pixels of the picture made `upscale` times bigger."""
    import cv2  # optional dependency (the faces extra: opencv)

    inverse = cv2.invertAffineTransform(matrix) * upscale
    inverse[:, 2] += 0.5 * (upscale - 1)  # pixel centres: x_big = upscale * (x + 0.5) - 0.5
    return inverse


def paste_region(inverse: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the output pixels a pasted crop can touch, or None if none."""
    corners = np.array([[0, 0], [FACE_SIZE, 0], [0, FACE_SIZE], [FACE_SIZE, FACE_SIZE]], np.float32)
    points = corners @ inverse[:, :2].T + inverse[:, 2]
    left, top = np.floor(points.min(axis=0)).astype(int)
    right, bottom = np.ceil(points.max(axis=0)).astype(int) + 1
    left, top, right, bottom = max(int(left), 0), max(int(top), 0), min(int(right), width), min(int(bottom), height)
    return (left, top, right, bottom) if right > left and bottom > top else None


def paste_face(canvas: np.ndarray, face: np.ndarray, matrix: np.ndarray, upscale: float,
               weight: float) -> tuple[int, int, int, int] | None:
    """Blend a restored 512×512 face into `canvas` (changed in place) where `matrix` took it from.

    canvas is the picture already made `upscale` times bigger. Inside the feathered mask a pixel
    becomes (1 - weight) · original + weight · restored; outside the returned region nothing is
    touched, and inside it pixels where the mask is 0 keep their exact value.
    """
    import cv2  # optional dependency (the faces extra: opencv)

    inverse = paste_matrix(matrix, upscale)
    region = paste_region(inverse, canvas.shape[1], canvas.shape[0])
    if region is None:
        return None
    left, top, right, bottom = region
    inverse[:, 2] -= (left, top)  # warp straight into the region, not the whole picture
    size = (right - left, bottom - top)
    restored = cv2.warpAffine(face.astype(np.float32), inverse, size, flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(feather_mask(), inverse, size, flags=cv2.INTER_LINEAR)[..., None] * weight
    original = canvas[top:bottom, left:right].astype(np.float32)
    blended = original + alpha * (restored - original)
    canvas[top:bottom, left:right] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return region
