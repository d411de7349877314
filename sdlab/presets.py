"""The model registry: short names for the models the course uses, and for the models a class makes.

* `sdlab-tiny` — the small model trained for this course; ships inside sdlab, runs offline.
* `tiny-random` — Stable Diffusion's architecture at toy size with random (seeded) weights:
  builds in about a second, for tests. Its images are noise-like by design.
* `sd15-random` — SD 1.5's full architecture with random weights, built from configs: the real
  model's work per image without the download, for benchmarks.
* `sd15`, `sd-turbo` — the real models, downloaded from the Hugging Face Hub (Colab, GPU).
* fine-tuned versions (`sdlab finetune`, `sdlab.finetune`), by their label: `my-dog-v2` is version 2
  of `my-dog`, and `my-dog` alone is its newest version. They are found in the models folders:
  those `$SDLAB_MODELS` lists (several joined by `os.pathsep`, as in PATH), else `./feedback/models`,
  where `sdlab serve` and `sdlab finetune` keep them.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import SdlabInputError, check


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


# ---- fine-tuned versions, by name ---------------------------------------------------------

VERSION_FILE = "sdlab_version.json"
MODELS_VARIABLE = "SDLAB_MODELS"
DEFAULT_MODELS_DIR = Path("feedback") / "models"  # beside the store `sdlab serve` keeps in ./feedback
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
LABEL = re.compile(r"(.+)-v(\d+)")


@dataclass(frozen=True)
class ModelVersion:
    """A fine-tuned model: `folder` holds its LoRA weights (and, for small models, a whole pipeline)."""

    name: str
    number: int
    folder: Path
    info: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def label(self) -> str:
        """Its name as a model: "<name>-v<number>", e.g. "my-dog-v2" (what PNGs record and servers list)."""
        return f"{self.name}-v{self.number}"


def read_version(folder: str | Path) -> ModelVersion | None:
    """The version saved in `folder`, or None where it holds none; a damaged record is a warning
    that names it (one damaged file must not hide the other versions)."""
    info_file = Path(folder) / VERSION_FILE
    if not info_file.is_file():
        return None
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
        return ModelVersion(info["name"], int(info["version"]), info_file.parent, info)
    except (OSError, ValueError, KeyError, TypeError) as err:
        warnings.warn(f"{info_file} is not a readable version record ({type(err).__name__}: {err}); that "
                      f"version is left out: mend or remove its folder", stacklevel=3)
        return None


def list_versions(models_dir: str | Path, name: str | None = None) -> list[ModelVersion]:
    """Every saved version under `models_dir` (of one `name`, or all), oldest first."""
    found = [read_version(f.parent) for f in sorted(Path(models_dir).glob(f"{name or '*'}/v*/{VERSION_FILE}"))]
    return sorted((v for v in found if v is not None), key=lambda v: (v.name, v.number))


def models_dirs() -> list[Path]:
    """The folders where versions are found by name, in order: those $SDLAB_MODELS lists, else ./feedback/models."""
    listed = [Path(p).expanduser() for p in os.environ.get(MODELS_VARIABLE, "").split(os.pathsep) if p.strip()]
    return listed or [DEFAULT_MODELS_DIR]


def default_models_dir(feedback_dir: str | Path | None = None) -> Path:
    """Where a new version goes when no folder is given: the first folder $SDLAB_MODELS lists, else
    the feedback store's `models` folder (./feedback/models without a store)."""
    if os.environ.get(MODELS_VARIABLE, "").strip():
        return models_dirs()[0]
    return Path(feedback_dir) / "models" if feedback_dir is not None else DEFAULT_MODELS_DIR


def named_versions(*folders: str | Path | None) -> dict[str, ModelVersion]:
    """label → version, for every version in `folders` (None: skipped) and then in the models folders;
    a label in two folders is the first one's (as PATH finds a command)."""
    found, seen = {}, set()
    for folder in [*folders, *models_dirs()]:
        if folder is None or not Path(folder).is_dir() or Path(folder).resolve() in seen:
            continue
        seen.add(Path(folder).resolve())
        for version in list_versions(folder):
            found.setdefault(version.label, version)
    return found


def find_version(name: str) -> ModelVersion | None:
    """The version `name` loads from the models folders: a label ("my-dog-v2") that version, a name
    ("my-dog") its newest; None where none is called so."""
    versions = named_versions()
    if name in versions:
        return versions[name]
    return max((v for v in versions.values() if v.name == name), key=lambda v: v.number, default=None)


def check_version_name(name) -> str:
    """A name for new versions: a plain folder name that is not a preset's and does not read as a label."""
    check(isinstance(name, str) and VERSION_NAME.fullmatch(name) is not None,
          f"name must be letters, digits, '.', '_' and '-', starting with a letter or digit (at most 100), "
          f"got {name!r}; e.g. 'my-dog'")
    check(find_preset(name) is None, f"name {name!r} is a preset's: choose another, e.g. '{name}-ft'")
    label = LABEL.fullmatch(name)
    if label is not None:
        base, number = label.groups()
        raise SdlabInputError(f"name {name!r} reads as version {number} of {base!r}: name it {base!r}, and its "
                              f"versions are {base}-v1, {base}-v2, …")
    return name


def loads_by_name(version: ModelVersion) -> bool:
    """Whether `load_pipeline(version.label)` finds this version (it is in one of the models folders)."""
    found = find_version(version.label)
    return found is not None and found.folder.resolve() == version.folder.resolve()
