"""The released weights files of the face restorers: where each comes from, where it is kept on
this machine, and how to get it (`download_weights`, ~350 MB each, e.g. in Colab)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

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


def missing_weights(name: str, path: Path) -> SdlabInputError:
    info = WEIGHTS[name]
    return SdlabInputError(
        f"the {name} weights ({info.architecture} architecture, {info.megabytes} MB) are not at {path}. "
        f"Run sdlab.faces.download_weights({name!r}) where there is internet (e.g. Colab), or download "
        f"{info.url} and put it there (or pass weights_dir=, or set SDLAB_WEIGHTS to its folder). "
        f"Offline, load_restorer('classical') runs the same chain without a network.")
