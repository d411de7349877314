"""The Gradio UI: text-to-image, image-to-image and inpainting tabs over one gallery (and, when the
app keeps a feedback store, a rating row under it and a Gallery tab: see `sdlab.app.feedback`).

The work is done by plain functions of the controls' values (`txt2img`, `img2img`,
`inpaint`, `variations`) that return a `Shown`: what the gallery and the text under it show.
`build_ui` only wires them to widgets, so tests and curious students can call them directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce

import gradio as gr
from PIL import Image, ImageChops

from ..errors import check
from ..generation import MAX_STEPS, Generation, GenerationParams, model_defaults
from ..metadata import format_parameters
from ..schedulers import scheduler_name, schedulers_for
from ..seeds import default_size, random_seed
from .face_repair import add_face_repair_panel
from .feedback import add_gallery_tab, add_rating_row
from .studio import Studio, as_gradio_error, with_parameters

MAX_UI_IMAGES = 8  # per click; the REST API allows more
MAX_UI_SIZE = 1024
MAX_UI_GUIDANCE = 20


@dataclass
class Shown:
    """What one click shows: (image, caption) pairs, a summary line, and each image's parameters."""

    gallery: list[tuple[Image.Image, str]] = field(default_factory=list)
    summary: str = ""
    made: list[dict] = field(default_factory=list)  # {"params": GenerationParams dict, "seconds", "image_id"}
    warnings: list[str] = field(default_factory=list)

    @property
    def images(self) -> list[Image.Image]:
        return [image for image, _ in self.gallery]

    @property
    def last_seed(self) -> int:
        return self.made[0]["params"]["seed"] if self.made else -1


def caption(params: GenerationParams | dict, seconds: float) -> str:
    """The text under an image: its full parameters (as stored in the PNG) and its time."""
    params = params if isinstance(params, GenerationParams) else GenerationParams(**params)
    return f"{format_parameters(params)}\nTime: {seconds:.2f} s"


def show(result: Generation, warnings: list[str] = (), image_ids: list[int | None] | None = None) -> Shown:
    """A Generation as the gallery shows it; every image keeps its parameters for download, and its
    image_id in the feedback store (None: not kept)."""
    seeds = [item.params.seed for item in result]
    first = result[0].params
    summary = (f"{len(result)} image(s) in {result.seconds:.2f} s · seed{'s' if len(seeds) > 1 else ''} "
               f"{seeds[0]}{f'–{seeds[-1]}' if len(seeds) > 1 else ''} · {first.scheduler}, "
               f"{first.num_inference_steps} steps, guidance {first.guidance_scale:g}, {first.width}×{first.height}")
    image_ids = image_ids or [None] * len(result)
    made = [{"params": item.params.to_dict(), "seconds": item.seconds, "image_id": image_id}
            for item, image_id in zip(result, image_ids, strict=True)]
    return Shown(gallery=[(with_parameters(item), caption(item.params, item.seconds)) for item in result],
                 summary=summary, made=made, warnings=list(warnings))


def made_and_kept(studio: Studio, prompt: str, **kwargs) -> Shown:
    """`studio.generate()` (kwargs: generate()'s, and `client`, who asks, for the line's fairness), its
    images kept in the feedback store (if the app has one), shown."""
    result, warnings = studio.generate(prompt, **kwargs)
    return show(result, warnings, studio.record(result))


def _whole(value):
    """Sliders send 20.0 for 20; pass anything else on for generate() to judge."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def settings(negative_prompt=None, scheduler=None, num_inference_steps=None, guidance_scale=None, seed=None,
             width=None, height=None, num_images=None) -> dict:
    """The controls' values as generate() arguments. None: the model's default; seed -1 or None: random."""
    seed = _whole(seed)
    return dict(negative_prompt=negative_prompt or "", scheduler=scheduler or None,
                num_inference_steps=_whole(num_inference_steps), guidance_scale=guidance_scale,
                seed=None if seed is None or seed == -1 else seed, width=_whole(width), height=_whole(height),
                num_images_per_prompt=1 if num_images is None else _whole(num_images))


def txt2img(studio: Studio, prompt: str, **kwargs) -> Shown:
    """Text to image; `kwargs` are generate()'s (`settings()` makes them from the controls)."""
    return made_and_kept(studio, prompt, **kwargs)


def _strength(strength: float | None) -> dict:
    return {} if strength is None else {"strength": strength}  # None: generate()'s default


def img2img(studio: Studio, image: Image.Image | None, strength: float | None, prompt: str, **kwargs) -> Shown:
    """Image to image: redraw `image`; `strength` says how much may change."""
    check(image is not None, "upload a start image first (the Image to image tab)")
    return made_and_kept(studio, prompt, image=image, **_strength(strength), **kwargs)


def mask_from_layers(layers: list[Image.Image | None]) -> Image.Image | None:
    """White wherever any paint layer has paint (its alpha is not 0), black elsewhere."""
    alphas = [layer.convert("RGBA").getchannel("A") for layer in layers if layer is not None]
    if not alphas:
        return None
    mask = reduce(ImageChops.lighter, alphas).point(lambda a: 255 if a else 0)
    return mask if mask.getbbox() else None


def inpaint(studio: Studio, editor: dict | None, mask: Image.Image | None, strength: float | None, prompt: str,
            **kwargs) -> Shown:
    """Inpainting: repaint where the mask is white; the mask is drawn in the editor or uploaded."""
    image = (editor or {}).get("background")
    check(image is not None, "upload an image into the inpainting editor first")
    mask = mask if mask is not None else mask_from_layers((editor or {}).get("layers") or [])
    check(mask is not None, "paint over the part to repaint with the brush, or upload a mask (white = repaint)")
    return made_and_kept(studio, prompt, image=image, mask_image=mask, **_strength(strength), **kwargs)


def variations(studio: Studio, made: list[dict], index: int, variation_strength: float, num_images: int,
               client: str = "") -> Shown:
    """`num_images` seed variations of image `index`: its seed's noise mixed with new seeds' noise."""
    check(bool(made), "generate an image first, then click it and ask for variations")
    check(int(num_images) >= 1, f"ask for at least one variation, got {num_images}")
    params = GenerationParams(**made[min(index or 0, len(made) - 1)]["params"])
    check(params.mode == "txt2img", f"variations start from a text-to-image result; this one was made with "
                                    f"{params.mode}")
    first, results, warnings = random_seed(), Generation(), []
    for k in range(int(num_images)):
        result, caught = studio.generate(
            params.prompt, negative_prompt=params.negative_prompt, seed=params.seed,
            num_inference_steps=params.num_inference_steps, guidance_scale=params.guidance_scale,
            height=params.height, width=params.width, scheduler=params.scheduler,
            variation_seed=first + k, variation_strength=variation_strength, client=client)
        results.results += result.results
        results.seconds += result.seconds
        warnings += caught
    return show(results, warnings, studio.record(results))


# ---- wiring to widgets --------------------------------------------------------------------

def _outputs(shown: Shown):
    """The values for (gallery, summary, selected image's text, last seed, made, selected index)."""
    for message in shown.warnings:
        gr.Warning(message)
    made = shown.made
    first = caption(made[0]["params"], made[0]["seconds"]) if made else ""
    return shown.gallery, shown.summary, first, shown.last_seed, made, 0


def client_of(request: gr.Request | None) -> str:
    """Who clicked, for the line's fairness: the browser's address, as the REST API counts its clients."""
    return request.client.host if request is not None and request.client is not None else ""


def build_ui(studio: Studio, face_restorer=None) -> gr.Blocks:
    """The Blocks app. Its API (for gradio_client): /text2img, /img2img, /inpainting, /variations,
    /restore_faces when a `face_restorer` is given (see `sdlab.app.face_repair`), and /gallery
    when the studio has a feedback store (see `sdlab.app.feedback`)."""
    steps, guidance = model_defaults(studio.pipe)
    size = default_size(studio.pipe)
    with gr.Blocks(title="sdlab", analytics_enabled=False, delete_cache=(1800, 3600)) as ui:
        gr.Markdown(f"## sdlab · {studio.model} on {studio.pipe.device}\n"
                    "Type a prompt and press Generate. Click an image for its parameters; the download "
                    "button saves a PNG that keeps them. The REST API is documented at [/docs](/docs)."
                    + (" Rate the selected image under the gallery; the Gallery tab searches every image kept."
                       if studio.store is not None else ""))
        made = gr.State([])
        selected = gr.State(0)
        last_seed = gr.State(-1)
        with gr.Tabs(elem_id="pages"):
            with gr.Tab("Generate", id="generate"):
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                    placeholder="a small red circle on a blue background")
                negative_prompt = gr.Textbox(label="Negative prompt", elem_id="negative-prompt")
                with gr.Row():
                    with gr.Column(scale=2):
                        with gr.Tabs():
                            with gr.Tab("Text to image", id="txt2img"):
                                go_text = gr.Button("Generate", variant="primary", elem_id="generate")
                            with gr.Tab("Image to image", id="img2img"):
                                start_image = gr.Image(type="pil", label="Start image",
                                                       sources=["upload", "clipboard"])
                                strength = gr.Slider(0.05, 1, 0.6, step=0.05, label="Strength (how much may change)")
                                go_image = gr.Button("Generate from image", variant="primary")
                            with gr.Tab("Inpainting", id="inpaint"):
                                editor = gr.ImageEditor(type="pil", label="Image: paint over what to repaint",
                                                        sources=["upload", "clipboard"], layers=False,
                                                        brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"))
                                mask = gr.Image(type="pil", image_mode="L", sources=["upload", "clipboard"],
                                                label="…or upload a mask (white = repaint)")
                                inpaint_strength = gr.Slider(0.05, 1, 1.0, step=0.05, label="Strength")
                                go_inpaint = gr.Button("Inpaint", variant="primary")
                        scheduler = gr.Dropdown(schedulers_for(studio.pipe.scheduler.config),
                                                value=scheduler_name(studio.pipe.scheduler),
                                                label="Scheduler (sampler)")
                        num_inference_steps = gr.Slider(1, MAX_STEPS, steps, step=1, label="Steps")
                        guidance_scale = gr.Slider(0, MAX_UI_GUIDANCE, guidance, step=0.5,
                                                   label="Guidance scale (CFG)")
                        with gr.Row():
                            seed = gr.Number(-1, precision=0, label="Seed (-1: random)", elem_id="seed", scale=3)
                            random_seed_button = gr.Button("random", scale=1, min_width=60)
                            reuse_seed_button = gr.Button("reuse last", scale=1, min_width=60)
                        with gr.Row():
                            largest = min(MAX_UI_SIZE, studio.largest_side)  # the sliders follow the model
                            width = gr.Slider(64, largest, size, step=8, label="Width")
                            height = gr.Slider(64, largest, size, step=8, label="Height")
                        num_images = gr.Slider(1, MAX_UI_IMAGES, 1, step=1, label="Number of images")
                    with gr.Column(scale=3):
                        gallery = gr.Gallery(label="Images", columns=4, format="png", type="pil", elem_id="gallery",
                                             buttons=["download", "download_all", "fullscreen"])
                        summary = gr.Markdown(elem_id="summary")
                        info = gr.Textbox(label="Selected image: parameters (as stored in its PNG) and time", lines=4,
                                          interactive=False, buttons=["copy"], elem_id="info")
                        with gr.Row():
                            variation_strength = gr.Slider(0.01, 1, 0.1, step=0.01, label="Variation strength")
                            vary = gr.Button("Variations of the selected image")
                        if studio.store is not None:
                            add_rating_row(studio, made, selected)
                        face_panel = gr.Column()  # filled below when a face restorer is given
            with gr.Tab("Gallery", id="stored") as gallery_tab:
                add_gallery_tab(studio, gallery_tab)

        controls = [negative_prompt, scheduler, num_inference_steps, guidance_scale, seed, width, height, num_images]
        outputs = [gallery, summary, info, last_seed, made, selected]

        # Parameters that default to None are optional for gradio_client callers:
        # client.predict("a red circle", seed=42, api_name="/text2img"). None means the model's default.
        # `request` is Gradio's, filled in by it (not a parameter of the API)
        def on_text2img(prompt, negative_prompt=None, scheduler=None, num_inference_steps=None, guidance_scale=None,
                        seed=None, width=None, height=None, num_images=None, request: gr.Request = None):
            """Text to image; returns the gallery (images with their parameters as captions)."""
            with as_gradio_error():
                return _outputs(txt2img(studio, prompt, client=client_of(request), **settings(
                    negative_prompt, scheduler, num_inference_steps, guidance_scale, seed, width, height, num_images)))

        def on_img2img(image, prompt, strength=None, negative_prompt=None, scheduler=None, num_inference_steps=None,
                       guidance_scale=None, seed=None, width=None, height=None, num_images=None,
                       request: gr.Request = None):
            """Image to image from a start image and a strength in (0, 1]."""
            with as_gradio_error():
                return _outputs(img2img(studio, image, strength, prompt, client=client_of(request), **settings(
                    negative_prompt, scheduler, num_inference_steps, guidance_scale, seed, width, height, num_images)))

        def on_inpainting(editor, prompt, mask=None, strength=None, negative_prompt=None, scheduler=None,
                          num_inference_steps=None, guidance_scale=None, seed=None, width=None, height=None,
                          num_images=None, request: gr.Request = None):
            """Inpainting: the editor's image and painted area, or an uploaded mask (white = repaint)."""
            with as_gradio_error():
                return _outputs(inpaint(studio, editor, mask, strength, prompt, client=client_of(request), **settings(
                    negative_prompt, scheduler, num_inference_steps, guidance_scale, seed, width, height, num_images)))

        def on_variations(made, selected, variation_strength, num_images, request: gr.Request = None):
            """Seed variations of the selected image."""
            with as_gradio_error():
                return _outputs(variations(studio, made, selected, variation_strength, num_images,
                                           client_of(request)))

        def on_select(made, evt: gr.SelectData):
            entry = made[evt.index]
            return caption(entry["params"], entry["seconds"]), entry["params"]["seed"], evt.index

        # Every click waits in the studio's line beside the REST requests (one line, whose calls
        # merge what arrives together), so Gradio lets up to max_queue of them in at once
        line = dict(concurrency_id="line", concurrency_limit=studio.max_queue)
        generated = [
            go_text.click(on_text2img, [prompt, *controls], outputs, api_name="text2img", **line),
            prompt.submit(on_text2img, [prompt, *controls], outputs, api_visibility="private", **line),
            go_image.click(on_img2img, [start_image, prompt, strength, *controls], outputs, api_name="img2img",
                           **line),
            go_inpaint.click(on_inpainting, [editor, prompt, mask, inpaint_strength, *controls], outputs,
                             api_name="inpainting", **line),
            vary.click(on_variations, [made, selected, variation_strength, num_images], outputs,
                       api_name="variations", **line),
        ]
        gallery.select(on_select, [made], [info, last_seed, selected], api_visibility="private", queue=False)
        random_seed_button.click(lambda: -1, None, seed, api_visibility="private", queue=False)
        reuse_seed_button.click(lambda last: last, last_seed, seed, api_visibility="private", queue=False)
        if face_restorer is not None:
            with face_panel:
                add_face_repair_panel(face_restorer, gallery, selected, generated)
    # the rest that uses the GPU (face repair: "gpu") one at a time; at most max_queue events wait
    ui.queue(max_size=studio.max_queue, default_concurrency_limit=1)
    return ui
