"""`create_app`: the REST API, the feedback routes and the Gradio UI on one FastAPI app."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from .. import __version__
from ..feedback import FeedbackStore
from ..generation import MAX_IMAGES, MAX_PROMPT_CHARS, MAX_STEPS
from ..presets import default_models_dir
from ..seeds import MAX_SIZE
from .a1111 import add_a1111_api
from .api import MAX_BODY_BYTES, MAX_IMAGE_BYTES, MAX_SMALL_BODY_BYTES, add_api
from .face_repair import find_restorer
from .feedback import FINETUNE_LIMITS, FinetuneLimits, add_feedback_api
from .studio import BATCH_WINDOW, MAX_BATCH, MAX_WORK, Studio
from .ui import build_ui


def limits_text(max_queue: int, max_work: float, finetune: FinetuneLimits, token: bool,
                max_batch: int = MAX_BATCH) -> str:
    """The limits of this server, as /docs shows them."""
    return (f"\n\n**Limits.** Prompt and negative prompt: {MAX_PROMPT_CHARS} characters each, valid Unicode. "
            f"Numbers must be JSON numbers. Per request: {MAX_IMAGES} images, {MAX_STEPS} steps, {MAX_SIZE}×"
            f"{MAX_SIZE} pixels, and at most {max_work:g} image-steps at the model's own size (images × steps × "
            f"pixels / the model's pixels). Bodies: {MAX_BODY_BYTES // 2**20} MB for generation (one image "
            f"{MAX_IMAGE_BYTES // 2**20} MB), {MAX_SMALL_BODY_BYTES // 2**10} KB for the rest. At most {max_queue} "
            f"requests in line (then 503 with Retry-After); text-to-image requests that arrive together with the "
            f"same settings share one pipeline call of up to {max_batch} images (`call_sizes` in the answer); the "
            f"client served longest ago goes next, image by image, so a request for many images is made in "
            f"pieces between other clients' requests; a request whose client hangs up is dropped. Fine-tuning: "
            f"at most {finetune.max_steps} steps and {finetune.max_minutes:g} minutes; the newest "
            f"{finetune.keep_versions} versions are kept"
            + ("; POST and DELETE /finetune need `Authorization: Bearer <operator token>`." if token else "."))


def create_app(pipe, *, max_queue: int = 16, face_restorer="auto", feedback_dir: str | Path | None = None,
               models_dir: str | Path | None = None, max_work: float = MAX_WORK, max_side: int | None = None,
               finetune_limits: FinetuneLimits = FINETUNE_LIMITS, operator_token: str | None = None,
               max_batch: int = MAX_BATCH, batch_window: float = BATCH_WINDOW) -> FastAPI:
    """The FastAPI app: REST endpoints (docs at /docs) and the Gradio UI mounted at /.

    max_queue: how many requests may be in line for the pipeline (the running ones included);
    more get HTTP 503 (REST) or "busy" (UI).
    max_batch, batch_window: requests that arrive within `batch_window` seconds of each other (and
    can share a call) are made in one pipeline call of at most `max_batch` images (see
    `sdlab.app.batcher`); max_batch=1 makes one image per call.
    face_restorer: a function (image, upscale=, weight=) -> image for the UI's face repair panel
    and the /restore_faces Gradio endpoint; "auto": `sdlab.faces` if it is installed (see
    `sdlab.app.face_repair.FacesRestorer`); None: no face repair.
    feedback_dir: a folder for a `sdlab.feedback.FeedbackStore` (made if missing): every image made is
    kept there and comes back with its image_id, and /feedback, /gallery and /finetune are served
    (see `sdlab.app.feedback`). None: no store, no image ids.
    models_dir: where /finetune saves new model versions (None: the first folder $SDLAB_MODELS lists, else
    the `models` folder in feedback_dir); /models and /sdapi/v1/sd-models list the versions there and in
    the models folders (`sdlab.presets.models_dirs`), and /sdapi/v1/options switches to them.
    max_work: the most one request may ask for, in image-steps at the model's own size (see
    `sdlab.generation.work_of`). max_side: the largest width or height served (None: 8 × the model's
    own size; more than twice it is served with a warning). finetune_limits: steps, minutes and kept
    versions of /finetune.
    operator_token: what POST and DELETE /finetune need (`Authorization: Bearer …`); None: nothing.
    """
    store = FeedbackStore(feedback_dir) if feedback_dir is not None else None
    if store is not None and models_dir is None:
        models_dir = default_models_dir(feedback_dir)
    studio = Studio(pipe, max_queue=max_queue, store=store, max_work=max_work, max_side=max_side,
                    max_batch=max_batch, batch_window=batch_window)
    # /docs and /redoc with their scripts served from here: a classroom may have no internet
    app = FastAPIOffline(title="sdlab", version=__version__,
                  description="Stable Diffusion over HTTP: text to image, image to image, inpainting. "
                              "The web UI is at /; every image comes back as a PNG that keeps its parameters."
                              + limits_text(max_queue, max_work, finetune_limits, operator_token is not None,
                                            max_batch))
    app.state.studio = studio
    add_api(app, studio, models_dir)  # its routes come first, so the UI mounted at / does not hide them
    add_feedback_api(app, studio, models_dir, finetune_limits, operator_token)
    if face_restorer == "auto":
        face_restorer = find_restorer()
    add_a1111_api(app, studio, models_dir, operator_token, face_restorer)
    app.state.ui = build_ui(studio, face_restorer)
    gr.mount_gradio_app(app, app.state.ui, path="/", ssr_mode=False, show_error=True, mcp_server=False,
                        run_history=False, footer_links=["api", "settings"])
    app.state.gradio_app = app.routes[-1].app  # the mounted Gradio app (Server.close ends its streams)
    return app
