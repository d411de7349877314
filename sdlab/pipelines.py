"""Loading a Stable Diffusion pipeline: a preset name, a fine-tuned version's name, a local folder or a hub id.

One set of components serves text-to-image, image-to-image and inpainting: the img2img and
inpaint pipelines are built around the same UNet, VAE and text encoder, never reloaded.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
from diffusers.utils import logging as diffusers_logging
from huggingface_hub import constants, login

from .device import pick_device
from .errors import SdlabInputError, check
from .presets import (
    PRESETS,
    VERSION_FILE,
    ModelVersion,
    find_preset,
    find_version,
    models_dirs,
    named_versions,
    read_version,
    tiny_model_dir,
)
from .schedulers import resolve_scheduler_name, set_scheduler
from .speed import speed_up

logger = logging.getLogger(__name__)
HUB_HOST = "huggingface.co"


def _progress_enabled(progress: bool | None) -> bool:
    """Progress bars show unless turned off here or with SDLAB_PROGRESS=0 (tests do)."""
    if progress is not None:
        return progress
    return os.environ.get("SDLAB_PROGRESS", "1") not in ("0", "false", "no")


@contextmanager
def _loading_bars(enabled: bool):
    """Hide diffusers' and transformers' "Loading …" bars while loading, when asked to."""
    from transformers.utils import logging as transformers_logging  # heavy: transformers loads with the first model

    if enabled:
        yield
        return
    libraries = [lib for lib in (diffusers_logging, transformers_logging) if lib.is_progress_bar_enabled()]
    for lib in libraries:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libraries:  # only those that were on: a user's own choice stays
            lib.enable_progress_bar()


@contextmanager
def _quiet_diffusers():
    """Hide diffusers' notes while loading LoRA (e.g. "no LoRA keys for the text encoder": none are meant)."""
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (1, on, yes, true)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can this machine open a connection to the Hugging Face Hub, or the mirror HF_ENDPOINT names?
    (No hang when offline.) Through a proxy only the proxy knows, so huggingface_hub tries."""
    if _hub_offline():
        return False
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((endpoint.hostname or HUB_HOST, endpoint.port or
                                       (80 if endpoint.scheme == "http" else 443)), timeout=timeout):
            return True
    except OSError:
        return False


def _from_hub(cls, repo_id: str, variants=(None,), **kwargs):
    """`cls.from_pretrained(repo_id)`: from the local cache if it is there, else download; each of
    `variants` in turn (e.g. the fp16 files, then the full ones), the cache's before the Hub's."""
    for variant in variants:
        try:
            return cls.from_pretrained(repo_id, local_files_only=True, variant=variant, **kwargs)
        except (OSError, ValueError):
            pass
    if not _hub_reachable():
        raise SdlabInputError(
            f"model {repo_id!r} is not in the local Hugging Face cache and the Hub cannot be reached "
            f"(offline, or HF_HUB_OFFLINE is set). Use the offline model 'sdlab-tiny', pass a local "
            f"diffusers folder, or connect to the internet (e.g. in Colab) and try again.")
    for variant in variants[:-1]:
        try:
            return cls.from_pretrained(repo_id, variant=variant, **kwargs)
        except (OSError, ValueError):  # no such variant on the Hub: the next one
            pass
    return cls.from_pretrained(repo_id, variant=variants[-1], **kwargs)


CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def part_is_whole(path: Path, part: str) -> bool:
    """Whether the pipeline folder `path` holds `part` (unet, tokenizer, …) with what loading it needs."""
    folder = Path(path) / part
    names = {f.name for f in folder.iterdir()} if folder.is_dir() else set()
    if part == "scheduler":
        return "scheduler_config.json" in names
    if part.startswith("tokenizer"):
        return "tokenizer.json" in names or {"vocab.json", "merges.txt"} <= names
    if part == "feature_extractor":
        return "preprocessor_config.json" in names
    return "config.json" in names and any(name.endswith(WEIGHT_SUFFIXES) for name in names)


def _check_folder(path: Path) -> None:
    """A diffusers pipeline folder with every part its model_index.json names, each with its
    config and weights (else diffusers fails later, or a missing tokenizer fails at generation)."""
    index_file = path / "model_index.json"
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SdlabInputError(f"folder {str(path)!r} is not a diffusers pipeline (its model_index.json cannot be "
                              f"read: {type(err).__name__})") from None
    for part, spec in index.items():
        if part.startswith("_") or not isinstance(spec, list) or not spec or spec[0] is None:
            continue
        if not part_is_whole(path, part):
            folder = path / part
            names = {f.name for f in folder.iterdir()} if folder.is_dir() else set()
            raise SdlabInputError(f"folder {str(path)!r} lacks its {part} ({part}/ is missing or incomplete: "
                                  f"{'no folder' if not names else ', '.join(sorted(names))}); copy the whole "
                                  f"pipeline folder, or save it again with pipe.save_pretrained(folder)")


def _check_supported(pipe, name: str) -> None:
    """A Stable Diffusion 1.x/2.x text-to-image model: what sdlab's course and tools run."""
    config = pipe.unet.config
    if config.get("addition_embed_type") == "text_time" or getattr(pipe, "text_encoder_2", None) is not None:
        raise SdlabInputError(f"{name!r} is an SDXL-type model (a second text encoder, extra embeddings); sdlab runs "
                              f"Stable Diffusion 1.x/2.x models such as 'sd15' or 'sd-turbo': use diffusers' "
                              f"StableDiffusionXLPipeline for it")
    if config.in_channels != 4:
        raise SdlabInputError(f"{name!r} has a {config.in_channels}-channel UNet (an inpainting model); sdlab runs "
                              f"text-to-image models, and paints in with them too: load the text-to-image model")


def _resolve_source(model: str) -> tuple[str, object]:
    """('builder'|'folder'|'hub'|'version', the preset, path, hub id or ModelVersion) for a model name."""
    preset = find_preset(model)
    if preset is not None:
        if preset.source.startswith("builder:"):
            return "builder", preset
        if preset.source.startswith("local:"):
            folder = tiny_model_dir()
            if folder is None:
                raise SdlabInputError(f"the model {model!r} is not in this installation (models/sdlab-tiny is "
                                      f"missing); train it with `sdlab train-tiny` or use 'tiny-random' for tests")
            return "folder", folder
        return "hub", preset.source
    path = Path(model).expanduser()
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        if not path.is_file():
            raise SdlabInputError(f"no file at {str(path)!r}: check the path (or give a diffusers folder, a preset "
                                  f"or a hub id)")
        raise SdlabInputError(f"{str(path)!r} is a single-file checkpoint, as A1111 keeps them; sdlab loads diffusers "
                              f"folders. Convert it once with diffusers: StableDiffusionPipeline.from_single_file("
                              f"{str(path)!r}).save_pretrained('my-model'), then load 'my-model'")
    # a fine-tuned version: its folder, or its name in the models folders (a folder of photos called
    # the same, as the images it was fine-tuned on often are, is not a model)
    version = read_version(path) if path.is_dir() else None
    if version is None and not (path / "model_index.json").is_file():
        version = find_version(model)
    if version is not None:
        if (version.folder / "model_index.json").is_file():
            _check_folder(version.folder)
        return "version", version
    if path.is_dir():
        _check_folder(path)
        return "folder", path
    looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~")) and not path.exists()
    if looks_like_hub_id:
        return "hub", model
    raise SdlabInputError(f"model {model!r} is neither a preset ({', '.join(PRESETS)}), a fine-tuned version "
                          f"({_versions_line()}), an existing diffusers folder, nor a Hugging Face hub id like "
                          f"'stable-diffusion-v1-5/stable-diffusion-v1-5'")


def _versions_line() -> str:
    """The fine-tuned versions a name can load, and where they were looked for."""
    labels, where = list(named_versions()), " and ".join(str(folder) for folder in models_dirs())
    if not labels:
        return f"none in {where}; `sdlab finetune` makes them there, $SDLAB_MODELS says where else to look"
    return f"in {where}: {', '.join(labels[:20])}{', …' if len(labels) > 20 else ''}"


def load_pipeline(model: str = "sdlab-tiny", *, device: str = "auto", dtype: str | torch.dtype = "auto",
                  scheduler: str | None = None, safety_checker: bool | None = None,
                  progress: bool | None = None, channels_last: bool = False, fuse_qkv: bool = False,
                  attention: str | None = None, compile: bool | str = False):
    """Load a text-to-image pipeline, ready on the chosen device.

    model: a preset (`sdlab-tiny`, `tiny-random`, `sd15`, `sd-turbo`), a fine-tuned version's label or name
    (`my-dog-v2`, or `my-dog` for its newest, from the models folders: see `sdlab.presets`) or folder, a
    diffusers folder or a hub id.
    device/dtype: "auto" picks cuda → mps → cpu and float16 on GPUs (see `sdlab.device`).
    scheduler: a name from `sdlab.schedulers.scheduler_names()`; None keeps the model's or the preset's.
    safety_checker: None keeps the model's own (on for real SD models, off for the tiny ones).
    channels_last, fuse_qkv, attention, compile: GPU speed-ups, off by default (see `speed_up`).
    """
    # 1. Check inputs: device, dtype, scheduler and where the model comes from (before any download)
    model = os.fspath(model)
    choice = pick_device(device, dtype)
    scheduler = resolve_scheduler_name(scheduler) if scheduler is not None else None
    kind, source = _resolve_source(model)
    preset = find_preset(model)
    # 2. Load the components (of a version saved as LoRA weights alone: its base model's, then the weights)
    if kind == "version" and not (source.folder / "model_index.json").is_file():
        pipe = _lora_version(source, device=device, dtype=dtype, safety_checker=safety_checker, progress=progress)
    else:
        with _loading_bars(_progress_enabled(progress)):
            pipe = _load(kind, source, choice, safety_checker)
        _check_supported(pipe, model)
    if safety_checker and pipe.safety_checker is None:
        raise SdlabInputError(f"{model!r} has no safety checker to turn on; load a model that ships one (e.g. "
                              f"'sd15'), or leave safety_checker=None")
    # 3. Place and configure
    pipe = pipe.to(choice.device)
    if choice.device.type == "mps":
        pipe.enable_attention_slicing()  # recommended by diffusers for Apple GPUs
    scheduler = scheduler or (preset.scheduler if preset else None)
    if scheduler:
        set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=not _progress_enabled(progress), leave=False)
    pipe.sdlab_model_name = preset.name if preset else source.label if kind == "version" else str(model)
    if kind == "version":
        pipe.sdlab_version = source  # what a fine-tune of it continues (`sdlab.finetune`)
    pipe.sdlab_device = choice
    if channels_last or fuse_qkv or attention or compile:
        speed_up(pipe, channels_last=channels_last, fuse_qkv=fuse_qkv, attention=attention, compile=compile)
    logger.info("loaded %s on %s", pipe.sdlab_model_name, choice)
    return pipe


def _load(kind: str, source, choice, safety_checker: bool | None):
    """The pipeline's components, built (`tiny-random`), read from a folder or from the hub."""
    from diffusers import StableDiffusionPipeline  # heavy: diffusers' pipeline classes load with the first model

    if kind == "builder":
        # heavy: transformers' models, only for the models built in code
        from .testing import build_sd15_random_pipeline, build_tiny_random_pipeline

        if source.name == "sd15-random":
            return build_sd15_random_pipeline(dtype=choice.dtype, device=choice.device)
        return build_tiny_random_pipeline(dtype=choice.dtype)
    if kind == "version":  # saved as a whole pipeline
        kind, source = "folder", source.folder
    kwargs = {"dtype": choice.dtype}
    if safety_checker is False:  # None keeps the model's own, as diffusers does
        kwargs |= {"safety_checker": None, "requires_safety_checker": False}
    if kind == "folder":
        try:
            return StableDiffusionPipeline.from_pretrained(str(source), **kwargs)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:  # missing/damaged files, a pickle
            first = (str(err).strip().splitlines() or [""])[0][:300]
            raise SdlabInputError(f"the model folder {source} does not load as a diffusers pipeline "
                                  f"({type(err).__name__}: {first}); give a folder that save_pretrained wrote "
                                  f"whole (model_index.json and each part's config and safetensors)") from None
    # the hub's half-precision files are half the download; the full ones where there are none
    variants = ("fp16", None) if choice.dtype == torch.float16 else (None,)
    return _from_hub(StableDiffusionPipeline, source, variants, **kwargs)


def _lora_version(version: ModelVersion, **options):
    """A version saved as LoRA weights alone: its base model with the weights applied (not merged in)."""
    base = version.info.get("base_model")
    check(isinstance(base, str), f"{version.folder / VERSION_FILE} names no base_model, so its LoRA weights have "
                                 f"no model to go on: fine-tune again, or mend the record")
    try:
        pipe = load_pipeline(base, **options)
    except SdlabInputError as err:
        raise SdlabInputError(f"{version.label} is LoRA weights for the model {base!r}, which does not load here: "
                              f"{err}") from None
    with _loading_bars(_progress_enabled(options.get("progress"))), _quiet_diffusers():
        pipe.load_lora_weights(str(version.folder))
    return pipe


def model_name(pipe) -> str:
    """The name a pipeline was loaded under (for metadata)."""
    return getattr(pipe, "sdlab_model_name", None) or getattr(pipe, "name_or_path", None) or "unknown"


def txt2img_pipeline(pipe, scheduler=None):
    """`pipe` itself, or with `scheduler`: a pipeline of its class sharing its other components."""
    return pipe if scheduler is None else _variant(type(pipe), pipe, scheduler)


def img2img_pipeline(pipe, scheduler=None):
    """An image-to-image pipeline sharing `pipe`'s components (nothing is reloaded or copied), with
    `scheduler` instead of `pipe`'s if given."""
    from diffusers import StableDiffusionImg2ImgPipeline  # heavy: diffusers' pipeline classes load only when used

    return _variant(StableDiffusionImg2ImgPipeline, pipe, scheduler)


def inpaint_pipeline(pipe, scheduler=None):
    """An inpainting pipeline sharing `pipe`'s components (works with the plain 4-channel UNet), with
    `scheduler` instead of `pipe`'s if given."""
    from diffusers import StableDiffusionInpaintPipeline  # heavy: diffusers' pipeline classes load only when used

    return _variant(StableDiffusionInpaintPipeline, pipe, scheduler)


def _variant(cls, pipe, scheduler=None):
    expected, _ = cls._get_signature_keys(cls)
    components = {k: v for k, v in pipe.components.items() if k in expected}
    if scheduler is not None:
        components["scheduler"] = scheduler
    variant = cls(**components, requires_safety_checker=pipe.safety_checker is not None)
    variant.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    variant.sdlab_model_name = model_name(pipe)
    return variant


def hub_login(token: str | None = None) -> str:
    """Log in to the Hugging Face Hub for gated models, without ever showing the token.

    The token comes from the argument, the HF_TOKEN environment variable or Colab's secret
    HF_TOKEN — never type it into a notebook cell that gets saved. Returns what happened.
    """
    token = token or os.environ.get("HF_TOKEN")
    if token is None:
        try:
            from google.colab import userdata  # only in Colab

            token = userdata.get("HF_TOKEN")
        except Exception:  # not in Colab, or the secret is not set/allowed
            token = None
    if not token:
        return "no Hugging Face token found (set HF_TOKEN); none is needed for sdlab-tiny, sd15 or sd-turbo"
    login(token=token, add_to_git_credential=False)
    return "logged in to the Hugging Face Hub (the token is stored in the HF cache, not in this notebook)"
