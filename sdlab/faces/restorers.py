"""Face restorers: each turns a list of aligned 512×512 RGB crops into restored crops.

* `SpandrelRestorer` — GFPGAN v1.4 / v1.3 or RestoreFormer, loaded from their released state
  dicts by spandrel (no basicsr needed); all faces of a picture go through in one batch.
* `ClassicalRestorer` (in `classical`) — no network: it denoises and sharpens at the photo's own
  pixel size. It is not GFPGAN: it lets the whole chain run offline when the real weights are not
  on this machine, and comes a little closer to the original than a plain resize, inventing nothing.

Weights are files you download once (`sdlab.faces.weights`, ~350 MB each, e.g. in Colab).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..device import pick_device
from ..errors import SdlabInputError, check
from .classical import ClassicalRestorer
from .gfpgan_package import GFPGANPackageRestorer
from .weights import WEIGHTS, missing_weights, weights_path

RESTORERS = ["GFPGANv1.4", "GFPGANv1.3", "RestoreFormer", "classical"]


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
            raise missing_weights(name, path)
        return name, path, WEIGHTS[name].architecture
    path = Path(restorer).expanduser()
    check(path.suffix in (".pth", ".pt", ".safetensors") or path.is_file(),
          f"restorer {str(restorer)!r} is neither one of {RESTORERS} nor a weights file (.pth)")
    check(path.is_file(), f"restorer weights file {str(path)!r} does not exist; "
                          f"known names: {RESTORERS} (sdlab.faces.download_weights fetches them)")
    return path.stem, path, None


def _load_spandrel(path: Path, expected: str | None):
    from spandrel import ModelLoader, UnsupportedModelError  # optional dependency (the faces extra: spandrel)

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
