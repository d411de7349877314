"""The original way: the `gfpgan` package's GFPGANer detects, aligns, restores and pastes.

Three things make it usable here:
1. basicsr (which gfpgan imports) still imports `torchvision.transforms.functional_tensor`,
   a module torchvision renamed to `_functional_tensor` in 0.17; an alias is put in
   `sys.modules` before the import.
2. GFPGANer loads its face detector and face parser from `gfpgan/weights/` under the *current
   working directory*, downloading them there if they are missing; here every file is read
   from the weights folder you pass, and a missing file is an error, never a surprise download.
3. GFPGANer catches a failed forward pass, prints "Failed inference for GFPGAN" and pastes back the
   unrestored face; here that failure is raised as `FaceRestorationError`.

Install (basicsr builds from source; --no-build-isolation builds it against the torch you have
instead of downloading a second one):
    pip install --no-build-isolation basicsr gfpgan facexlib
"""
from __future__ import annotations

import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..errors import check
from .alignment import paste_matrix, paste_region
from .detection import Face
from .weights import WEIGHTS, missing_weights

INSTALL = "pip install --no-build-isolation basicsr gfpgan facexlib"
HELPER_WEIGHTS = ("facexlib-detection", "facexlib-parsing")
ARCHS = {"GFPGAN": "clean", "RestoreFormer": "RestoreFormer"}


class FaceRestorationError(Exception):
    """The restoration network failed on a face (not a RuntimeError, so GFPGANer cannot swallow it)."""


def import_gfpgan():
    """The GFPGANer class, importable on current torchvision (see the module's docstring)."""
    try:
        # heavy: torchvision loads only for the gfpgan backend (the shim its basicsr needs)
        import torchvision.transforms._functional_tensor as functional_tensor
    except ImportError:  # an old torchvision that still has the public module
        functional_tensor = None
    if functional_tensor is not None:
        sys.modules.setdefault("torchvision.transforms.functional_tensor", functional_tensor)
    try:
        from gfpgan import GFPGANer  # optional dependency (the gfpgan package)
    except ImportError as error:
        raise ImportError(f"backend='gfpgan' needs the gfpgan package ({error}); install it with: {INSTALL}  "
                          f"(or use backend='sdlab', which needs only spandrel)") from error
    return GFPGANer


class _RaiseOnFailure(torch.nn.Module):
    """Wraps GFPGANer's network so that its errors escape GFPGANer's `except RuntimeError`."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, *args, **kwargs):
        try:
            return self.net(*args, **kwargs)
        except RuntimeError as error:
            raise FaceRestorationError(f"GFPGAN failed on a face: {error}") from error


@contextmanager
def _gfpgan_weights_folder(folder: Path):
    """Run with a working directory whose `gfpgan/weights` is `folder` (where GFPGANer looks).

    The working directory is the whole process's: load GFPGANer before starting threads.
    """
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "gfpgan").mkdir()
        os.symlink(folder.resolve(), Path(tmp) / "gfpgan" / "weights", target_is_directory=True)
        before = os.getcwd()
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(before)


class GFPGANPackageRestorer:
    """GFPGANer with its weights read from one folder; `repair` runs its whole chain on a picture."""

    def __init__(self, model_path: Path, architecture: str | None, *, weights_dir: Path, device: torch.device):
        GFPGANer = import_gfpgan()
        for name in HELPER_WEIGHTS:
            if not (weights_dir / WEIGHTS[name].filename).is_file():
                raise missing_weights(name, weights_dir / WEIGHTS[name].filename)
        arch = ARCHS.get(architecture or "GFPGAN")
        check(arch is not None, f"backend='gfpgan' runs GFPGAN or RestoreFormer weights, not {architecture}")
        with _gfpgan_weights_folder(weights_dir), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # facexlib's old torchvision call (pretrained=False)
            self.gfpganer = GFPGANer(model_path=str(Path(model_path).resolve()), upscale=1, arch=arch,
                                     channel_multiplier=2, device=device)
        self.gfpganer.gfpgan = _RaiseOnFailure(self.gfpganer.gfpgan)
        self.name = f"{Path(model_path).stem} (gfpgan package)"
        self.architecture = architecture or "GFPGAN"
        self.device = device

    def __repr__(self) -> str:
        return f"GFPGANPackageRestorer({self.name!r}, device={self.device})"

    def repair(self, pixels: np.ndarray, upscale: float, weight: float):
        """(picture, faces, regions, aligned crops, restored crops) for (H, W, 3) RGB pixels, as GFPGANer
        makes them; see `FaceRestoration` for what each is.

        weight mixes GFPGANer's result with the plainly resized picture (GFPGANer itself ignores its
        `weight` for GFPGAN v1.3/v1.4).
        """
        import cv2  # optional dependency (the faces extra: opencv)

        helper = self.gfpganer.face_helper
        self.gfpganer.upscale = upscale
        helper.set_upscale_factor(upscale)
        bgr = np.ascontiguousarray(pixels[:, :, ::-1])
        crops, restored, output = self.gfpganer.enhance(bgr, has_aligned=False, paste_back=True)
        faces = [Face(box=tuple(float(v) for v in det[:4]), score=float(det[4]),
                      landmarks=np.asarray(marks, np.float32))
                 for det, marks in zip(helper.det_faces, helper.all_landmarks_5, strict=True)]
        plain = cv2.resize(bgr, output.shape[1::-1], interpolation=cv2.INTER_LANCZOS4)
        mixed = cv2.addWeighted(output, weight, plain, 1 - weight, 0) if weight < 1 else output
        regions = [paste_region(paste_matrix(matrix, upscale), output.shape[1], output.shape[0])
                   for matrix in helper.affine_matrices]
        to_rgb = lambda a: np.ascontiguousarray(a[:, :, ::-1])  # noqa: E731
        return to_rgb(mixed), faces, regions, [to_rgb(c) for c in crops], [to_rgb(r) for r in restored]
