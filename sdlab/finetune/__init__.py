"""Fine-tuning on liked images (notebook 08), or on one's own: LoRA or full, in the background, as a new
model version that loads by name.

    job = start_finetune(pipe, store, models_dir="models/feedback")   # the images rated 4–5, their prompts
    job.status()            # FinetuneStatus(state='running', step=40, total_steps=200, loss=0.071, …)
    version = job.wait()    # ModelVersion(name='sdlab-tiny-feedback', number=1, folder=…)
    new_pipe = load_version(version.folder)

    examples = folder_examples("photos/dog", "a photo of sks dog")   # DreamBooth style: one's own images
    version = finetune(pipe, examples, models_dir="feedback/models", name="my-dog")
    new_pipe = load_pipeline("my-dog-v1")   # by its label, from the models folders (`sdlab.presets`)

The training step is the one sdlab-tiny was trained with (`sdlab.tiny.train`): noise the latents of
an image at a random timestep, ask the UNet for the target the scheduler's `prediction_type` names
(v for sdlab-tiny, the noise for SD 1.5), mean squared error. accelerate places the model and runs
the backward pass, on the CPU or a GPU. LoRA (peft) trains small low-rank matrices beside the
attention and time-embedding layers; they are saved in diffusers' format, so
`pipe.load_lora_weights(version.folder)` applies them. Every version gets its own folder; the base
model and older versions are never changed.

Where things live: `examples` (training pairs), `training` (the step and `finetune`), `versions`
(saving and loading versions; their records and names are the model registry's, `sdlab.presets`),
`jobs` (the background job). `sdlab.tiny.preference` closes the loop on sdlab-tiny and measures it
with simulated raters.
"""
from __future__ import annotations

from .examples import Example, encode_examples, folder_examples, stored_examples, training_examples
from .jobs import FINETUNE_TURN, STATES, FinetuneJob, FinetuneStatus, start_finetune
from .training import (
                       FULL_SAVE_MAX_PARAMETERS,
                       LORA_FILE,
                       LORA_TARGETS,
                       FinetuneConfig,
                       diffusion_loss,
                       finetune,
                       noise_scheduler_for,
                       sample_timesteps,
)
from .versions import VERSION_FILE, ModelVersion, how_to_load, list_versions, load_version, prune_versions

__all__ = ["Example", "encode_examples", "folder_examples", "stored_examples", "training_examples", "FINETUNE_TURN",
           "STATES", "FinetuneJob", "FinetuneStatus", "start_finetune", "FULL_SAVE_MAX_PARAMETERS", "LORA_FILE",
           "LORA_TARGETS", "FinetuneConfig", "diffusion_loss", "finetune", "noise_scheduler_for", "sample_timesteps",
           "VERSION_FILE", "ModelVersion", "how_to_load", "list_versions", "load_version", "prune_versions"]
