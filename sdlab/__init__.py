"""sdlab: a Stable Diffusion course kit.

The names below load lazily, so `import sdlab` stays fast; each lives in the module named
after its notebook concept. The module that serves each notebook:

    00_setup              sdlab.device, sdlab.presets      (hardware, the model registry)
    01_loading            sdlab.pipelines, sdlab.generation (load_pipeline, generate)
    02_seeds_and_latents  sdlab.seeds, sdlab.vae           (seeds, noise, the VAE, img2img; sdlab.metadata)
    03_steps              sdlab.loop, sdlab.trajectory     (schedulers, the noise schedule, the loop by hand)
    04_prompts            sdlab.attention, sdlab.prompts   (tokens, embeddings, attention maps, weights)
    05_guidance           sdlab.sweeps, sdlab.loop         (batched sweeps, the guidance formula)
    06_face_repair        sdlab.faces                      (detect, align, restore, paste back)
    07_web_app            sdlab.app                        (Gradio UI and REST API)
    08_feedback           sdlab.feedback, sdlab.finetune   (the store, fine-tuning on liked images)

Every notebook also uses sdlab.grids (showing images), sdlab.widgets (sliders) and sdlab.checks
(self-checks); sdlab.tiny is the offline model's world and checker.
"""
from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

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
    "schedulers_for": "schedulers",
    "encode_prompts": "loop",
    "denoise": "loop",
    "decode": "loop",
    "encode_image": "vae",
    "decode_latents": "vae",
    "show_channels": "vae",
    "show_trajectory": "trajectory",
    "noise_levels": "schedulers",
    "word_heatmaps": "attention",
    "show_heatmaps": "attention",
    "to_compel": "prompts",
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

if TYPE_CHECKING:  # what editors and type checkers see; at run time the names load lazily below
    from .attention import show_heatmaps, word_heatmaps
    from .device import pick_device
    from .faces import detect_faces, load_restorer, restore_faces, restore_remote
    from .feedback import FeedbackStore
    from .finetune import start_finetune
    from .generation import Generation, GenerationParams, generate
    from .grids import image_grid, labelled_grid, show_images
    from .loop import decode, denoise, encode_prompts
    from .metadata import read_params, regenerate, save_png
    from .pipelines import img2img_pipeline, inpaint_pipeline, load_pipeline
    from .presets import default_model
    from .prompts import to_compel
    from .schedulers import noise_levels, scheduler_names, schedulers_for, set_scheduler
    from .seeds import make_generator, make_latents, slerp
    from .speed import speed_up
    from .tokenizer import load_clip_tokenizer
    from .trajectory import show_trajectory
    from .vae import decode_latents, encode_image, show_channels


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'sdlab' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
