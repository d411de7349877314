"""Fine-tuned model versions: each in its own folder `<models_dir>/<name>/v<N>`, never over an
older one; loaded as a whole pipeline (small models) or as the base model plus its LoRA."""
from __future__ import annotations

import json
import re
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from diffusers.utils import logging as diffusers_logging

from ..errors import check
from ..pipelines import load_pipeline

VERSION_FILE = "sdlab_version.json"


@dataclass(frozen=True)
class ModelVersion:
    """A fine-tuned model: `folder` holds its LoRA weights (and, for small models, a whole pipeline)."""

    name: str
    number: int
    folder: Path
    info: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def label(self) -> str:
        return f"{self.name}-v{self.number}"


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or "model").strip("-") or "model"


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


def prune_versions(models_dir: str | Path, name: str, keep: int) -> list[ModelVersion]:
    """Delete all but the newest `keep` versions of `name` (a retention rule); the ones deleted."""
    check(isinstance(keep, int) and not isinstance(keep, bool) and keep >= 1,
          f"keep must be a whole number ≥ 1, got {keep!r}")
    old = list_versions(models_dir, name)[:-keep]
    for version in old:
        shutil.rmtree(version.folder)
    return old


def _publish(tmp: Path, models_dir: Path, name: str, info: dict) -> ModelVersion:
    """Move a finished version folder into place as the next free v<N> (never over an old one)."""
    home = models_dir / name
    home.mkdir(parents=True, exist_ok=True)
    taken = [int(f.name[1:]) for f in home.glob("v*") if f.name[1:].isdigit()]  # damaged records count too
    number = max(taken, default=0) + 1
    while True:
        info |= {"name": name, "version": number}
        (tmp / VERSION_FILE).write_text(json.dumps(info, indent=2))
        try:
            tmp.rename(home / f"v{number}")  # fails if v<number> exists and is not empty
            return ModelVersion(name, number, home / f"v{number}", info)
        except OSError:
            if not (home / f"v{number}").exists():
                raise
            number += 1  # another job published that number first


def load_version(folder: str | Path, *, device: str = "auto", dtype="auto"):
    """A pipeline for a saved version: its own pipeline folder, or its base model + its LoRA."""
    folder = Path(folder)
    check((folder / VERSION_FILE).is_file(), f"{folder} is not a model version (no {VERSION_FILE} in it)")
    info = json.loads((folder / VERSION_FILE).read_text())
    if (folder / "model_index.json").is_file():
        pipe = load_pipeline(str(folder), device=device, dtype=dtype)
    else:
        pipe = load_pipeline(info["base_model"], device=device, dtype=dtype)
        with _quiet_diffusers():
            pipe.load_lora_weights(str(folder))
        pipe.sdlab_model_name = str(folder)
    pipe.sdlab_version = ModelVersion(info["name"], info["version"], folder, info)
    return pipe


@contextmanager
def _quiet_diffusers():
    """Hide diffusers' notes while loading LoRA (e.g. "no LoRA keys for the text encoder": none are meant)."""
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
