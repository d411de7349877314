"""The REST API: POST /text2img, /img2img, /inpainting; GET /models, /schedulers, /health.
(With a feedback store, also /feedback, /gallery and /finetune: see `sdlab.app.feedback`.)

Fields have sdlab's names, which are diffusers' names; the FastAPI service this course grew
out of used others, and they are accepted too: `cfg_scale` (guidance_scale), `steps`
(num_inference_steps), `number_of_images` (num_images_per_prompt), `mask` (mask_image).
Images travel as base64 PNG, and every PNG the API returns carries its parameters (the
AUTOMATIC1111 "parameters" text that `sdlab.save_png` writes).

Values are checked by `generate()` itself; its teaching message comes back as HTTP 422
`{"detail": "..."}`. Only what generate() cannot see is checked here: the JSON (types,
unknown fields), the base64 images, and which model this server has loaded.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from .. import __version__
from ..errors import SdlabInputError, check
from ..generation import MAX_PROMPT_CHARS, GenerationParams
from ..metadata import format_parameters, png_bytes
from ..presets import PRESETS, find_version, named_versions
from ..schedulers import ALIASES, scheduler_name, scheduler_names, schedulers_for
from ..seeds import MAX_SIZE
from .batcher import BusyError, ClientGone
from .feedback import BODIES
from .studio import Studio

MAX_IMAGE_BYTES = 16 * 2**20  # one uploaded image, after base64 decoding
MAX_BODY_BYTES = 48 * 2**20  # a whole generation request's body (an image and a mask, base64)
MAX_SMALL_BODY_BYTES = 64 * 2**10  # the body of a request that carries no image (/feedback, /finetune)
EXAMPLE_PROMPT = "a small red circle on a blue background"


# ---- request and response bodies ---------------------------------------------------------

def aliases_in_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """List each field's other names in the published schema too, so that clients built from it may
    send them (the schema forbids what it does not list)."""
    for name, info in model.model_fields.items():
        for alias in getattr(info.validation_alias, "choices", [])[1:]:
            schema["properties"][alias] = schema["properties"][name] | {"title": alias,
                                                                        "description": f"another name for {name}"}


class _Request(BaseModel):
    """The fields every generation endpoint takes (None: the model's default)."""

    # strict: "20" or true is not a number
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=aliases_in_schema)
    example: ClassVar[str] = '{"prompt": "' + EXAMPLE_PROMPT + '", "seed": 42}'  # shown in error messages
    hints: ClassVar[dict[str, str]] = {}  # field: what to send, where a type error needs more than its type

    prompt: str = Field(description=f"what to draw, at most {MAX_PROMPT_CHARS} characters (CLIP reads the first "
                                    f"77 tokens)", examples=[EXAMPLE_PROMPT],
                        json_schema_extra={"maxLength": MAX_PROMPT_CHARS})  # checked by generate(): one rule
    negative_prompt: str | None = Field("", description=f"what to steer away from, at most {MAX_PROMPT_CHARS} "
                                                   f"characters (null: none)",
                                 json_schema_extra={"maxLength": MAX_PROMPT_CHARS})
    seed: int | None = Field(None, description="seed of the first image; image k gets seed + k. "
                                               "null or -1: a random seed (echoed in the response)")
    num_inference_steps: int | None = Field(None, validation_alias=AliasChoices("num_inference_steps", "steps"),
                                            description="denoising steps, 1–500 (alias: steps)")
    guidance_scale: float | None = Field(None, validation_alias=AliasChoices("guidance_scale", "cfg_scale"),
                                         description="classifier-free guidance, 0–50 (alias: cfg_scale)")
    num_images_per_prompt: int | None = Field(
        1, validation_alias=AliasChoices("num_images_per_prompt", "number_of_images"),
        description="how many images, 1–64 (alias: number_of_images)")
    width: int | None = Field(None, description="pixels, a multiple of 8")
    height: int | None = Field(None, description="pixels, a multiple of 8")
    scheduler: str | None = Field(None, description="a name from GET /schedulers, e.g. 'DPM++ 2M' or 'K_EULER'")
    model: str | None = Field(None, description="must be the model this server loaded (GET /models); may be left out")


class Text2ImgRequest(_Request):
    variation_seed: int | None = Field(None, description="mix each image's noise with this seed's noise")
    variation_strength: float | None = Field(0.0, description="0: the seed's image, 1: the variation seed's image")


class Img2ImgRequest(_Request):
    image: str = Field(description="the start image: base64 PNG or JPEG (a data: URL works too)")
    strength: float | None = Field(0.8, description="how much to change the image, (0, 1]")


class InpaintingRequest(Img2ImgRequest):
    mask_image: str = Field(validation_alias=AliasChoices("mask_image", "mask"),
                            description="base64 mask the size of image: white = repaint, black = keep (alias: mask)")


class GenerationResponse(BaseModel):
    """One list entry per image, in the same order in every list: `images` holds base64 PNGs, as the
    FastAPI image service this course grew from returned them (its clients decode
    `response.json()["images"]` directly); the lists beside it say what made each image."""
    images: list[str] = Field(description="base64 PNGs; each PNG's 'parameters' text chunk holds its parameters")
    image_ids: list[int | None] = Field(description="each image in the server's feedback store: rate it with "
                                                    "POST /feedback (null: the server keeps no store)")
    seeds: list[int | None] = Field(description="each image's seed")
    parameters: list[GenerationParams] = Field(description="everything that made each image")
    infotexts: list[str] = Field(description="each image's parameters as AUTOMATIC1111 writes them")
    seconds: float = Field(description="generation time of the pipeline calls that made the images (waiting in "
                                       "line not counted)")
    call_sizes: list[int] = Field(default_factory=list, description="how many images the pipeline call that made "
                                  "each image made in all: requests that arrive together share one call")
    model: str
    warnings: list[str] = Field(default_factory=list, description="e.g. the part of a too-long prompt that was cut")


def per_image(answer: dict) -> list[dict]:
    """For a client: a generation response's lists as one dict per image, with the keys "image",
    "image_id", "seed", "parameters" and "infotext"."""
    keys = ("image", "image_id", "seed", "parameters", "infotext")
    return [dict(zip(keys, row, strict=True))
            for row in zip(answer["images"], answer["image_ids"], answer["seeds"], answer["parameters"],
                           answer["infotexts"], strict=True)]


REQUESTS = {"/text2img": Text2ImgRequest, "/img2img": Img2ImgRequest, "/inpainting": InpaintingRequest}
#: AUTOMATIC1111's routes (`sdlab.app.a1111`), for the body limits set here
A1111_IMAGE_ROUTES = ["/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/png-info", "/sdapi/v1/extra-single-image"]
A1111_SMALL_ROUTES = ["/sdapi/v1/options"]


# ---- images in and out --------------------------------------------------------------------

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")  # what PIL may open from a request: no other decoder sees its bytes


def decode_image(data: str, field: str) -> Image.Image:
    """A PIL image from base64 text, or a SdlabInputError that says what is wrong with it."""
    data = "".join(data.split())
    if data.startswith("data:"):
        data = data.partition(",")[2]
    check(data != "", f"{field} is empty; send an image file's bytes, base64-encoded")
    check(len(data) * 3 // 4 <= MAX_IMAGE_BYTES,
          f"{field} is {len(data) * 3 / 4 / 2**20:.1f} MB; the limit is {MAX_IMAGE_BYTES // 2**20} MB: "
          f"send a smaller image (PNG or JPEG, at most {MAX_SIZE}×{MAX_SIZE} pixels)")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise SdlabInputError(f"{field} is not valid base64 ({err}); encode the file's bytes, e.g. "
                              f"base64.b64encode(open('in.png', 'rb').read()).decode()") from None
    try:
        image = Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as err:
        raise SdlabInputError(f"{field} has too many pixels ({err}); the limit is {MAX_SIZE}×{MAX_SIZE}: resize "
                              f"it first, e.g. image.thumbnail((512, 512))") from None
    except (UnidentifiedImageError, OSError, ValueError):  # ValueError: e.g. a text chunk too big to inflate
        raise SdlabInputError(f"{field} is base64 but not a PNG, JPEG or WebP file ({len(raw)} bytes starting "
                              f"{raw[:8]!r}); send one of those") from None
    check(image.width <= MAX_SIZE and image.height <= MAX_SIZE,
          f"{field} is {image.width}×{image.height} pixels; the limit is {MAX_SIZE}×{MAX_SIZE}: "
          f"resize it first, e.g. image.thumbnail((512, 512))")
    try:
        image.load()
    except (OSError, ValueError) as err:
        raise SdlabInputError(f"{field} is a damaged or truncated image file ({err}); save it again") from None
    return image


def encode_png(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


# ---- the endpoints ------------------------------------------------------------------------

def _check_model(studio: Studio, requested: str | None) -> None:
    if requested is None or requested == studio.model:
        return
    if requested in PRESETS or find_version(requested) is not None:
        raise SdlabInputError(f"model {requested!r} is not loaded on this server, which serves {studio.model!r}; "
                              f"leave model out, or start a server with `sdlab serve --model {requested}` (or "
                              f"switch this one for everyone: POST /sdapi/v1/options)")
    raise SdlabInputError(f"model {requested!r} is unknown here; this server serves {studio.model!r} "
                          f"(GET /models lists the presets and fine-tuned versions)")


T = TypeVar("T")


async def while_connected(request: Request, work: Callable[[Callable[[], bool]], T]) -> T:
    """Run `work(gone)` in a worker thread; `gone()` turns true as soon as the client disconnects,
    so that its place in line, or its generation (between two steps), is given up."""
    gone = threading.Event()

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.1)
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        return await run_in_threadpool(work, gone.is_set)
    finally:
        watcher.cancel()


def _route(path: str) -> str:
    """A path without its trailing slash ("/" stays "/"): the routes answer both spellings."""
    return path.rstrip("/") or "/"


def _from_query(request: Request, model: type[BaseModel]) -> BaseModel:
    """A request body made from query parameters: their text is read as the fields' types ("42" → 42;
    "abc" for a number is a 422 that names the parameter). An empty value (a cleared form field) is
    left out; a parameter given twice is refused."""
    twice = sorted({key for key in request.query_params if len(request.query_params.getlist(key)) > 1})
    check(not twice, f"{', '.join(twice)} given more than once in the query: give each parameter once")
    fields = {key: value for key, value in request.query_params.items() if value != ""}
    try:
        return model.model_validate(fields, strict=False)
    except ValidationError as err:
        raise RequestValidationError([e | {"loc": ("query", *e["loc"])} for e in err.errors()]) from None


def _query_parameters(model: type[BaseModel]) -> dict:
    """The published schema's query parameters for a GET that takes `model`'s fields."""
    schema = model.model_json_schema()
    return {"parameters": [{"name": name, "in": "query", "required": name in schema.get("required", ()),
                            "schema": {k: v for k, v in field.items() if k != "description"},
                            "description": field.get("description", "")}
                           for name, field in schema["properties"].items()]}


def client_of(request: Request) -> str:
    """Who asked, for the line's fairness: the client's address."""
    return request.client.host if request.client else ""


def _run(studio: Studio, request: _Request, gone: Callable[[], bool] = lambda: False, client: str = "",
         **images) -> GenerationResponse:
    _check_model(studio, request.model)
    fields = request.model_dump(exclude={"model", "image", "mask_image"})
    if fields["seed"] == -1:  # AUTOMATIC1111's "random"
        fields["seed"] = None
    fields = {key: value for key, value in fields.items() if value is not None or key == "prompt"}  # null: default
    result, warnings = studio.generate(fields.pop("prompt"), client=client, gone=gone, **fields, **images)
    image_ids = studio.record(result)
    return GenerationResponse(images=[encode_png(png_bytes(item)) for item in result], image_ids=image_ids,
                              seeds=[item.params.seed for item in result], parameters=[item.params for item in result],
                              infotexts=[format_parameters(item.params) for item in result], seconds=result.seconds,
                              call_sizes=result.call_sizes, model=studio.model, warnings=warnings)


def add_api(app: FastAPI, studio: Studio, models_dir: str | Path | None = None) -> FastAPI:
    """Add the REST endpoints and their error handling to `app`; GET /models lists the fine-tuned
    versions in `models_dir` and in the models folders (`sdlab.presets.named_versions`)."""

    def served(request: Request, body: _Request, **images):
        return while_connected(request, lambda gone: _run(studio, body, gone, client_of(request), **images))

    @app.post("/text2img", response_model=GenerationResponse, tags=["generate"])
    async def text2img(body: Text2ImgRequest, request: Request) -> GenerationResponse:
        """Text to image: one prompt, one or more images (seeds seed, seed+1, …)."""
        return await served(request, body)

    @app.post("/img2img", response_model=GenerationResponse, tags=["generate"])
    async def img2img(body: Img2ImgRequest, request: Request) -> GenerationResponse:
        """Image to image: redraw a start image; strength says how much it may change."""
        image = await run_in_threadpool(decode_image, body.image, "image")
        return await served(request, body, image=image)

    @app.post("/inpainting", response_model=GenerationResponse, tags=["generate"])
    async def inpainting(body: InpaintingRequest, request: Request) -> GenerationResponse:
        """Inpainting: repaint the white part of a mask, keep the rest of the image."""
        image = await run_in_threadpool(decode_image, body.image, "image")
        mask = await run_in_threadpool(decode_image, body.mask_image, "mask_image")
        return await served(request, body, image=image, mask_image=mask)

    @app.get("/text2img", tags=["generate"], response_class=Response, openapi_extra=_query_parameters(Text2ImgRequest),
             responses={200: {"content": {"image/png": {}}, "description": "the image, its parameters in the PNG"}})
    async def text2img_png(request: Request) -> Response:
        """Text to image as a PNG body, from query parameters (the names of POST /text2img), so that
        `<img src="/text2img?prompt=a+red+circle&seed=42">` shows it. One image per request."""
        body = _from_query(request, Text2ImgRequest)
        check(body.num_images_per_prompt in (None, 1), "a GET answers with one PNG: ask for one image (leave out "
                                                       "number_of_images), or POST /text2img for several")
        answer = await served(request, body)
        seed = answer.seeds[0]
        # the same URL makes the same image only with its seed and its model named (the model may be switched)
        fixed = request.query_params.get("seed") not in (None, "", "-1") and request.query_params.get("model")
        cache = "public, max-age=86400" if fixed else "no-store"
        return Response(base64.b64decode(answer.images[0]), media_type="image/png", headers={
            "Content-Disposition": f'inline; filename="{seed}.png"', "Cache-Control": cache, "X-Seed": str(seed)})

    # the GET's other addresses: with a trailing slash, and the generate paths image front ends call
    for path in ("/text2img/", "/generate", "/generate/", "/api/generate", "/api/generate/"):
        app.add_api_route(path, text2img_png, methods=["GET"], response_class=Response, include_in_schema=False)

    for path, endpoint in (("/text2img", text2img), ("/img2img", img2img), ("/inpainting", inpainting)):
        # the paths the FastAPI service this course grew out of documented, with their trailing slash
        app.add_api_route(path + "/", endpoint, methods=["POST"], response_model=GenerationResponse,
                          include_in_schema=False)

    @app.get("/models", tags=["about"])
    def models() -> dict[str, Any]:
        """The model presets and the fine-tuned versions, and which one this server has loaded (it serves
        that one; POST /sdapi/v1/options {"sd_model_checkpoint": name} switches it for everyone)."""
        listed = [{"name": p.name, "description": p.description, "size": p.size,
                   "num_inference_steps": p.num_inference_steps, "guidance_scale": p.guidance_scale,
                   "loaded": p.name == studio.model} for p in PRESETS.values()]
        for label, version in named_versions(models_dir).items():
            info = version.info
            listed.append({"name": label, "description": f"fine-tuned ({info.get('method')}) from "
                           f"{info.get('base_model')} on {info.get('examples')} image(s)", "version": version.number,
                           "base_model": info.get("base_model"), "created_at": info.get("created_at"),
                           "loaded": label == studio.model})
        if not any(entry["loaded"] for entry in listed):
            listed.append({"name": studio.model, "description": "a local folder or hub id", "loaded": True})
        return {"loaded": studio.model, "models": listed}

    @app.get("/schedulers", tags=["about"])
    async def schedulers() -> dict[str, Any]:
        """Scheduler names for the `scheduler` field (those that run the loaded model at 1 to 50 steps),
        every name sdlab knows, the other names accepted, and the default."""
        return {"schedulers": schedulers_for(studio.pipe.scheduler.config), "all": scheduler_names(),
                "aliases": ALIASES, "default": scheduler_name(studio.pipe.scheduler)}

    @app.get("/health", tags=["about"])
    async def health() -> dict[str, Any]:
        """Whether the server is up, what it serves, how many requests are in line, and how many
        pipeline calls made how many images (requests that arrive together share a call)."""
        batcher = studio.batcher
        return {"status": "ok", "model": studio.model, "device": str(studio.pipe.device),
                "queue": {"in_line": studio.in_line, "max": studio.max_queue},
                "batching": {"calls": batcher.calls, "images": batcher.images, "max_batch": batcher.max_batch,
                             "window_ms": round(batcher.window * 1000, 1)}, "sdlab": __version__}

    _add_error_handlers(app)
    return app


# ---- errors: say which field is wrong and how to fix it -----------------------------------

def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SdlabInputError)
    async def bad_value(request: Request, err: SdlabInputError):
        return JSONResponse(status_code=422, content={"detail": str(err)})

    @app.exception_handler(ClientGone)
    async def gone(request: Request, err: ClientGone):  # nobody reads it: nginx's "client closed request"
        return JSONResponse(status_code=499, content={"detail": str(err)})

    @app.exception_handler(BusyError)
    async def busy(request: Request, err: BusyError):
        return JSONResponse(status_code=503, content={"detail": str(err)}, headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, err: RequestValidationError):
        model = (REQUESTS | BODIES).get(_route(request.url.path))
        by_field = {}  # one message per field (a field of two types, e.g. 5 or "up", fails as both)
        for e in err.errors():
            by_field.setdefault(_field(e), {"field": _field(e) or None, "message": _explain(e, model)})
        errors = list(by_field.values())
        return JSONResponse(status_code=422, content={"detail": "; ".join(e["message"] for e in errors),
                                                      "errors": errors})

    limits = {path: MAX_BODY_BYTES for path in list(REQUESTS) + A1111_IMAGE_ROUTES} | {
        path: MAX_SMALL_BODY_BYTES for path in list(BODIES) + A1111_SMALL_ROUTES}
    app.add_middleware(BodyLimit, limits=limits)


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.0f} MB" if size >= 2**20 else f"{size / 2**10:.0f} KB"


class BodyLimit:
    """Answer 413 to a request to one of `limits`' paths whose body is larger than its limit: before
    reading it where its size is announced, else as soon as what was read passes the limit (a
    chunked upload)."""

    def __init__(self, app, limits: dict[str, int]):
        self.app, self.limits = app, limits

    @staticmethod
    def _too_large(path: str, size: int | None, limit: int) -> str:
        told = f"is {_megabytes(size)}" if size else "is more than that"  # None: still coming when refused
        fix = (f"send smaller images (at most {MAX_SIZE}×{MAX_SIZE} pixels)" if path in REQUESTS
               else "send only the fields of this endpoint")
        return f"the request body {told}; the limit for {path} is {_megabytes(limit)}: {fix}"

    async def __call__(self, scope, receive, send):
        path = _route(scope.get("path", ""))  # "/img2img/" is /img2img: the same limit
        limit = self.limits.get(path) if scope["type"] == "http" else None
        if limit is None:
            return await self.app(scope, receive, send)
        size = dict(scope["headers"]).get(b"content-length", b"")
        if size.isdigit() and int(size) > limit:
            return await JSONResponse(status_code=413, content={"detail": self._too_large(path, int(size), limit)})(
                scope, receive, send)
        read = 0

        async def counted_receive():
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            if read > limit:  # FastAPI answers it while reading the body, as any HTTPException
                raise HTTPException(413, self._too_large(path, None, limit))
            return message

        await self.app(scope, counted_receive, send)


_TYPE_HINTS = {"int": "a whole number, e.g. 20", "float": "a number, e.g. 7.5", "string": "text in quotes",
               "bool": "true or false"}


def _field_names(model) -> str:
    names = []
    for name, info in model.model_fields.items():
        aliases = [a for a in getattr(info.validation_alias, "choices", []) if a != name]
        names.append(name + (f" (or {', '.join(aliases)})" if aliases else ""))
    return ", ".join(names)


def _field(error: dict) -> str:
    """The body field or query parameter an error is about ('' for the whole body)."""
    return str(error["loc"][1]) if len(error["loc"]) > 1 else ""


def _explain(error: dict, model) -> str:
    """A pydantic error as a sentence that names the field and the fix."""
    kind, field = error["type"], _field(error)
    example = model.example if model else _Request.example
    if kind == "json_invalid":
        return (f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')}); send a JSON "
                f"object with Content-Type: application/json, e.g. {example}")
    if not field:
        if kind == "missing":
            return f"the request body is empty; send a JSON object, e.g. {example}"
        if isinstance(error.get("input"), bytes):  # FastAPI reads a body as JSON only when its header says so
            return (f"the body was not read as JSON: send it with the header Content-Type: application/json "
                    f"(requests: json=..., curl: -H 'Content-Type: application/json'), e.g. {example}")
        return f"the body must be a JSON object, got {type(error.get('input')).__name__}; e.g. {example}"
    if kind == "missing":
        return f"{field} is required; " + ("send the image as base64 PNG" if field in ("image", "mask_image")
                                            else "e.g. " + example)
    if kind == "extra_forbidden":
        known = _field_names(model) if model else ""
        for name, info in (model.model_fields.items() if model else []):
            if field in getattr(info.validation_alias, "choices", []):
                return f"{field} is another name for {name}, which is also given; send only one of them"
        return f"{field} is not a field of this endpoint; the fields are: {known}"
    hint = (model.hints if model else {}).get(field) or next(
        (text for key, text in _TYPE_HINTS.items() if kind.startswith(key)), None)
    got = repr(error.get("input"))
    got = got if len(got) <= 80 else f"{got[:60]}… ({len(got)} characters)"
    return f"{field}: {error['msg'].lower()}, got {got}" + (f"; send {hint}" if hint else "")
