"""The denoising trajectory: what the image looks like at every step (notebook 03).

At every step the model predicts the noise in the current latents; from that prediction follows
its current guess of the *clean* image, x̂₀ (`sdlab.loop.clean_estimate`). Early guesses are blurry
averages, and each step sharpens them. `trajectory` runs the course's sampling loop
(`sdlab.loop`, equal to the pipeline pixel for pixel) and decodes, after every step, both the
noisy latents the scheduler carries on with and its clean guess. `show_trajectory` displays them
as a filmstrip; `trajectory_slider` as a slider over the steps.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from .generation import check_generate_inputs, model_defaults, negative_prompts
from .grids import display_scale, enlarge, labelled_grid, show_image
from .loop import denoise, encode_prompts
from .schedulers import check_scheduler_steps, own_scheduler, scheduler_name
from .seeds import default_size, make_latents
from .vae import decode_latents


@dataclass
class Trajectory:
    """One image's way from noise, step by step.

    timesteps: the scheduler's timestep at each step (noise level falls as they fall).
    noisy: the latents after each step, decoded (what the loop carries on with).
    predicted: the clean image the model guessed at each step (x̂₀, decoded).
    """
    prompt: str
    scheduler: str
    timesteps: list[float]
    noisy: list[Image.Image]
    predicted: list[Image.Image]

    @property
    def image(self) -> Image.Image:
        """The finished image (the latents after the last step)."""
        return self.noisy[-1]

    def __len__(self) -> int:
        return len(self.timesteps)

    def filmstrip(self, every: int = 1, cell: int | None = None) -> Image.Image:
        """A labelled grid: the clean guesses above, the noisy latents below, one column per shown step
        (every `every`-th step, and always the last)."""
        shown = sorted({*range(0, len(self), max(1, every)), len(self) - 1})
        cell = cell or 64 * display_scale(self.image, 128)
        return labelled_grid([self.predicted[i] for i in shown] + [self.noisy[i] for i in shown],
                             row_labels=["predicted x0", "latents x_t"],
                             col_labels=[f"step {i + 1}\nt={self.timesteps[i]:.0f}" for i in shown],
                             title=f"{self.prompt!r}, {self.scheduler}", cell=cell)


def trajectory(pipe, prompt: str, *, seed: int = 0, num_inference_steps: int | None = None,
               guidance_scale: float | None = None, negative_prompt: str | None = "",
               scheduler: str | None = None) -> Trajectory:
    """Generate one image with the course's loop and keep every step (see the module's docstring).

    The finished image equals `generate(pipe, prompt, seed=seed, ...)`'s for the same settings.
    """
    default_steps, default_guidance = model_defaults(pipe)
    steps = default_steps if num_inference_steps is None else num_inference_steps
    guidance = default_guidance if guidance_scale is None else guidance_scale
    size = default_size(pipe)
    check_generate_inputs([prompt], num_inference_steps=steps, guidance_scale=guidance, height=size, width=size)
    own = own_scheduler(pipe, scheduler)
    check_scheduler_steps(own, steps)
    cond, uncond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [prompt], negative_prompts(negative_prompt,
                                                                                                [prompt]))
    timesteps, noisy, predicted = [], [], []

    def keep(step: dict) -> None:
        timesteps.append(float(step["t"]))
        noisy.append(step["latents"])
        predicted.append(step["denoised"])

    noise = make_latents(pipe, seed).to(pipe.unet.device)
    denoise(pipe.unet, own, noise, cond, uncond, num_inference_steps=steps, guidance_scale=guidance, callback=keep)
    # one at a time: a batch may round differently, and the last image must be the pipeline's own
    return Trajectory(prompt, scheduler_name(own), timesteps, [decode_latents(pipe, x)[0] for x in noisy],
                      [decode_latents(pipe, x)[0] for x in predicted])


# ---- display (notebooks) ------------------------------------------------------------------

def show_trajectory(result: Trajectory, every: int = 1) -> None:
    """Display a trajectory as a filmstrip (see `Trajectory.filmstrip`)."""
    show_image(result.filmstrip(every), scale=1)


def trajectory_slider(result: Trajectory):
    """A slider over the steps showing the clean guess and the noisy latents of the chosen step, side
    by side; returns the ipywidgets box (display it, or leave it last in a cell)."""
    import ipywidgets as widgets  # notebooks only

    scale = display_scale(result.image)

    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        enlarge(image, scale).save(buffer, format="PNG")
        return buffer.getvalue()

    predicted, noisy = widgets.Image(format="png"), widgets.Image(format="png")
    label = widgets.Label()
    slider = widgets.IntSlider(value=len(result), min=1, max=len(result), description="step")

    def show(change=None) -> None:
        i = slider.value - 1
        predicted.value, noisy.value = png(result.predicted[i]), png(result.noisy[i])
        label.value = (f"step {i + 1} of {len(result)}, t = {result.timesteps[i]:.0f}: "
                       f"predicted clean image x0 (left), latents x_t (right)")

    slider.observe(show, names="value")
    show()
    return widgets.VBox([slider, widgets.HBox([predicted, noisy]), label])
