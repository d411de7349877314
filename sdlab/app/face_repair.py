"""Face repair in the app (notebook 06's `sdlab.faces`), when a face restorer is available.

The app takes any function `restore(image, upscale=..., weight=...) -> image`; by default
`FacesRestorer`, which runs `sdlab.faces.restore_faces`. With one, the UI gets a "Face repair"
panel under the gallery (repair every new image, or the selected one) and the Gradio API gets
the endpoint /restore_faces (image, upscale, weight) → image, the one `sdlab.faces.restore_remote`
calls.
"""
from __future__ import annotations

import importlib.util
import threading
from typing import Callable

import gradio as gr
from PIL import Image

from ..errors import check, warnings_of_this_thread
from ..metadata import PARAMETERS_KEY
from .studio import as_gradio_error

Restorer = Callable[..., Image.Image]


class FacesRestorer:
    """`sdlab.faces.restore_faces` as restore(image, upscale=, weight=) -> image.

    The restorer loads on first use: GFPGAN v1.4 when its weights are downloaded
    (`sdlab.faces.download_weights()`), else the offline "classical" restorer (denoise + sharpen,
    no face model).
    """

    def __init__(self):
        self._restorer = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str | None:
        return getattr(self._restorer, "name", None)

    def __call__(self, image: Image.Image, upscale: float = 2, weight: float = 0.5) -> Image.Image:
        # optional: sdlab.faces loads on the first repair (find_restorer checks it is installed)
        from ..faces import load_restorer, restore_faces, weights_path

        with self._lock:  # one repair at a time, like generations
            if self._restorer is None:
                self._restorer = load_restorer("GFPGANv1.4" if weights_path("GFPGANv1.4").is_file() else "classical")
            return restore_faces(image, self._restorer, upscale=upscale, weight=weight).image


def find_restorer() -> Restorer | None:
    """A `FacesRestorer` if `sdlab.faces` is installed, else None (nothing is loaded yet)."""
    return FacesRestorer() if importlib.util.find_spec("sdlab.faces") is not None else None


def repair(restore: Restorer, image: Image.Image | None, upscale: int = 2, weight: float = 0.5) -> Image.Image:
    """`restore(image)`; a PNG parameters text the image carries is kept, with the repair added."""
    check(image is not None, "choose an image to repair: upload one, or click one in the gallery")
    repaired = restore(image, upscale=int(upscale), weight=float(weight))
    text = image.info.get(PARAMETERS_KEY)
    if text:  # AUTOMATIC1111 notes face restoration in the same line
        name = getattr(restore, "name", None) or getattr(restore, "__name__", "face restorer")
        repaired.info[PARAMETERS_KEY] = (f"{text}, Face restoration: {name.replace(',', ';')}, "
                                         f"Face restoration weight: {float(weight):g}, Upscale: {int(upscale)}")
    return repaired


def repair_gallery(restore: Restorer, gallery, upscale: int, weight: float) -> list[tuple[Image.Image, str]]:
    """Every (image, caption) of the gallery with its faces repaired."""
    return [(repair(restore, image, upscale, weight), f"{caption or ''}\nFaces repaired (upscale {int(upscale)}, "
                                                     f"weight {float(weight):g})") for image, caption in gallery or []]


def add_face_repair_panel(restore: Restorer, gallery: gr.Gallery, selected: gr.State, generated: list) -> None:
    """The panel, and a step after each generation event that repairs its images when asked.

    `selected`: the index of the clicked gallery image; `generated`: the generation events
    (what `.click()` returned), to chain the repair after.
    """
    with gr.Accordion("Face repair", open=False):
        every_image = gr.Checkbox(False, label="Repair the faces in every new image")
        with gr.Row():
            upscale = gr.Slider(1, 4, 2, step=1, label="Upscale")
            weight = gr.Slider(0, 1, 0.5, step=0.05, label="Weight")
        with gr.Row():
            source = gr.Image(type="pil", label="Image to repair", sources=["upload", "clipboard"])
            result = gr.Image(type="pil", label="Repaired", format="png", interactive=False)
        with gr.Row():
            go = gr.Button("Repair this image")
            go_selected = gr.Button("Repair the selected gallery image")

    def restore_faces(image, upscale=2, weight=0.5):
        """Repair the faces in an image (and upscale it)."""
        return _shown(repair, restore, image, upscale, weight)

    def repair_selected(gallery, selected, upscale, weight):
        image = gallery[min(selected or 0, len(gallery) - 1)][0] if gallery else None
        return _shown(repair, restore, image, upscale, weight)

    def repair_new_images(every_image, gallery, upscale, weight):
        return _shown(repair_gallery, restore, gallery, upscale, weight) if every_image else gr.skip()

    go.click(restore_faces, [source, upscale, weight], result, api_name="restore_faces", concurrency_id="gpu")
    go_selected.click(repair_selected, [gallery, selected, upscale, weight], result, api_visibility="private",
                      concurrency_id="gpu")
    for event in generated:
        event.then(repair_new_images, [every_image, gallery, upscale, weight], gallery, api_visibility="private",
                   concurrency_id="gpu")


def _shown(fn, *args):
    """fn(*args), its errors and warnings (e.g. "no face found") shown in the browser."""
    with as_gradio_error(), warnings_of_this_thread() as caught:
        result = fn(*args)
    for message in caught:
        gr.Warning(message)
    return result

