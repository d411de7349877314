"""The classical face restorer against a plain resize, on the faces its settings were chosen on.

    python benchmarks/bench_face_restorer.py

Each face (Grace Hopper from matplotlib's sample data, Groot from gradio's media, scikit-image's
cameraman) is made small (128, 192 or 256 px for its 512), noised or not (σ 0 or 6) and saved as a
rough JPEG (quality 25 or 40); the first face found is aligned, restored and pasted back at
weight 0.5 and 1, and PSNR and SSIM on the face box are compared with the plain Lanczos resize.
Notebook 06 measures the same on a face never used here (the astronaut). A row per case, then
the count of cases the restorer wins and its mean gain.
"""
import io
import itertools
from pathlib import Path

import gradio
import matplotlib
import numpy as np
from PIL import Image
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from sdlab import faces
from sdlab.faces.alignment import paste_face
from sdlab.faces.classical import ClassicalRestorer
from sdlab.faces.images import resize_pixels

WEIGHTS = (0.5, 1.0)


def hopper() -> np.ndarray:
    path = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    return np.asarray(Image.open(path).convert("RGB"))[:512]


def groot() -> np.ndarray:
    path = Path(gradio.__file__).parent / "media_assets" / "images" / "groot.jpeg"
    return np.asarray(Image.open(path).convert("RGB"))[:, 199:711]


def camera() -> np.ndarray:
    return np.stack([data.camera()] * 3, -1)


def degrade(original: np.ndarray, small: int, sigma: float, quality: int, seed: int = 0) -> Image.Image:
    h, w = original.shape[:2]
    size = (round(w * small / 512), round(h * small / 512))
    noise = np.random.default_rng(seed).normal(0, sigma, (size[1], size[0], 3))
    noisy = np.clip(np.asarray(Image.fromarray(original).resize(size, Image.BICUBIC), float) + noise, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(noisy.astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def closeness(original: np.ndarray, picture: np.ndarray, box) -> tuple[float, float]:
    left, top, right, bottom = box
    if picture.shape != original.shape:
        picture = np.asarray(Image.fromarray(picture).resize(original.shape[1::-1], Image.LANCZOS))
    o, p = original[top:bottom, left:right], picture[top:bottom, left:right]
    return peak_signal_noise_ratio(o, p), structural_similarity(o, p, channel_axis=2)


def main() -> None:
    restorer, gains = ClassicalRestorer(), {w: [] for w in WEIGHTS}
    print(f"{'case':28} {'resize PSNR/SSIM':>18} " + " ".join(f"{'gain at ' + format(w, 'g'):>18}" for w in WEIGHTS))
    for (name, make), small, quality, sigma in itertools.product(
            {"hopper": hopper, "groot": groot, "cameraman": camera}.items(), (128, 192, 256), (25, 40), (0, 6)):
        original = make()
        h, w = original.shape[:2]
        degraded = degrade(original, small, sigma, quality)
        found = faces.detect_faces(np.asarray(degraded))
        if not found:
            continue  # too small to detect: nothing to restore
        up = 512 / small
        box = tuple(int(np.clip(round(v * up), 0, lim)) for v, lim in zip(found[0].box, (w, h, w, h), strict=True))
        crop, matrix = faces.align_face(np.asarray(degraded), found[0].landmarks)
        (restored,) = restorer([crop])
        base = closeness(original, np.asarray(degraded.resize((w, h), Image.LANCZOS)), box)
        row = []
        for weight in WEIGHTS:
            canvas = resize_pixels(np.asarray(degraded), up)
            paste_face(canvas, restored, matrix, up, weight)
            psnr, ssim = closeness(original, canvas, box)
            gains[weight].append((psnr - base[0], ssim - base[1]))
            row.append(f"{psnr - base[0]:+7.3f} dB {ssim - base[1]:+.4f}")
        case = f"{name}/{small}/q{quality}/σ{sigma}"
        print(f"{case:28} {base[0]:8.2f} dB {base[1]:.3f}  " + "  ".join(row), flush=True)
    for weight, rows in gains.items():
        wins = sum(p > 0 and s > 0 for p, s in rows)
        print(f"weight {weight:g}: closer than the resize in PSNR and SSIM in {wins} of {len(rows)} cases; mean gain "
              f"{np.mean([p for p, _ in rows]):+.3f} dB, SSIM {np.mean([s for _, s in rows]):+.4f}")


if __name__ == "__main__":
    main()
