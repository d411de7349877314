"""Feedback in the app (notebook 08's `sdlab.feedback` and `sdlab.finetune`), when it has a store.

With `create_app(pipe, feedback_dir="feedback")` (what `sdlab serve` does) every image the app
makes is kept in a `FeedbackStore` with its parameters, and each image in a response carries
its `image_id`. Then the REST API also serves:

    POST /feedback            {"image_id": 12, "rating": 5, "comment": "just the blue I wanted"}
    GET  /gallery?q=circle&min_rating=4    stored images, their ratings, and a URL for each PNG
    GET  /gallery/12.png      a stored image (a PNG that keeps its parameters)
    POST /finetune            {"steps": 200}: fine-tune on the liked images, in the background
    GET  /finetune/{job_id}   queued, running (step, loss), done (the new version) or failed (why)
    DELETE /finetune/{job_id} cancel it

Fine-tuning is the operator's: `FinetuneLimits` bounds its steps and time and keeps the newest
few versions, and where the server is reachable from other machines POST and DELETE /finetune
need the operator's token (`Authorization: Bearer <token>`), which `sdlab serve` prints.

and the UI gets a rating row under the images and a Gallery tab that searches the store.
"""
from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gradio as gr
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from ..errors import SdlabInputError, check, is_number, is_whole
from ..feedback import LIKED, MAX_COMMENT_CHARS, MAX_USER_CHARS, FeedbackStore, StoredImage, check_feedback
from ..finetune import FinetuneConfig, FinetuneJob, start_finetune, stored_examples
from .studio import Studio, as_gradio_error

MAX_GALLERY = 200  # images per /gallery page
MAX_UI_GALLERY = 60  # images the Gallery tab shows


# ---- request bodies -----------------------------------------------------------------------

class FeedbackRequest(BaseModel):
    """One rating of one image the app made."""

    model_config = ConfigDict(extra="forbid", strict=True)
    example: ClassVar[str] = '{"image_id": 1, "rating": 5, "comment": "just the blue I wanted"}'
    hints: ClassVar[dict[str, str]] = {
        "image_id": "the whole number image_id that /text2img returned, e.g. 1",
        "rating": "a whole number from 1 (bad) to 5 (great), e.g. 5, or 'up' / 'down'"}

    image_id: StrictInt = Field(description="the image_id that /text2img, /img2img or /inpainting returned",
                                examples=[1])
    rating: StrictInt | StrictStr = Field(description="1 (bad) to 5 (great); or 'up' (5) / 'down' (1)",
                                          examples=[5])
    comment: str = Field("", description=f"what you liked or not, at most {MAX_COMMENT_CHARS} characters",
                         json_schema_extra={"maxLength": MAX_COMMENT_CHARS})
    user: str = Field("", description=f"who rates (optional, at most {MAX_USER_CHARS} characters)",
                      json_schema_extra={"maxLength": MAX_USER_CHARS})


class FinetuneRequest(BaseModel):
    """How to fine-tune on the liked images (the fields of `sdlab.finetune.FinetuneConfig`)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    example: ClassVar[str] = '{"steps": 200, "method": "lora"}'
    hints: ClassVar[dict[str, str]] = {}

    steps: StrictInt = Field(FinetuneConfig.steps, description="training steps, 1 to the server's max_steps "
                                                             "(GET /finetune/limits; sdlab-tiny: 100–200)")
    method: str = Field(FinetuneConfig.method, description="'lora' (small adapters) or 'full' (every UNet weight)")
    min_rating: float = Field(LIKED, description="train on the images with at least this mean rating, 1–5")
    learning_rate: float | None = Field(None, gt=0, description="null: 1e-3 for LoRA, 1e-4 for full")


BODIES = {"/feedback": FeedbackRequest, "/finetune": FinetuneRequest}


@dataclass(frozen=True)
class FinetuneLimits:
    """What one fine-tune on the server may take: steps, minutes (it stops there), and how many
    versions of the model are kept (the oldest are deleted)."""

    max_steps: int = 1000
    max_minutes: float = 30.0
    keep_versions: int = 5

    def checked(self) -> "FinetuneLimits":
        check(is_whole(self.max_steps) and self.max_steps >= 1, f"max_steps must be a whole number ≥ 1, got "
                                                                f"{self.max_steps!r}")
        check(is_number(self.max_minutes) and self.max_minutes > 0, f"max_minutes must be a number above 0, got "
                                                                    f"{self.max_minutes!r}")
        check(is_whole(self.keep_versions) and self.keep_versions >= 1,
              f"keep_versions must be a whole number ≥ 1, got {self.keep_versions!r}")
        return self


FINETUNE_LIMITS = FinetuneLimits()


def operator_check(token: str | None):
    """A FastAPI dependency: with a token, the request must carry `Authorization: Bearer <token>`."""
    def check_token(authorization: str | None = Header(None, include_in_schema=False)) -> None:
        if token is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401 if not authorization else 403,
                                "this changes the server, so it needs the operator's token: send the header "
                                "Authorization: Bearer <token> (`sdlab serve` prints the token when it starts)",
                                headers={"WWW-Authenticate": "Bearer"})
    return check_token


# ---- the REST endpoints -------------------------------------------------------------------

def find_image(store: FeedbackStore, image_id: int) -> StoredImage:
    """The stored image, or HTTP 404 that says where the ids come from."""
    try:
        return store.get(image_id)
    except SdlabInputError:
        raise HTTPException(404, f"no image with image_id {image_id} on this server; use an image_id that "
                                 f"/text2img, /img2img or /inpainting returned (GET /gallery lists them)") from None


def listed(store: FeedbackStore, item: StoredImage) -> dict[str, Any]:
    """A stored image as /gallery lists it: parameters, ratings (each, and their mean) and its URL."""
    entry = {key: value for key, value in item.to_dict().items() if key != "file"}
    entry["feedback"] = [{"rating": f.rating, "comment": f.comment, "user": f.user, "created_at": f.created_at}
                         for f in store.feedback(item.id)]
    entry["url"] = f"/gallery/{item.id}.png"
    return entry


def add_feedback_api(app: FastAPI, studio: Studio, models_dir: str | Path | None,
                     limits: FinetuneLimits = FINETUNE_LIMITS, operator_token: str | None = None) -> FastAPI:
    """Add /feedback, /gallery and /finetune to `app`, over `studio.store`; new versions go to models_dir.
    Without a store they answer 404 with how to start a server that has one. `operator_token`: what
    POST and DELETE /finetune need (None: nothing)."""
    store = studio.store
    limits = limits.checked()
    operator = [Depends(operator_check(operator_token))]
    if store is None:
        return _answer_without_a_store(app)
    jobs: dict[str, FinetuneJob] = {}
    starting = threading.Lock()

    @app.post("/feedback", tags=["feedback"])
    def feedback(request: FeedbackRequest) -> dict[str, Any]:
        """Rate an image this server made: 1–5 (or 'up' / 'down'), with an optional comment."""
        image_id, rating, comment, user = check_feedback(request.image_id, request.rating, request.comment,
                                                         request.user)
        find_image(store, image_id)
        feedback_id = store.add_feedback(image_id, rating, comment, user)
        item = store.get(image_id)
        return {"feedback_id": feedback_id, "image_id": image_id, "rating": rating,
                "mean_rating": item.mean_rating, "ratings": item.ratings}

    @app.get("/gallery", tags=["feedback"])
    def gallery(q: str | None = Query(None, description="words of the prompt, e.g. 'red circle' (all must appear)"),
                min_rating: float | None = Query(None, description="mean rating at least this, 1–5"),
                model: str | None = Query(None, description="only images of this model"),
                since: str | None = Query(None, description="made from this time on, e.g. 2026-11-25"),
                until: str | None = Query(None, description="made before this time"),
                order: str = Query("newest", description="newest, oldest or rating"),
                limit: int = Query(50, ge=1, le=MAX_GALLERY), offset: int = Query(0, ge=0)) -> dict[str, Any]:
        """The stored images whose prompt has the words of q, with their ratings and image URLs."""
        items = store.search(q, min_rating=min_rating, model=model, since=since, until=until, order=order,
                             limit=limit, offset=offset)
        return {"images": [listed(store, item) for item in items]}

    @app.get("/gallery/{image_id}.png", tags=["feedback"], response_class=FileResponse)
    def gallery_image(image_id: int) -> FileResponse:
        """A stored image: the PNG the app made, its parameters inside."""
        return FileResponse(find_image(store, image_id).path, media_type="image/png")

    @app.get("/finetune/limits", tags=["feedback"])
    def finetune_limits() -> dict[str, Any]:
        """What one fine-tune may take here, how many versions are kept, and whether it needs the token."""
        return {"max_steps": limits.max_steps, "max_minutes": limits.max_minutes,
                "keep_versions": limits.keep_versions, "needs_token": operator_token is not None}

    @app.post("/finetune", tags=["feedback"], status_code=202, dependencies=operator)
    def finetune(request: FinetuneRequest) -> dict[str, Any]:
        """Fine-tune this server's model on its liked images, in the background: poll GET /finetune/{job_id}.

        The new model is saved as a new version; the model this server serves does not change."""
        check(request.steps <= limits.max_steps, f"steps is {request.steps}; this server allows at most "
                                                 f"{limits.max_steps} per fine-tune (sdlab-tiny learns in 100–200)")
        config = FinetuneConfig(method=request.method, steps=request.steps, min_rating=request.min_rating,
                                learning_rate=request.learning_rate).checked()
        with starting:
            running = [job for job in jobs.values() if job.running]
            if running:
                raise HTTPException(409, f"a fine-tune is already running here (job {running[0].id}); wait until "
                                         f"GET /finetune/{running[0].id} says done or failed, then start the next")
            liked = store.liked(config.min_rating, model=studio.model)
            if not liked:
                raise HTTPException(409, f"no image made with {studio.model} has a mean rating of "
                                         f"{config.min_rating:g} or more yet, so there is nothing to fine-tune on; "
                                         f"rate some with POST /feedback {FeedbackRequest.example}, or lower "
                                         f"min_rating")
            examples = stored_examples(liked)
            job = start_finetune(studio.pipe, examples, config, models_dir=models_dir,
                                 max_seconds=limits.max_minutes * 60, keep_versions=limits.keep_versions)
            jobs[job.id] = job
        return job.status().to_dict()

    @app.get("/finetune/{job_id}", tags=["feedback"])
    def finetune_status(job_id: str) -> dict[str, Any]:
        """Where a fine-tune is: queued, running (step, loss), done (the new version) or failed (the reason)."""
        return finetune_status_of(job_id).status().to_dict()

    @app.delete("/finetune/{job_id}", tags=["feedback"], dependencies=operator)
    def finetune_cancel(job_id: str) -> dict[str, Any]:
        """Cancel a fine-tune: it stops at its next step and ends "failed" (cancelled); no version is saved."""
        job = finetune_status_of(job_id)
        job.cancel("cancelled by DELETE /finetune/" + job_id)
        return job.status().to_dict()

    def finetune_status_of(job_id: str) -> FinetuneJob:
        if job_id not in jobs:
            raise HTTPException(404, f"no fine-tune job {job_id!r} on this server; POST /finetune starts one and "
                                     f"answers with its job_id")
        return jobs[job_id]

    return app


def _answer_without_a_store(app: FastAPI) -> FastAPI:
    """The same paths, not in the docs, answering 404 with how to start a server that keeps feedback."""
    def no_store(request: Request):
        raise HTTPException(404, f"this server keeps no feedback store, so {request.url.path} is not served; "
                                 f"start one that does: `sdlab serve` (it keeps ./feedback), or in Python "
                                 f"sdlab.app.launch(pipe, feedback_dir=\"feedback\")")

    for path in ("/feedback", "/gallery", "/gallery/{name}", "/finetune", "/finetune/{job_id}"):
        app.add_api_route(path, no_store, methods=["GET", "POST", "DELETE"], include_in_schema=False)
    return app


# ---- the UI's functions -------------------------------------------------------------------

def rate_image(studio: Studio, made: list[dict], index: int | None, rating, comment: str | None = "") -> str:
    """Rate the selected image of the gallery (`made[index]`) 1–5, with a comment; the line to show."""
    check(studio.store is not None, "this server keeps no feedback store; start it with one "
                                    "(`sdlab serve` keeps one in ./feedback)")
    check(bool(made), "generate an image first, then click it and rate it")
    check(rating is not None, "pick a rating from 1 (bad) to 5 (great) first")
    image_id = made[min(index or 0, len(made) - 1)].get("image_id")
    check(image_id is not None, "this image was not kept in the feedback store, so it cannot be rated")
    studio.store.add_feedback(image_id, int(rating), comment or "")
    item = studio.store.get(image_id)
    return (f"Image #{image_id} rated {int(rating)}; its mean rating is now {item.mean_rating:.1f} "
            f"from {item.ratings} rating(s).")


def gallery_caption(item: StoredImage) -> str:
    """'#12 · 4.5/5 from 2 ratings · a red circle …' under a stored image."""
    rated = f"{item.mean_rating:.1f}/5 from {item.ratings} rating(s)" if item.ratings else "unrated"
    return f"#{item.id} · {rated} · {item.prompt}"


def search_gallery(studio: Studio, q: str | None = None, min_rating: float | None = None,
                   limit: int = MAX_UI_GALLERY) -> list[tuple[Image.Image, str]]:
    """The stored images whose prompt has the words of `q` (all: empty), newest first, with a mean
    rating of at least `min_rating` (0 or None: rated or not); each with its caption."""
    check(studio.store is not None, "this server keeps no feedback store, so it has no gallery")
    items = studio.store.search(q or None, min_rating=min_rating or None, limit=limit)
    return [(item.image, gallery_caption(item)) for item in items]


# ---- wiring to widgets --------------------------------------------------------------------

def add_rating_row(studio: Studio, made: gr.State, selected: gr.State) -> None:
    """Under the gallery: a 1–5 rating and a comment for the selected image, and a Send button."""
    with gr.Row():
        rating = gr.Radio([1, 2, 3, 4, 5], label="Rate the selected image: 1 (bad) … 5 (great)", elem_id="rating",
                          scale=2)
        comment = gr.Textbox(label="Comment (optional)", max_length=MAX_COMMENT_CHARS, elem_id="comment", scale=2)
        send = gr.Button("Send rating", elem_id="send-rating", scale=0, min_width=100)
    rated = gr.Markdown(elem_id="rated")

    def on_rate(made, selected, rating, comment):
        with as_gradio_error():
            return rate_image(studio, made, selected, rating, comment), None, ""

    send.click(on_rate, [made, selected, rating, comment], [rated, rating, comment], api_visibility="private")


def add_gallery_tab(studio: Studio, tab: gr.Tab) -> None:
    """The Gallery tab's search: words of the prompt and a minimum rating; opening the tab searches too."""
    if studio.store is None:
        gr.Markdown("This server keeps no feedback store, so there is nothing to show here. `sdlab serve` keeps "
                    "one in `./feedback`; in Python: `sdlab.app.launch(pipe, feedback_dir=\"feedback\")`.")
        return
    with gr.Row():
        query = gr.Textbox(label="Words in the prompt (empty: all)", placeholder="circle", scale=3,
                           elem_id="gallery-query")
        min_rating = gr.Slider(0, 5, 0, step=1, label="Minimum mean rating (0: rated or not)")
        search = gr.Button("Search", variant="primary", scale=0, min_width=100)
    found = gr.Gallery(label="Stored images, newest first", columns=6, type="pil", format="png",
                       elem_id="stored", buttons=["download", "fullscreen"])

    def on_search(q=None, min_rating=None):
        """Search the stored images: words of the prompt, and a minimum mean rating (0: any)."""
        with as_gradio_error():
            return search_gallery(studio, q, min_rating)

    search.click(on_search, [query, min_rating], found, api_name="gallery")
    query.submit(on_search, [query, min_rating], found, api_visibility="private")
    tab.select(on_search, [query, min_rating], found, api_visibility="private")
