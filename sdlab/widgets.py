"""ipywidgets controls: prompt, seed, steps, guidance and scheduler → an image.

`explore(pipe)` shows the controls and one image made from their starting values, so the
cell has a real result even when a notebook runs headless (papermill, grading, CI). In
JupyterLab or Colab, moving a slider and pressing Generate makes a new image.
"""
from __future__ import annotations

import io

from .generation import MAX_GUIDANCE, generate
from .grids import enlarge
from .presets import find_preset
from .schedulers import scheduler_name, scheduler_names
from .seeds import random_seed

ALL_CONTROLS = ("prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale", "scheduler")


def _png(image, scale: int) -> bytes:
    buffer = io.BytesIO()
    enlarge(image, scale).save(buffer, format="PNG")
    return buffer.getvalue()


class GenerationControls:
    """Widgets for generate()'s parameters, a Generate button and the resulting image."""

    def __init__(self, pipe, prompt: str = "a small red circle on a blue background", seed: int = 42,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 scheduler: str | None = None, controls=ALL_CONTROLS, scale: int | None = None):
        import ipywidgets as w

        preset = find_preset(getattr(pipe, "sdlab_model_name", ""))
        self.pipe = pipe
        current = scheduler or scheduler_name(pipe.scheduler)
        self.scale = scale or max(1, 256 // (preset.size if preset else 512))
        style = {"description_width": "140px"}
        layout = w.Layout(width="480px")
        self.widgets = {
            "prompt": w.Text(prompt, description="prompt", style=style, layout=layout),
            "negative_prompt": w.Text("", description="negative prompt", style=style, layout=layout),
            "seed": w.BoundedIntText(seed, min=0, max=2**32 - 1, description="seed", style=style),
            "num_inference_steps": w.IntSlider(num_inference_steps if num_inference_steps is not None else
                                               (preset.num_inference_steps if preset else 30),
                                               min=1, max=100, description="steps", style=style, layout=layout),
            "guidance_scale": w.FloatSlider(guidance_scale if guidance_scale is not None else
                                            (preset.guidance_scale if preset else 7.5),
                                            min=0, max=min(MAX_GUIDANCE, 30), step=0.5, description="guidance",
                                            style=style, layout=layout),
            "scheduler": w.Dropdown(options=scheduler_names(), description="scheduler", style=style,
                                    value=current if current in scheduler_names() else scheduler_names()[0]),
        }
        self.shown = [self.widgets[name] for name in controls]
        self.button = w.Button(description="Generate", button_style="primary", icon="paint-brush")
        self.dice = w.Button(description="random seed", icon="dice")
        self.image = w.Image(format="png")
        self.info = w.HTML()
        self.button.on_click(lambda _: self.run())
        self.dice.on_click(lambda _: self._new_seed())
        self.last = None

    def values(self) -> dict:
        """The current settings, with generate()'s parameter names."""
        return {name: widget.value for name, widget in self.widgets.items()}

    def run(self):
        """Generate with the current settings; updates the image and returns the GeneratedImage."""
        try:
            self.last = generate(self.pipe, **self.values())[0]
        except ValueError as err:  # a teaching error: show it next to the controls
            self.info.value = f"<b style='color:#b00'>{err}</b>"
            return None
        self.image.value = _png(self.last.image, self.scale)
        p = self.last.params
        self.info.value = (f"seed {p.seed} · {p.num_inference_steps} steps · guidance {p.guidance_scale:g} · "
                           f"{p.scheduler} · {self.last.seconds:.2f} s")
        return self.last

    def _new_seed(self) -> None:
        self.widgets["seed"].value = random_seed()
        self.run()

    def widget(self):
        import ipywidgets as w

        buttons = w.HBox([self.button, self.dice] if self.widgets["seed"] in self.shown else [self.button])
        return w.HBox([w.VBox(self.shown + [buttons, self.info]), self.image])


def explore(pipe, **settings) -> GenerationControls:
    """Show generation controls with one image already made (works headless too)."""
    from IPython.display import display

    controls = GenerationControls(pipe, **settings)
    result = controls.run()
    display(controls.widget())
    if result is not None:  # also a plain output, so saved/executed notebooks show the image
        display(enlarge(result.image, controls.scale))
    return controls
