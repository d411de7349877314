"""Face restorers: each turns a list of aligned 512×512 RGB crops into restored crops.

* `SpandrelRestorer` — GFPGAN v1.4 / v1.3 or RestoreFormer, loaded from their released state
  dicts by spandrel (no basicsr needed); all faces of a picture go through in one batch.
* `ClassicalRestorer` — no network: OpenCV edge-preserving smoothing and an unsharp mask. It is not GFPGAN; it
  lets the whole chain run offline when the real weights are not on this machine.

Weights are files you download once (`download_weights`, ~350 MB each, e.g. in Colab).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..device import pick_device
from ..errors import SdlabInputError, check


@dataclass(frozen=True)
class Weights:
    """A released weights file: where to get it and which architecture it must hold."""

    name: str
    filename: str
    url: str
    architecture: str  # spandrel's id ("GFPGAN", "RestoreFormer"), or "facexlib" for GFPGANer's helpers
    megabytes: int


WEIGHTS = {w.name: w for w in [
    Weights("GFPGANv1.4", "GFPGANv1.4.pth",
            "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth", "GFPGAN", 349),
    Weights("GFPGANv1.3", "GFPGANv1.3.pth",
            "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.3.pth", "GFPGAN", 349),
    Weights("RestoreFormer", "RestoreFormer.pth",
            "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.4/RestoreFormer.pth", "RestoreFormer", 290),
    # what the `gfpgan` package's GFPGANer also loads: its own face detector and face parser
    Weights("facexlib-detection", "detection_Resnet50_Final.pth",
            "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
            "facexlib", 105),
    Weights("facexlib-parsing", "parsing_parsenet.pth",
            "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth", "facexlib", 81),
]}
RESTORERS = ["GFPGANv1.4", "GFPGANv1.3", "RestoreFormer", "classical"]


def weights_dir(folder: str | os.PathLike | None = None) -> Path:
    """The folder weights are read from: `folder`, else $SDLAB_WEIGHTS, else ~/.cache/sdlab/weights."""
    if folder is not None:
        return Path(folder).expanduser()
    return Path(os.environ.get("SDLAB_WEIGHTS", "~/.cache/sdlab/weights")).expanduser()


def weights_path(name: str, folder: str | os.PathLike | None = None) -> Path:
    """Where the weights called `name` (a key of WEIGHTS) are expected."""
    check(name in WEIGHTS, f"no weights called {name!r}; choose one of {list(WEIGHTS)}")
    return weights_dir(folder) / WEIGHTS[name].filename


def download_weights(name: str = "GFPGANv1.4", folder: str | os.PathLike | None = None) -> Path:
    """Download released weights (from GitHub) into `folder` once; return the file's path.

    Needs internet (Colab has it). A file already there is not downloaded again.
    """
    path = weights_path(name, folder)
    if path.is_file():
        return path
    info = WEIGHTS[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(info.url, str(path), progress=True)
    except Exception as error:  # no network, proxy, HTTP error…: say what to do by hand
        raise SdlabInputError(
            f"could not download {name} ({info.megabytes} MB) from {info.url}: {error}. Without internet, "
            f"download it on another machine and copy it to {path}") from error
    return path


def _missing_weights(name: str, path: Path) -> SdlabInputError:
    info = WEIGHTS[name]
    return SdlabInputError(
        f"the {name} weights ({info.architecture} architecture, {info.megabytes} MB) are not at {path}. "
        f"Run sdlab.faces.download_weights({name!r}) where there is internet (e.g. Colab), or download "
        f"{info.url} and put it there (or pass weights_dir=, or set SDLAB_WEIGHTS to its folder). "
        f"Offline, load_restorer('classical') runs the same chain without a network.")


class SpandrelRestorer:
    """GFPGAN or RestoreFormer loaded by spandrel; call it on a list of 512×512 RGB uint8 crops."""

    def __init__(self, descriptor, name: str, device: torch.device, batch_size: int = 8):
        self.descriptor = descriptor.to(device).eval()
        self.name = name
        self.architecture = descriptor.architecture.id
        self.device = device
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"SpandrelRestorer({self.name!r}, {self.architecture}, device={self.device})"

    def __call__(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        restored = []
        for start in range(0, len(crops), self.batch_size):  # one forward for up to batch_size faces
            batch = torch.from_numpy(np.stack(crops[start:start + self.batch_size])).to(self.device)
            batch = batch.permute(0, 3, 1, 2).contiguous().float() / 255
            with torch.inference_mode():
                out = self._forward(batch)
            out = (out.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
            restored.extend(out)
        return restored

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels in and out."""
        if self.architecture == "GFPGAN":
            # GFPGAN works on [-1, 1] pixels (spandrel's wrapper passes [0, 1] unchanged), so it is called
            # as GFPGANer calls it; the decoder's stored noise keeps the result the same on every run
            out = self.descriptor.model(batch * 2 - 1, return_rgb=False, randomize_noise=False)[0]
            return (out + 1) / 2
        return self.descriptor(batch)  # RestoreFormer: spandrel normalises for it


class ClassicalRestorer:
    """Not a face model: OpenCV edge-preserving smoothing, then an unsharp mask (sharpening).

    It flattens JPEG blocks and noise while keeping edges, then crisps them, but cannot invent
    detail as GFPGAN does; it is here so the detect → align → restore → paste chain runs offline
    with no weights.
    """

    name = "classical (OpenCV smoothing + unsharp mask, not GFPGAN)"
    architecture = "classical"

    def __init__(self, smooth: float = 0.25, sharpen: float = 0.8, radius: float = 2.0):
        self.smooth, self.sharpen, self.radius = smooth, sharpen, radius

    def __repr__(self) -> str:
        return f"ClassicalRestorer(smooth={self.smooth}, sharpen={self.sharpen}, radius={self.radius})"

    def __call__(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        import cv2

        restored = []
        for crop in crops:
            # smooth areas of similar colour (sigma_r: how similar), but not across edges
            clean = cv2.edgePreservingFilter(np.ascontiguousarray(crop), flags=cv2.RECURS_FILTER,
                                             sigma_s=40, sigma_r=self.smooth)
            blurred = cv2.GaussianBlur(clean, (0, 0), self.radius)
            restored.append(cv2.addWeighted(clean, 1 + self.sharpen, blurred, -self.sharpen, 0))
        return restored


def load_restorer(restorer: str | os.PathLike = "GFPGANv1.4", *, weights_dir: str | os.PathLike | None = None,
                  device: str = "auto", backend: str = "sdlab"):
    """A face restorer, ready to call on aligned crops (or to pass to `restore_faces`).

    restorer: "GFPGANv1.4" (best), "GFPGANv1.3", "RestoreFormer", "classical" (no network, offline),
        or the path of a GFPGAN/RestoreFormer .pth file.
    weights_dir: the folder with the weights files (default: $SDLAB_WEIGHTS or ~/.cache/sdlab/weights).
    backend: "sdlab" (spandrel, sdlab's detector and paste) or "gfpgan" (the `gfpgan` package's own
        GFPGANer does everything, as the GFPGAN demo does).
    """
    # 1. Check inputs
    check(backend in ("sdlab", "gfpgan"), f"backend must be 'sdlab' or 'gfpgan', got {backend!r}")
    check(isinstance(restorer, (str, os.PathLike)),
          f"restorer must be one of {RESTORERS} or a .pth path, got {type(restorer).__name__}")
    if restorer == "classical":
        check(backend == "sdlab", "the classical restorer runs on the sdlab backend only; use backend='sdlab'")
        return ClassicalRestorer()
    name, path, expected = _resolve_weights(restorer, weights_dir)
    choice = pick_device(device, "float32")  # GFPGAN is not made for half precision
    if backend == "gfpgan":
        from .gfpgan_package import GFPGANPackageRestorer

        return GFPGANPackageRestorer(path, expected, weights_dir=path.parent, device=choice.device)
    # 2. Load the state dict; spandrel recognises the architecture from its keys
    descriptor = _load_spandrel(path, expected)
    return SpandrelRestorer(descriptor, name, choice.device)


def _resolve_weights(restorer, folder) -> tuple[str, Path, str | None]:
    """(name, file, expected architecture or None) for a restorer name or a path."""
    if str(restorer) in WEIGHTS and WEIGHTS[str(restorer)].architecture != "facexlib":
        name = str(restorer)
        path = weights_path(name, folder)
        if not path.is_file():
            raise _missing_weights(name, path)
        return name, path, WEIGHTS[name].architecture
    path = Path(restorer).expanduser()
    check(path.suffix in (".pth", ".pt", ".safetensors") or path.is_file(),
          f"restorer {str(restorer)!r} is neither one of {RESTORERS} nor a weights file (.pth)")
    check(path.is_file(), f"restorer weights file {str(path)!r} does not exist; "
                          f"known names: {RESTORERS} (sdlab.faces.download_weights fetches them)")
    return path.stem, path, None


def _load_spandrel(path: Path, expected: str | None):
    from spandrel import ModelLoader, UnsupportedModelError

    wanted = expected or "GFPGAN or RestoreFormer"
    try:
        descriptor = ModelLoader().load_from_file(path)
    except UnsupportedModelError:
        raise SdlabInputError(f"{path} is a state dict of no architecture spandrel knows; "
                              f"a face restorer must be a {wanted} state dict") from None
    except Exception as error:  # not a torch file at all, truncated download…
        raise SdlabInputError(f"{path} could not be read as a {wanted} weights file ({type(error).__name__}: "
                              f"{str(error)[:200]}); download it again") from error
    found = descriptor.architecture.id
    allowed = [expected] if expected else ["GFPGAN", "RestoreFormer"]
    check(found in allowed, f"{path} holds a {found} model ({descriptor.purpose}), but a {wanted} face restorer "
                            f"was expected; check the file name or download it again")
    return descriptor
