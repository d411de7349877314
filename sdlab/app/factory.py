"""`create_app`: the REST API, the feedback routes and the Gradio UI on one FastAPI app."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
from fastapi import FastAPI

from .. import __version__
from ..feedback import FeedbackStore
from .api import add_api
from .face_repair import find_restorer
from .feedback import add_feedback_api
from .studio import Studio
from .ui import build_ui


def create_app(pipe, *, max_queue: int = 16, face_restorer="auto", feedback_dir: str | Path | None = None,
               models_dir: str | Path | None = None) -> FastAPI:
    """The FastAPI app: REST endpoints (docs at /docs) and the Gradio UI mounted at /.

    max_queue: how many requests may be in line for the pipeline (the running one included);
    more get HTTP 503 (REST) or "queue full" (UI).
    face_restorer: a function (image, upscale=, weight=) -> image for the UI's face repair panel
    and the /restore_faces Gradio endpoint; "auto": `sdlab.faces` if it is installed (see
    `sdlab.app.face_repair.FacesRestorer`); None: no face repair.
    feedback_dir: a folder for a `sdlab.feedback.FeedbackStore` (made if missing): every image made is
    kept there and comes back with its image_id, and /feedback, /gallery and /finetune are served
    (see `sdlab.app.feedback`). None: no store, no image ids.
    models_dir: where /finetune saves new model versions (None: the `models` folder in feedback_dir).
    """
    store = FeedbackStore(feedback_dir) if feedback_dir is not None else None
    studio = Studio(pipe, max_queue=max_queue, store=store)
    app = FastAPI(title="sdlab", version=__version__,
                  description="Stable Diffusion over HTTP: text to image, image to image, inpainting. "
                              "The web UI is at /; every image comes back as a PNG that keeps its parameters.")
    app.state.studio = studio
    add_api(app, studio)  # its routes come first, so the UI mounted at / does not hide them
    if store is not None and models_dir is None:
        models_dir = Path(feedback_dir) / "models"
    add_feedback_api(app, studio, models_dir)
    if face_restorer == "auto":
        face_restorer = find_restorer()
    app.state.ui = build_ui(studio, face_restorer)
    gr.mount_gradio_app(app, app.state.ui, path="/", ssr_mode=False, show_error=True, mcp_server=False,
                        run_history=False, footer_links=["api", "settings"])
    app.state.gradio_app = app.routes[-1].app  # the mounted Gradio app (Server.close ends its streams)
    return app
