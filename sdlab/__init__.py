"""sdlab: a Stable Diffusion course kit.

The names below load lazily, so `import sdlab` stays fast; each lives in the module named
after its notebook concept (`sdlab.seeds`, `sdlab.grids`, …).
"""
from __future__ import annotations

import importlib
import os

# Keep library chatter out of notebook outputs (set before transformers is imported).
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

__version__ = "0.1.0"

_EXPORTS = {
    "load_pipeline": "pipelines",
    "img2img_pipeline": "pipelines",
    "inpaint_pipeline": "pipelines",
    "speed_up": "speed",
    "pick_device": "device",
    "generate": "generation",
    "Generation": "generation",
    "GenerationParams": "generation",
    "make_latents": "seeds",
    "make_generator": "seeds",
    "slerp": "seeds",
    "scheduler_names": "schedulers",
    "set_scheduler": "schedulers",
    "image_grid": "grids",
    "labelled_grid": "grids",
    "show_images": "grids",
    "save_png": "metadata",
    "read_params": "metadata",
    "regenerate": "metadata",
    "default_model": "presets",
    "load_clip_tokenizer": "tokenizer",
    "restore_faces": "faces",
    "load_restorer": "faces",
    "detect_faces": "faces",
    "restore_remote": "faces",
    "FeedbackStore": "feedback",
    "start_finetune": "finetune",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'sdlab' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
