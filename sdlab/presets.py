"""The model registry: short names for the models the course uses.

* `sdlab-tiny` — the small model trained for this course; ships inside sdlab, runs offline.
* `tiny-random` — Stable Diffusion's architecture at toy size with random (seeded) weights:
  builds in about a second, for tests. Its images are noise-like by design.
* `sd15-random` — SD 1.5's full architecture with random weights, built from configs: the real
  model's work per image without the download, for benchmarks.
* `sd15`, `sd-turbo` — the real models, downloaded from the Hugging Face Hub (Colab, GPU).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class Preset:
    """A named model and the settings it works best with."""

    name: str
    source: str  # a hub id, a folder, or "builder:" for models built in code
    description: str
    size: int  # default height and width in pixels
    num_inference_steps: int
    guidance_scale: float
    scheduler: str | None = None  # None: keep the model's own
    safety_checker: bool = False
    offline: bool = True


PRESETS = {
    # guidance 5: where sdlab-tiny follows prompts best (its model card has the curve)
    "sdlab-tiny": Preset("sdlab-tiny", "local:sdlab-tiny",
                         "the course's small offline model: shapes and colours, 64×64",
                         size=64, num_inference_steps=20, guidance_scale=5.0),
    "tiny-random": Preset("tiny-random", "builder:tiny-random",
                          "random-weight toy pipeline for tests (noise-like images)",
                          size=64, num_inference_steps=2, guidance_scale=7.5),
    "sd15-random": Preset("sd15-random", "builder:sd15-random", "SD 1.5's architecture, random weights: for "
                          "benchmarks (noise images)", size=512, num_inference_steps=50, guidance_scale=7.5,
                          scheduler="PNDM"),
    "sd15": Preset("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "Stable Diffusion 1.5 (GPU; ~4 GB download)",
                   size=512, num_inference_steps=50, guidance_scale=7.5, scheduler="PNDM",
                   safety_checker=True, offline=False),
    "sd-turbo": Preset("sd-turbo", "stabilityai/sd-turbo", "SD-Turbo: one-step distilled model (GPU; ~5 GB download)",
                       size=512, num_inference_steps=1, guidance_scale=0.0, scheduler="Euler a", offline=False),
}

DEFAULT_MODEL = "sdlab-tiny"


def preset_names() -> list[str]:
    return list(PRESETS)


def default_model() -> str:
    """The model notebooks use when none is given: `$SDLAB_MODEL`, else `sdlab-tiny`
    (or `tiny-random` in a checkout where the tiny model has not been trained yet)."""
    if os.environ.get("SDLAB_MODEL"):
        return os.environ["SDLAB_MODEL"]
    return DEFAULT_MODEL if tiny_model_dir() is not None else "tiny-random"


def tiny_model_dir() -> Path | None:
    """The folder of the shipped sdlab-tiny model, from a checkout or an installed package."""
    candidates = [Path(__file__).resolve().parent.parent / "models" / "sdlab-tiny"]
    try:
        candidates.append(Path(str(resources.files("sdlab.models") / "sdlab-tiny")))
    except (ModuleNotFoundError, TypeError):
        pass
    for folder in candidates:
        if (folder / "model_index.json").is_file():
            return folder
    return None


def find_preset(name: str) -> Preset | None:
    """The preset called `name`, or the preset whose hub id is `name`, else None."""
    if name in PRESETS:
        return PRESETS[name]
    return next((p for p in PRESETS.values() if p.source == name), None)
