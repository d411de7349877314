"""Fine-tuned model versions: each in its own folder `<models_dir>/<name>/v<N>`, never over an
older one; loaded as a whole pipeline (small models) or as the base model plus its LoRA. A version
loads by its label too (`load_pipeline("my-dog-v2")`): its records and names are the model
registry's (`sdlab.presets`)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ..errors import check
from ..pipelines import load_pipeline
from ..presets import MODELS_VARIABLE, VERSION_FILE, ModelVersion, list_versions, loads_by_name, read_version

__all__ = ["VERSION_FILE", "ModelVersion", "list_versions", "read_version", "prune_versions", "load_version",
           "how_to_load"]


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or "model").strip("-") or "model"


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
    """A pipeline for a saved version: its own pipeline folder, or its base model + its LoRA
    (`load_pipeline` of its folder or its label does the same)."""
    check(read_version(folder) is not None, f"{folder} is not a model version (no readable {VERSION_FILE} in it)")
    return load_pipeline(str(folder), device=device, dtype=dtype)


def how_to_load(version: ModelVersion) -> str:
    """What to type to use a version: its label, where the models folders hold it; else how to get there."""
    if loads_by_name(version):
        return f"load it by name: sdlab serve --model {version.label}, or load_pipeline({version.label!r})"
    return (f"load it by name ({version.label}) once ${MODELS_VARIABLE} lists {version.folder.parent.parent}, "
            f"or by its folder")
