"""ipywidgets controls: prompt, seed, steps, guidance and scheduler → an image.

`explore(pipe)` shows the controls and one image made from their starting values. In JupyterLab
or Colab, moving a slider and pressing Generate makes a new image in the same place. Where
widgets cannot run (a notebook executed headless by papermill, grading or CI, then read on
GitHub or as HTML), the same output shows that image as a plain PNG instead.
"""
from __future__ import annotations

import base64
import functools
import html
import io

from .errors import SdlabInputError, check
from .generation import MAX_GUIDANCE, MAX_STEPS, check_generate_inputs, generate, model_defaults
from .grids import enlarge
from .presets import find_preset
from .schedulers import resolve_scheduler_name, scheduler_name, schedulers_for
from .seeds import MAX_SEED, check_seed, default_size, random_seed

ALL_CONTROLS = ("prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale", "scheduler")


def _png(image, scale: int) -> bytes:
    buffer = io.BytesIO()
    enlarge(image, scale).save(buffer, format="PNG")
    return buffer.getvalue()


class GenerationControls:
    """Widgets for generate()'s parameters, a Generate button and the resulting image.

    The controls take what generate() takes (seeds to 2**64 - 1, any scheduler name or alias; the
    sliders reach 150 steps and guidance 30, as A1111's, or the starting value where it is more);
    a starting value generate() would refuse is an error here too, not quietly moved into range.
    """

    def __init__(self, pipe, prompt: str = "a small red circle on a blue background", seed: int = 42,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 scheduler: str | None = None, controls=ALL_CONTROLS, scale: int | None = None):
        import ipywidgets as w  # notebooks only (ipywidgets is heavy)

        preset = find_preset(getattr(pipe, "sdlab_model_name", ""))
        self.pipe = pipe
        steps, guidance = model_defaults(pipe)
        steps = steps if num_inference_steps is None else num_inference_steps
        guidance = guidance if guidance_scale is None else guidance_scale
        check_generate_inputs([prompt], num_inference_steps=steps, guidance_scale=guidance,
                              height=default_size(pipe), width=default_size(pipe))
        check_seed(seed)
        self.scale = scale or max(1, 256 // (preset.size if preset else 512))
        style = {"description_width": "140px"}
        layout = w.Layout(width="480px")
        self.widgets = {
            "prompt": w.Text(prompt, description="prompt", style=style, layout=layout),
            "negative_prompt": w.Text("", description="negative prompt", style=style, layout=layout),
            "seed": w.BoundedIntText(seed, min=0, max=MAX_SEED, description="seed", style=style),
            # A1111's slider lengths (150 steps, guidance 30), longer where a starting value needs it
            "num_inference_steps": w.IntSlider(steps, min=1, max=min(MAX_STEPS, max(150, steps)), description="steps",
                                               style=style, layout=layout),
            "guidance_scale": w.FloatSlider(guidance, min=0, max=min(MAX_GUIDANCE, max(30, guidance)), step=0.5,
                                            description="guidance", style=style, layout=layout),
            "scheduler": self._scheduler_menu(w, scheduler, style),
        }
        self.shown = [self.widgets[name] for name in controls]
        self.button = w.Button(description="Generate", button_style="primary", icon="paint-brush")
        self.dice = w.Button(description="random seed", icon="dice")
        self.image = w.Image(format="png")
        self.info = w.HTML()
        self.button.on_click(lambda _: self.run())
        self.dice.on_click(lambda _: self._new_seed())
        self.last = None

    def _scheduler_menu(self, w, scheduler: str | None, style):
        """The scheduler names; an unknown `scheduler` is an error. A pipeline whose own scheduler has
        no name here shows it as the first choice, which keeps it (generate()'s scheduler=None)."""
        offered = schedulers_for(self.pipe.scheduler.config)  # those that run this model at every step count
        options = [(name, name) for name in offered]
        own = scheduler_name(self.pipe.scheduler)
        value = resolve_scheduler_name(scheduler) if scheduler is not None else own if own in offered else None
        check(value is None or value in offered, f"scheduler {value!r} cannot run this model at every step count "
                                                 f"from 1 to 50; choose one of {offered}")
        if value is None:
            options.insert(0, (f"{own} (the model's own)", None))
        return w.Dropdown(options=options, value=value, description="scheduler", style=style)

    def values(self) -> dict:
        """The current settings, with generate()'s parameter names."""
        return {name: widget.value for name, widget in self.widgets.items()}

    def run(self):
        """Generate with the current settings; updates the image and returns the GeneratedImage."""
        try:
            self.last = generate(self.pipe, **self.values())[0]
        except SdlabInputError as err:  # a teaching error: show it next to the controls
            self.info.value = f"<b style='color:#b00'>{html.escape(str(err))}</b>"
            return None
        self.image.value = _png(self.last.image, self.scale)
        p = self.last.params
        self.info.value = html.escape(f"seed {p.seed} · {p.num_inference_steps} steps · guidance "
                                      f"{p.guidance_scale:g} · {p.scheduler} · {self.last.seconds:.2f} s")
        return self.last

    def _new_seed(self) -> None:
        self.widgets["seed"].value = random_seed()
        self.run()

    def widget(self):
        import ipywidgets as w  # notebooks only (ipywidgets is heavy)

        buttons = w.HBox([self.button, self.dice] if self.widgets["seed"] in self.shown else [self.button])
        return _panel_class()([w.VBox(self.shown + [buttons, self.info]), self.image], picture=self.image)


@functools.cache
def _panel_class():
    """An HBox whose output also carries its picture as a PNG: frontends that run widgets show the
    live controls, the others (nbconvert, GitHub, a notebook saved without its widget state) the
    picture, once, where the controls would be."""
    import ipywidgets as w  # notebooks only (ipywidgets is heavy)

    class Panel(w.HBox):
        def __init__(self, children, picture):
            super().__init__(children)
            self.picture = picture  # the Image widget whose value is shown

        def _repr_mimebundle_(self, **kwargs):
            bundle = dict(super()._repr_mimebundle_(**kwargs) or {})
            if self.picture.value:
                bundle["image/png"] = base64.b64encode(self.picture.value).decode("ascii")
            return bundle

    return Panel


def explore(pipe, **settings) -> GenerationControls:
    """Show generation controls with one image already made (headless, that image as a PNG)."""
    from IPython.display import display  # notebooks only (IPython)

    controls = GenerationControls(pipe, **settings)
    controls.run()
    display(controls.widget())
    return controls
