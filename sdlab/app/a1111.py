"""AUTOMATIC1111's web API (`/sdapi/v1/…`), for the clients that speak it: `webuiapi`, image
editors' plug-ins, chat bots, scripts written for a Stable Diffusion web UI.

    POST /sdapi/v1/txt2img, /img2img     A1111's fields; {"images": [base64 PNG…], "parameters", "info"}
    GET  /sdapi/v1/samplers, /schedulers, /sd-models, /options, /progress, /scripts
    POST /sdapi/v1/options               {"sd_model_checkpoint": "…"} switches the model (operator)
    POST /sdapi/v1/png-info              the parameters a PNG carries
    POST /sdapi/v1/extra-single-image    face repair (GFPGAN's visibility) and Lanczos upscaling
    GET  /sdapi/v1/upscalers             the upscalers extra-single-image takes

The same line, limits and feedback store serve both APIs: an image made here is kept and rated
like any other. A1111's request models carry many fields for features this server does not have
(hires fix, scripts, ControlNet); their defaults are accepted and ignored, and asking for one
of those features is a 422 that says so, rather than an image made without it.
"""
from __future__ import annotations

import html
import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from fastapi import Depends, FastAPI, Request
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..errors import check
from ..metadata import PARAMETERS_KEY, format_parameters, png_bytes, split_parameters
from ..pipelines import load_pipeline
from ..presets import PRESETS, find_preset, named_versions
from ..schedulers import ALIASES, schedulers_for
from .api import client_of, decode_image, encode_png, while_connected
from .feedback import operator_check
from .studio import Studio

PREFIX = "/sdapi/v1"
#: A1111's schedulers (the noise-level spacing of its samplers) that sdlab's samplers can follow.
SCHEDULERS = {"automatic": "Automatic", "karras": "Karras"}
KARRAS = {"DPM++ 2M": "DPM++ 2M Karras", "LMS": "LMS Karras"}


class _A1111Request(BaseModel):
    """The fields of A1111's processing requests that sdlab acts on (others are ignored)."""

    model_config = ConfigDict(extra="ignore")
    example: ClassVar[str] = '{"prompt": "a small red circle on a blue background", "steps": 20}'
    hints: ClassVar[dict[str, str]] = {}

    prompt: str = ""
    negative_prompt: str | None = ""
    seed: int = Field(-1, strict=True, description="-1: random")
    subseed: int = Field(-1, strict=True, description="the variation seed (-1: random)")
    subseed_strength: float = Field(0.0, strict=True, description="0: the seed's image, 1: the subseed's")
    steps: int | None = Field(None, strict=True, description="denoising steps (null: the model's default)")
    cfg_scale: float | None = Field(None, strict=True, description="guidance (null: the model's default)")
    width: int | None = Field(None, strict=True, description="pixels (null or 0: the model's size)")
    height: int | None = Field(None, strict=True, description="pixels (null or 0: the model's size)")
    sampler_name: str | None = Field(None, description="GET /sdapi/v1/samplers (null: the model's)")
    sampler_index: str | None = Field(None, description="an older name for sampler_name")
    scheduler: str | None = Field(None, description="'automatic' or 'karras' (GET /sdapi/v1/schedulers)")
    batch_size: int = Field(1, strict=True, ge=1)
    n_iter: int = Field(1, strict=True, ge=1, description="batches; their seeds follow on")
    send_images: bool = True
    override_settings: dict[str, Any] = Field(default_factory=dict)
    # features this server does not have: accepted when off, a 422 when asked for
    enable_hr: bool = False
    restore_faces: bool | None = False
    tiling: bool | None = False
    script_name: str | None = None
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)


class A1111Txt2Img(_A1111Request):
    pass


class A1111Img2Img(_A1111Request):
    init_images: list[str] = Field(description="the start image, base64 (one)")
    denoising_strength: float = Field(0.75, strict=True, description="how much to change the image, (0, 1]")
    mask: str | None = Field(None, description="base64 mask: white = repaint (inpainting)")
    inpainting_mask_invert: int = Field(0, strict=True, description="1: repaint the black part instead")
    resize_mode: int = Field(0, strict=True, description="0 (just resize) only")


#: The upscalers of extra-single-image: "None" keeps the size (as in A1111), Lanczos resizes.
UPSCALERS = ("None", "Lanczos")


class ExtraSingleImage(BaseModel):
    """A1111's extras on one image: upscale it, repair its faces (GFPGAN's visibility is the blend weight)."""

    model_config = ConfigDict(extra="ignore")
    image: str = Field(description="the picture, base64 (a data: URL works too)")
    resize_mode: int = Field(0, strict=True, description="0 (scale by upscaling_resize) only")
    upscaling_resize: float = Field(2, strict=True, description="how many times bigger, 1 to 4 (with upscaler_1)")
    upscaler_1: str = Field("None", description="'None' (keep the size) or 'Lanczos'")
    gfpgan_visibility: float = Field(0, strict=True, description="0 to 1: how much of the repaired face replaces "
                                                                 "the original (0: no face repair)")
    codeformer_visibility: float = Field(0, strict=True, description="CodeFormer is not offered: 0")
    upscaler_2: str = Field("None", description="a second upscaler is not offered: 'None'")


class PngInfoRequest(BaseModel):
    image: str = Field(description="a PNG, base64 (a data: URL works too)")


def _refuse_missing_features(body: _A1111Request) -> None:
    asked = [name for name, on in (("enable_hr (hires fix)", body.enable_hr), ("restore_faces", body.restore_faces),
                                   ("tiling", body.tiling), ("script_name", body.script_name)) if on]
    asked += [f"alwayson_scripts[{name!r}]" for name, script in body.alwayson_scripts.items()
              if isinstance(script, dict) and script.get("args") not in (None, [], [False])]
    check(not asked, f"{', '.join(asked)}: this server does not have that; leave it out (face repair is the "
                     f"web UI's panel and sdlab.faces)")


def _sampler(body: _A1111Request) -> str | None:
    name = body.sampler_name or body.sampler_index
    scheduler = (body.scheduler or "automatic").lower()
    check(scheduler in SCHEDULERS, f"scheduler {body.scheduler!r} is not offered here; use one of "
                                   f"{sorted(SCHEDULERS)} (GET /sdapi/v1/schedulers)")
    if scheduler == "karras" and name is not None:
        check(name in KARRAS or name.endswith("Karras"), f"sampler {name!r} has no Karras version here; use "
                                                         f"{sorted(KARRAS)} with scheduler 'karras'")
        name = KARRAS.get(name, name)
    return name


def _generation_fields(studio: Studio, body: _A1111Request) -> dict[str, Any]:
    """A1111's request as `generate()`'s keyword arguments."""
    _refuse_missing_features(body)
    wanted = body.override_settings.get("sd_model_checkpoint")
    check(wanted in (None, studio.model), f"override_settings asks for the model {wanted!r}, but this server "
                                          f"serves {studio.model!r}; leave it out (POST /sdapi/v1/options "
                                          f"switches the model for everyone)")
    fields = dict(negative_prompt=body.negative_prompt or "", seed=None if body.seed == -1 else body.seed,
                  num_images_per_prompt=body.batch_size * body.n_iter, num_inference_steps=body.steps,
                  guidance_scale=body.cfg_scale, width=body.width or None, height=body.height or None,
                  scheduler=_sampler(body))
    if body.subseed_strength > 0:
        fields |= dict(variation_seed=body.subseed if body.subseed != -1 else int(time.time_ns() % 2**32),
                       variation_strength=body.subseed_strength)
    return fields


def _info(studio: Studio, result, image_ids: list[int | None], warnings: list[str]) -> dict[str, Any]:
    """A1111's `info`: the parameters of the batch and of each image."""
    params = [item.params for item in result]
    first = params[0]
    return {"prompt": first.prompt, "all_prompts": [p.prompt for p in params],
            "negative_prompt": first.negative_prompt, "all_negative_prompts": [p.negative_prompt for p in params],
            "seed": first.seed, "all_seeds": [p.seed for p in params],
            "subseed": first.variation_seed if first.variation_seed is not None else -1,
            "all_subseeds": [p.variation_seed if p.variation_seed is not None else -1 for p in params],
            "subseed_strength": first.variation_strength, "width": first.width, "height": first.height,
            "sampler_name": first.scheduler, "scheduler": "Automatic", "cfg_scale": first.guidance_scale,
            "steps": first.num_inference_steps, "batch_size": len(params), "restore_faces": False,
            "sd_model_name": studio.model, "sd_model_hash": None, "denoising_strength": first.strength,
            "seed_resize_from_w": -1, "seed_resize_from_h": -1, "extra_generation_params": {},
            "index_of_first_image": 0, "infotexts": [format_parameters(p) for p in params], "styles": [],
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1,
            "is_using_inpainting_conditioning": False, "version": f"sdlab {__version__}",
            "image_ids": image_ids, "warnings": warnings}


def _answer(studio: Studio, body: _A1111Request, gone: Callable[[], bool], client: str, **inputs) -> dict[str, Any]:
    fields = _generation_fields(studio, body)
    result, warnings = studio.generate(body.prompt, client=client, gone=gone, **fields, **inputs)
    image_ids = studio.record(result)
    images = [encode_png(png_bytes(item)) for item in result] if body.send_images else []
    return {"images": images, "parameters": body.model_dump(exclude_none=False),
            "info": json.dumps(_info(studio, result, image_ids, warnings))}


# ---- models the server offers ----------------------------------------------------------------

def offered_models(studio: Studio, models_dir: str | Path | None) -> dict[str, str]:
    """title → what `load_pipeline` loads: the loaded model, the presets that need no download, and
    the fine-tuned versions (by label) in models_dir and in the models folders, LoRA-only ones too."""
    offered = {studio.model: studio.model}
    offered |= {name: name for name, preset in PRESETS.items() if preset.offline}
    offered |= {label: str(version.folder) for label, version in named_versions(models_dir).items()}
    return offered


def _sd_model(title: str, source: str) -> dict[str, Any]:
    return {"title": title, "model_name": title, "hash": None, "sha256": None,
            "filename": source if find_preset(source) is None else f"preset:{source}", "config": None}


def extras(body: ExtraSingleImage, restore: Callable[..., Image.Image] | None) -> tuple[Image.Image, str]:
    """The picture extra-single-image asks for, and a line that says what was done."""
    check(body.resize_mode == 0, f"resize_mode {body.resize_mode} is not offered; send 0 (scale by upscaling_resize)")
    check(body.upscaler_1 in UPSCALERS, f"upscaler_1 {body.upscaler_1!r} is not offered; send one of "
                                        f"{', '.join(UPSCALERS)} (GET /sdapi/v1/upscalers)")
    check(body.upscaler_2 == "None", f"upscaler_2 {body.upscaler_2!r}: a second upscaler is not offered; send 'None'")
    check(body.codeformer_visibility == 0, "codeformer_visibility: CodeFormer is not offered here; send 0 and use "
                                           "gfpgan_visibility for face repair")
    check(0 <= body.gfpgan_visibility <= 1, f"gfpgan_visibility must be from 0 to 1, got {body.gfpgan_visibility:g}")
    check(1 <= body.upscaling_resize <= 4, f"upscaling_resize must be from 1 to 4, got {body.upscaling_resize:g}")
    image = decode_image(body.image, "image").convert("RGB")
    factor = body.upscaling_resize if body.upscaler_1 == "Lanczos" else 1
    if body.gfpgan_visibility > 0:
        check(restore is not None, "this server has no face repair (install sdlab[faces]); send gfpgan_visibility 0")
        done = restore(image, upscale=factor, weight=body.gfpgan_visibility)
        return done, f"Face restoration: GFPGAN, visibility {body.gfpgan_visibility:g}; upscale {factor:g}"
    size = (round(image.width * factor), round(image.height * factor))
    return (image.resize(size, Image.LANCZOS) if factor != 1 else image), f"upscale {factor:g} (Lanczos)"


def add_a1111_api(app: FastAPI, studio: Studio, models_dir: str | Path | None = None,
                  operator_token: str | None = None,
                  face_restorer: Callable[..., Image.Image] | None = None) -> FastAPI:
    """Add AUTOMATIC1111's `/sdapi/v1` routes to `app`, over the same studio as the course's API;
    `face_restorer(image, upscale=, weight=) -> image` serves extra-single-image's face repair."""
    operator = [Depends(operator_check(operator_token))]
    switching = threading.Lock()

    @app.post(PREFIX + "/txt2img", tags=["AUTOMATIC1111"])
    async def txt2img(body: A1111Txt2Img, request: Request) -> dict[str, Any]:
        """A1111's text to image: `images` are base64 PNGs, `info` a JSON string of their parameters."""
        return await while_connected(request, lambda gone: _answer(studio, body, gone, client_of(request)))

    @app.post(PREFIX + "/img2img", tags=["AUTOMATIC1111"])
    async def img2img(body: A1111Img2Img, request: Request) -> dict[str, Any]:
        """A1111's image to image, and inpainting with `mask` (white = repaint)."""
        check(len(body.init_images) == 1, f"init_images holds {len(body.init_images)} images; send exactly one")
        check(body.resize_mode == 0, f"resize_mode {body.resize_mode} is not offered; send 0 (just resize)")
        inputs = {"image": decode_image(body.init_images[0], "init_images[0]"), "strength": body.denoising_strength}
        if body.mask:
            mask = decode_image(body.mask, "mask").convert("L")
            inputs["mask_image"] = ImageOps.invert(mask) if body.inpainting_mask_invert else mask
        return await while_connected(request, lambda gone: _answer(studio, body, gone, client_of(request), **inputs))

    @app.get(PREFIX + "/samplers", tags=["AUTOMATIC1111"])
    def samplers() -> list[dict[str, Any]]:
        """The samplers that run the loaded model, with their other names."""
        names = schedulers_for(studio.pipe.scheduler.config)
        return [{"name": name, "aliases": sorted(a for a, n in ALIASES.items() if n == name), "options": {}}
                for name in names]

    @app.get(PREFIX + "/schedulers", tags=["AUTOMATIC1111"])
    def schedulers() -> list[dict[str, Any]]:
        """A1111's noise-level spacings that these samplers follow ('karras': DPM++ 2M Karras, LMS Karras)."""
        return [{"name": name, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
                for name, label in SCHEDULERS.items()]

    @app.get(PREFIX + "/sd-models", tags=["AUTOMATIC1111"])
    def sd_models() -> list[dict[str, Any]]:
        """The models this server can switch to (POST /sdapi/v1/options): the loaded one, the offline
        presets and the fine-tuned versions (`sdlab finetune`'s and /finetune's)."""
        return [_sd_model(title, source) for title, source in offered_models(studio, models_dir).items()]

    @app.get(PREFIX + "/options", tags=["AUTOMATIC1111"])
    def options() -> dict[str, Any]:
        """The settings A1111 clients read: the loaded model above all."""
        return {"sd_model_checkpoint": studio.model, "sd_checkpoint_hash": None, "samples_format": "png",
                "sd_vae": "Automatic", "CLIP_stop_at_last_layers": 1, "eta_noise_seed_delta": 0}

    @app.post(PREFIX + "/options", tags=["AUTOMATIC1111"], dependencies=operator)
    def set_options(settings: dict[str, Any]) -> None:
        """Switch the model with {"sd_model_checkpoint": a title from /sdapi/v1/sd-models}; it is loaded
        between two requests, for everyone. Other settings are ignored."""
        wanted = settings.get("sd_model_checkpoint")
        if wanted is None or wanted == studio.model:
            return None
        offered = offered_models(studio, models_dir)
        check(isinstance(wanted, str) and wanted in offered,
              f"sd_model_checkpoint {wanted!r} is not a model this server offers; choose one of {sorted(offered)} "
              f"(GET /sdapi/v1/sd-models)")
        with switching:
            studio.switch(load_pipeline(offered[wanted]), wanted)
        return None

    @app.get(PREFIX + "/progress", tags=["AUTOMATIC1111"])
    def progress() -> dict[str, Any]:
        """How far the running generation is, and how many requests are in line."""
        done, total = studio.progress
        return {"progress": done / total if total else 0.0, "eta_relative": 0.0,
                "state": {"skipped": False, "interrupted": False, "job": "", "job_count": studio.in_line,
                          "job_timestamp": "", "job_no": 0, "sampling_step": done, "sampling_steps": total},
                "current_image": None, "textinfo": None}

    @app.get(PREFIX + "/scripts", tags=["AUTOMATIC1111"])
    def scripts() -> dict[str, list[str]]:
        """No scripts or extensions here."""
        return {"txt2img": [], "img2img": []}

    @app.post(PREFIX + "/extra-single-image", tags=["AUTOMATIC1111"])
    def extra_single_image(body: ExtraSingleImage) -> dict[str, Any]:
        """A1111's extras: the picture upscaled (Lanczos) and its faces repaired, as a base64 PNG."""
        picture, info = extras(body, face_restorer)
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        return {"image": encode_png(buffer.getvalue()), "html_info": f"<p>{html.escape(info)}</p>"}

    @app.get(PREFIX + "/upscalers", tags=["AUTOMATIC1111"])
    def upscalers() -> list[dict[str, Any]]:
        return [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
                for name in UPSCALERS]

    @app.post(PREFIX + "/png-info", tags=["AUTOMATIC1111"])
    def png_info(body: PngInfoRequest) -> dict[str, Any]:
        """The parameters text a PNG carries, and its fields."""
        image = decode_image(body.image, "image")
        text = image.info.get(PARAMETERS_KEY)
        if not isinstance(text, str):
            return {"info": "", "items": {}, "parameters": {}}
        return {"info": text, "items": {PARAMETERS_KEY: text}, "parameters": parameter_fields(text)}

    return app


def parameter_fields(text: str) -> dict[str, Any]:
    """A1111's parsed form of a parameters text: Prompt, Negative prompt, each setting, Size-1/Size-2."""
    prompt, negative, pairs = split_parameters(text)
    fields: dict[str, Any] = {"Prompt": prompt, "Negative prompt": negative}
    for key, value in pairs.items():
        if key == "Size" and "x" in value:
            fields["Size-1"], fields["Size-2"] = value.split("x", 1)
        else:
            fields[key] = value
    return fields
