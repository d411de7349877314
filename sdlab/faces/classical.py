"""The classical face restorer: no network and no weights, only denoising and sharpening.

An aligned crop is the photo's face blown up to 512×512 (about 8× for a face 40 pixels wide), so
the photo's defects are blown up with it: JPEG's 8×8 blocks, its colour bleeding (JPEG keeps colour
at half resolution), noise. `ClassicalRestorer` works on them at the photo's own pixel size:

1. **scale**: shrink the crop until its pixel-to-pixel noise (`pixel_noise`) reaches one grey
   level; a blown-up crop is smooth from pixel to pixel, so that is roughly (a little under) the
   photo's own pixel (`photo_scale`);
2. **brightness**: flatten the JPEG blocks and the noise of the brightness at that size with
   `dct_denoise` (the small DCT coefficients of every 8×8 window set to zero);
3. **colour**: rebuild each channel's colour (the channel minus the brightness) with a
   `guided_filter` led by the cleaned brightness, so colour stops where the brightness has an edge;
4. **paste the change**: add the change (cleaned minus shrunk), blown up again, to the crop;
5. **sharpen**: an unsharp mask one photo pixel wide gives back the contrast the resampling of
   align and paste takes.

On degraded faces it comes measurably closer to the original than a plain resize does (notebook
06 measures PSNR and SSIM), but by little, and it invents no detail: what the JPEG threw away stays
lost. A face model such as GFPGAN redraws it. Its settings were chosen on faces the course never
measures it with (Grace Hopper from matplotlib, Groot from gradio, scikit-image's cameraman),
degraded to 128–256 pixels, JPEG quality 25 and 40, with and without noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..errors import check

BLOCK = 8  # JPEG's block side, in pixels of the photo
SCALES = 2 ** np.arange(0, 4.01, 0.25)  # shrink factors tried: 1× to 16×
BRIGHTNESS = np.array([0.299, 0.587, 0.114], np.float32)  # JPEG's Y, from R, G, B


@dataclass
class ClassicalRestorer:
    """Not a face model: denoise (8×8 DCT thresholding, colour guided by brightness) + sharpen.

    Call it on a list of aligned RGB uint8 crops; it returns one restored crop for each.
    threshold: DCT coefficients of the brightness smaller than this (grey levels) are noise.
    colour_radius, colour_eps: the guided filter's window radius (photo pixels) and how much
        brightness contrast (grey levels squared) counts as an edge for the colour.
    sharpen: the unsharp mask's amount (0 = none), over one photo pixel.
    """

    threshold: float = 5.0
    colour_radius: int = 3
    colour_eps: float = 25.0
    sharpen: float = 0.5
    name: ClassVar[str] = "classical (denoise + sharpen, not GFPGAN)"
    architecture: ClassVar[str] = "classical"

    def __call__(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        return [self.restore(crop) for crop in crops]

    def restore(self, crop: np.ndarray) -> np.ndarray:
        """One crop, restored."""
        import cv2  # optional dependency (the faces extra: opencv)

        check(isinstance(crop, np.ndarray) and crop.dtype == np.uint8 and crop.ndim == 3 and crop.shape[2] == 3,
              f"the classical restorer takes RGB uint8 crops of shape (height, width, 3), got "
              f"{getattr(crop, 'dtype', type(crop).__name__)} {getattr(crop, 'shape', '')}")
        height, width = crop.shape[:2]
        # 1. Scale: the photo's own pixel size in the crop
        scale = photo_scale(crop)
        size = (max(BLOCK, round(width / scale)), max(BLOCK, round(height / scale)))
        small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA).astype(np.float32)
        # 2. Brightness: JPEG blocks and noise flattened
        brightness = small @ BRIGHTNESS
        clean = dct_denoise(brightness, self.threshold)
        # 3. Colour (each channel minus the brightness), led by the cleaned brightness
        colour = small - brightness[..., None]
        colour = np.stack([guided_filter(clean, colour[..., c], self.colour_radius, self.colour_eps)
                           for c in range(3)], axis=-1)
        cleaned = clean[..., None] + colour
        # 4. The change, blown up again, on the crop: what was not changed stays as it was
        restored = crop + cv2.resize(cleaned - small, (width, height), interpolation=cv2.INTER_CUBIC)
        # 5. Sharpen over one photo pixel
        restored += self.sharpen * (restored - cv2.GaussianBlur(restored, (0, 0), scale))
        return np.clip(np.rint(restored), 0, 255).astype(np.uint8)


def pixel_noise(pixels: np.ndarray) -> float:
    """How much a picture varies from pixel to pixel, in grey levels (Immerkær, 1996).

    A filter that cancels flat areas and straight slopes leaves the noise; its mean absolute
    value, scaled, is the standard deviation of Gaussian noise.
    """
    import cv2  # optional dependency (the faces extra: opencv)

    grey = pixels @ BRIGHTNESS if pixels.ndim == 3 else pixels
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    response = cv2.filter2D(np.asarray(grey, np.float32), -1, kernel)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(response).mean() / 6)


def photo_scale(crop: np.ndarray, level: float = 1.0, margin: int = 96) -> float:
    """How many crop pixels one pixel of the photo became: the largest shrink of the crop's middle
    (where the face is, not the grey fill beyond the photo's edge) whose pixel noise stays under
    `level` grey levels."""
    import cv2  # optional dependency (the faces extra: opencv)

    middle = crop[margin:-margin, margin:-margin] if min(crop.shape[:2]) > 4 * margin else crop
    height, width = middle.shape[:2]
    scale = 1.0
    for factor in SCALES:
        size = (max(BLOCK, round(width / factor)), max(BLOCK, round(height / factor)))
        if pixel_noise(cv2.resize(middle, size, interpolation=cv2.INTER_AREA).astype(np.float32)) >= level:
            break
        scale = float(factor)
    return scale


def dct_basis(side: int = BLOCK) -> np.ndarray:
    """The orthonormal 2-D DCT of side×side blocks as a (side², side²) matrix, for flattened blocks."""
    k = np.arange(side)
    one = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * side)) * np.sqrt(2 / side)
    one[0] /= np.sqrt(2)
    return np.kron(one, one).astype(np.float32)


def dct_denoise(channel: np.ndarray, threshold: float, side: int = BLOCK) -> np.ndarray:
    """Cut the DCT coefficients under `threshold` (except the mean) in every side×side block, with
    the block grid at each of its side² offsets, and average: no block edge survives the average."""
    basis = dct_basis(side)
    padded = np.pad(np.asarray(channel, np.float32), side, mode="reflect")
    total = np.zeros_like(padded)
    for dy in range(side):
        for dx in range(side):
            rows, cols = (padded.shape[0] - dy) // side, (padded.shape[1] - dx) // side
            window = padded[dy:dy + rows * side, dx:dx + cols * side]
            blocks = window.reshape(rows, side, cols, side).swapaxes(1, 2).reshape(-1, side * side)
            coefficients = blocks @ basis.T
            keep = np.abs(coefficients) >= threshold
            keep[:, 0] = True  # the block's mean brightness always stays
            back = (coefficients * keep) @ basis
            total[dy:dy + rows * side, dx:dx + cols * side] += (
                back.reshape(rows, cols, side, side).swapaxes(1, 2).reshape(rows * side, cols * side))
    return total[side:-side, side:-side] / side ** 2  # the padding keeps every pixel in all side² grids


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """`source` smoothed in (2·radius+1)² windows, except across the edges of `guide` (He et al., 2010):
    in each window the output is a·guide + b, fitted to the source; eps says how much guide contrast
    is an edge."""
    import cv2  # optional dependency (the faces extra: opencv)

    def mean(a):
        return cv2.boxFilter(a, -1, (2 * radius + 1, 2 * radius + 1))

    mean_guide, mean_source = mean(guide), mean(source)
    a = (mean(guide * source) - mean_guide * mean_source) / (mean(guide * guide) - mean_guide ** 2 + eps)
    b = mean_source - a * mean_guide
    return mean(a) * guide + mean(b)
