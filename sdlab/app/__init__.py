"""The web app (notebook 07): a Gradio UI and a REST API on one server, sharing one pipeline.

    server = sdlab.app.launch(pipe)     # in a notebook: shows the UI; server.url, server.close()
    sdlab serve --model sdlab-tiny      # in a terminal: http://127.0.0.1:7860/ and /docs
    app = sdlab.app.create_app(pipe)    # the FastAPI app itself (tests, or your own uvicorn)

What lives where: `factory` (`create_app`: all of it on one FastAPI app), `studio` (the shared
pipeline), `batcher` (its fair line, which merges requests that arrive together into one batched
call), `api` (the REST endpoints),
`ui` (the Gradio Blocks), `server` (running it, opening a share link), `feedback` (notebook 08:
ratings, the gallery and fine-tuning, when the app has a feedback store), `face_repair`.
"""
from __future__ import annotations

import os

# No telemetry or version checks: the app runs offline, in classrooms (set before gradio loads).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from .factory import create_app  # noqa: E402
from .server import Server, launch, serve  # noqa: E402
from .studio import Studio  # noqa: E402

__all__ = ["create_app", "launch", "serve", "Server", "Studio"]
