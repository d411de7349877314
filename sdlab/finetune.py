"""Fine-tuning on liked images (notebook 08): LoRA or full, in the background, as a new model version.

    job = start_finetune(pipe, store, models_dir="models/feedback")   # the images rated 4–5, their prompts
    job.status()            # FinetuneStatus(state='running', step=40, total_steps=200, loss=0.071, …)
    version = job.wait()    # ModelVersion(name='sdlab-tiny-feedback', number=1, folder=…)
    new_pipe = load_version(version.folder)

The training step is the one sdlab-tiny was trained with (`sdlab.tiny.train`): noise the latents of
an image at a random timestep, ask the UNet for the target the scheduler's `prediction_type` names
(v for sdlab-tiny, the noise for SD 1.5), mean squared error. accelerate places the model and runs
the backward pass, on the CPU or a GPU. LoRA (peft) trains small low-rank matrices beside the
attention and time-embedding layers; they are saved in diffusers' format, so
`pipe.load_lora_weights(version.folder)` applies them. Every version gets its own folder; the base
model and older versions are never changed.

`preference_demo` closes the loop on sdlab-tiny and measures it: simulated raters who like one
colour rate images from prompts that leave the colour open; after fine-tuning on what they liked,
the checker counts how often held-out prompts come out in that colour, before and after.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import SdlabInputError, check
from .feedback import LIKED, FeedbackStore, now
from .pipelines import _loading_bars, _progress_enabled, model_name

VERSION_FILE = "sdlab_version.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
# LoRA beside the attention and feed-forward layers, the ResNet convolutions and time projections, and
# (in sdlab-tiny) the prompt's path into the timestep embedding; names missing in a model are skipped
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "time_emb_proj", "add_embedding.proj")
FULL_SAVE_MAX_PARAMETERS = 100_000_000  # below this the version folder also holds a whole pipeline
STATES = ("queued", "running", "done", "failed")  # what FinetuneStatus.state can be


@dataclass
class FinetuneConfig:
    """How to fine-tune. `method`: "lora" (small adapters, any model) or "full" (every UNet weight;
    fine for sdlab-tiny, too big for SD 1.5 on most GPUs)."""

    method: str = "lora"
    steps: int = 200
    batch_size: int = 8
    learning_rate: float | None = None  # None: 1e-3 for LoRA, 1e-4 for full
    rank: int = 8  # LoRA: size of the low-rank matrices
    target_modules: tuple[str, ...] = LORA_TARGETS
    caption_dropout: float = 0.0  # share of empty prompts (also teaches the unconditional branch)
    high_noise_share: float = 0.3  # extra timesteps at high noise, where colours and layout are decided
    seed: int = 0
    min_rating: float = LIKED  # which images count as liked, from a FeedbackStore

    def checked(self) -> "FinetuneConfig":
        """This config, after checking every value (a SdlabInputError names the wrong one)."""
        check(self.method in ("lora", "full"), f"method must be 'lora' or 'full', got {self.method!r}")
        check(isinstance(self.steps, int) and 1 <= self.steps <= 100_000,
              f"steps must be 1–100000, got {self.steps!r}")
        check(isinstance(self.batch_size, int) and self.batch_size >= 1,
              f"batch_size must be ≥ 1, got {self.batch_size!r}")
        check(isinstance(self.rank, int) and 1 <= self.rank <= 256,
              f"rank must be 1–256, got {self.rank!r}; 4–16 is typical")
        check(0 <= self.caption_dropout < 1 and 0 <= self.high_noise_share <= 1,
              "caption_dropout and high_noise_share are shares between 0 and 1")
        return self

    @property
    def lr(self) -> float:
        return self.learning_rate or (1e-3 if self.method == "lora" else 1e-4)


@dataclass(frozen=True)
class Example:
    """One training pair: an image and the prompt that made it."""

    image: Image.Image
    prompt: str
    image_id: int | None = None


def training_examples(source, min_rating: float = LIKED) -> list[Example]:
    """Training pairs from a FeedbackStore (its liked images), an exported imagefolder (a folder with
    metadata.jsonl), or a list of (image, prompt) pairs. Zero pairs is a teaching error."""
    if isinstance(source, FeedbackStore):
        examples = [Example(item.image, item.prompt, item.id) for item in source.liked(min_rating)]
        what = f"the store has no images with a mean rating of {min_rating:g} or more"
    elif isinstance(source, (str, Path)):
        folder = Path(source)
        check((folder / "metadata.jsonl").is_file(),
              f"{folder} has no metadata.jsonl; export one with store.export_imagefolder(folder)")
        rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]
        examples = [Example(Image.open(folder / r["file_name"]).convert("RGB"), r["text"], r.get("image_id"))
                    for r in rows]
        what = f"{folder}/metadata.jsonl lists no images"
    else:
        examples = [e if isinstance(e, Example) else Example(*e) for e in source]
        what = "the list of (image, prompt) pairs is empty"
    check(bool(examples), f"nothing to fine-tune on: {what}. Rate some images 4 or 5 first "
                          f"(store.add_feedback(image_id, 5)), or lower min_rating")
    return examples


# ---- one training step, the recipe of sdlab.tiny.train ------------------------------------

def noise_scheduler_for(pipe):
    """A DDPM scheduler with the pipeline's noise schedule and prediction type, for training."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    kind = scheduler.config.prediction_type
    check(kind in ("epsilon", "v_prediction"), f"fine-tuning supports epsilon and v_prediction models, not {kind!r}")
    return scheduler


def sample_timesteps(n: int, num_train_timesteps: int, high_noise_share: float, generator) -> torch.Tensor:
    """Uniform timesteps, with `high_noise_share` of them drawn from the noisiest 30 % (as train.py does)."""
    t = torch.randint(0, num_train_timesteps, (n,), generator=generator)
    high = torch.rand(n, generator=generator) < high_noise_share
    t[high] = torch.randint(int(num_train_timesteps * 0.7), num_train_timesteps, (int(high.sum()),),
                            generator=generator)
    return t


def diffusion_loss(unet, latents: torch.Tensor, text: torch.Tensor, noise_scheduler, generator,
                   high_noise_share: float = 0.0) -> torch.Tensor:
    """Noise `latents` at random timesteps; MSE between the UNet's prediction and the scheduler's target."""
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    t = sample_timesteps(len(latents), noise_scheduler.config.num_train_timesteps, high_noise_share,
                         generator).to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    if noise_scheduler.config.prediction_type == "epsilon":
        target = noise
    else:  # v-prediction, as sdlab-tiny
        target = noise_scheduler.get_velocity(latents, noise, t)
    prediction = unet(noisy, t, text).sample
    return F.mse_loss(prediction.float(), target.float())


@torch.no_grad()
def encode_examples(pipe, examples: list[Example], chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents of the images (the VAE's mean, scaled) and the prompts' text embeddings, in float32."""
    width, height = examples[0].image.size
    latents, texts = [], []
    for start in range(0, len(examples), chunk):
        batch = examples[start:start + chunk]
        pixels = torch.stack([torch.from_numpy(np.array(e.image.convert("RGB").resize((width, height))))
                              .permute(2, 0, 1) for e in batch])
        pixels = (pixels.float() / 127.5 - 1).to(pipe.device, pipe.vae.dtype)
        latents.append(pipe.vae.encode(pixels).latent_dist.mode().float() * pipe.vae.config.scaling_factor)
        texts.append(pipe.encode_prompt([e.prompt for e in batch], pipe.device, 1, False)[0].float())
    return torch.cat(latents), torch.cat(texts)


# ---- model versions ------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelVersion:
    """A fine-tuned model: `folder` holds its LoRA weights (and, for small models, a whole pipeline)."""

    name: str
    number: int
    folder: Path
    info: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def label(self) -> str:
        return f"{self.name}-v{self.number}"


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or "model").strip("-") or "model"


def list_versions(models_dir: str | Path, name: str | None = None) -> list[ModelVersion]:
    """Every saved version under `models_dir` (of one `name`, or all), oldest first."""
    found = []
    for info_file in sorted(Path(models_dir).glob(f"{name or '*'}/v*/{VERSION_FILE}")):
        info = json.loads(info_file.read_text())
        found.append(ModelVersion(info["name"], info["version"], info_file.parent, info))
    return sorted(found, key=lambda v: (v.name, v.number))


def _publish(tmp: Path, models_dir: Path, name: str, info: dict) -> ModelVersion:
    """Move a finished version folder into place as the next free v<N> (never over an old one)."""
    home = models_dir / name
    home.mkdir(parents=True, exist_ok=True)
    number = max((v.number for v in list_versions(models_dir, name)), default=0) + 1
    while True:
        info |= {"name": name, "version": number}
        (tmp / VERSION_FILE).write_text(json.dumps(info, indent=2))
        try:
            tmp.rename(home / f"v{number}")  # fails if v<number> exists and is not empty
            return ModelVersion(name, number, home / f"v{number}", info)
        except OSError:
            if not (home / f"v{number}").exists():
                raise
            number += 1  # another job published that number first


def load_version(folder: str | Path, *, device: str = "auto", dtype="auto"):
    """A pipeline for a saved version: its own pipeline folder, or its base model + its LoRA."""
    from .pipelines import load_pipeline

    folder = Path(folder)
    check((folder / VERSION_FILE).is_file(), f"{folder} is not a model version (no {VERSION_FILE} in it)")
    info = json.loads((folder / VERSION_FILE).read_text())
    if (folder / "model_index.json").is_file():
        pipe = load_pipeline(str(folder), device=device, dtype=dtype)
    else:
        pipe = load_pipeline(info["base_model"], device=device, dtype=dtype)
        with _quiet_diffusers():
            pipe.load_lora_weights(str(folder))
        pipe.sdlab_model_name = str(folder)
    pipe.sdlab_version = ModelVersion(info["name"], info["version"], folder, info)
    return pipe


# ---- fine-tuning ---------------------------------------------------------------------------

def finetune(pipe, examples, config: FinetuneConfig | None = None, *, models_dir: str | Path,
             name: str | None = None, on_step=None, should_stop=None) -> ModelVersion:
    """Fine-tune a copy of `pipe`'s UNet on `examples` and save it as the next version of `name`.

    examples: a FeedbackStore, an exported imagefolder or (image, prompt) pairs (`training_examples`).
    on_step(step, loss) is called after every step; should_stop() → True cancels the run.
    `pipe` itself is never changed; the new model is loaded with `load_version(version.folder)`.
    """
    from accelerate import Accelerator

    # 1. Check inputs
    config = (config or FinetuneConfig()).checked()
    examples = training_examples(examples, config.min_rating)
    noise_scheduler = noise_scheduler_for(pipe)
    start = time.perf_counter()

    # 2. Encode the examples once (the VAE and text encoder stay frozen)
    latents, text = encode_examples(pipe, examples)
    empty = pipe.encode_prompt([""], pipe.device, 1, False)[0].float()

    # 3. The UNet to train: a float32 copy, with LoRA adapters or every weight trainable
    acc = Accelerator(cpu=pipe.device.type == "cpu")
    unet = copy.deepcopy(pipe.unet).float()
    if config.method == "lora":
        from peft import LoraConfig

        unet.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):  # the adapters' random start comes from config.seed
            torch.manual_seed(config.seed)
            unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.rank, init_lora_weights="gaussian",
                                        target_modules=list(config.target_modules)))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-2 if config.method == "lora" else 0.0)
    unet, optimizer = acc.prepare(unet.train(), optimizer)
    latents, text, empty = latents.to(acc.device), text.to(acc.device), empty.to(acc.device)

    # 4. Train: random batches of the (few) liked images
    generator = torch.Generator().manual_seed(config.seed)
    losses = []
    for step in range(1, config.steps + 1):
        if should_stop is not None and should_stop():
            raise InterruptedError("the fine-tune was cancelled")
        pick = torch.randint(0, len(examples), (config.batch_size,), generator=generator).to(acc.device)
        batch_text = text[pick]
        if config.caption_dropout:
            drop = (torch.rand(len(pick), generator=generator) < config.caption_dropout).to(acc.device)
            batch_text = torch.where(drop[:, None, None], empty, batch_text)
        with acc.autocast():
            loss = diffusion_loss(unet, latents[pick], batch_text, noise_scheduler, generator, config.high_noise_share)
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])

    # 5. Save as a new version next to the old ones
    unet = acc.unwrap_model(unet).eval()
    base = model_name(pipe)
    info = {"base_model": base, "method": config.method, "config": asdict(config), "examples": len(examples),
            "image_ids": [e.image_id for e in examples if e.image_id is not None], "losses": losses,
            "seconds": round(time.perf_counter() - start, 2), "created_at": now()}
    Path(models_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=models_dir))  # published only once complete
    try:
        with _loading_bars(_progress_enabled(None)):
            _save(pipe, unet, config, tmp)
        return _publish(tmp, Path(models_dir), name or f"{_slug(base)}-feedback", info)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; removed if saving failed


def _save(pipe, unet, config: FinetuneConfig, folder: Path) -> None:
    """LoRA weights in diffusers' format (`pipe.load_lora_weights(folder)`), and for small models a
    whole pipeline with them merged in (`load_pipeline(folder)`); for "full", the pipeline only."""
    if config.method == "full":
        unet = unet if unet.dtype == pipe.unet.dtype else unet.to(pipe.unet.dtype)
        _with_unet(pipe, unet).save_pretrained(folder, safe_serialization=True)
        return
    from peft.utils import get_peft_model_state_dict

    # peft's key names: diffusers reads them back exactly, time_emb_proj adapters included
    type(pipe).save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet),
                                 unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
                                 safe_serialization=True)
    if sum(p.numel() for p in pipe.unet.parameters()) <= FULL_SAVE_MAX_PARAMETERS:
        merged = _with_unet(pipe, copy.deepcopy(pipe.unet))
        with _quiet_diffusers():
            merged.load_lora_weights(str(folder))  # the saved file, loaded as any user would load it
        merged.fuse_lora()
        merged.unload_lora_weights()
        _check_same(unet, merged.unet)
        merged.save_pretrained(folder, safe_serialization=True)


@torch.no_grad()
def _check_same(trained, saved) -> None:
    """The saved UNet must compute what the trained one does (else the version would lie)."""
    config = saved.config
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, config.in_channels, config.sample_size, config.sample_size, generator=generator)
    text = torch.randn(1, 77, config.cross_attention_dim, generator=generator)
    t = torch.tensor([500])

    def run(unet):
        device, dtype = unet.device, unet.dtype
        return unet(x.to(device, dtype), t.to(device), text.to(device, dtype)).sample.float().cpu()

    a, b = run(trained), run(saved)
    if (a - b).abs().max() > 1e-3 * (1 + a.abs().max()):
        raise RuntimeError(f"the saved LoRA does not reproduce the trained UNet (largest difference "
                           f"{(a - b).abs().max():.3g}); the adapter layers were not all loaded")


@contextmanager
def _quiet_diffusers():
    """Hide diffusers' notes while loading LoRA (e.g. "no LoRA keys for the text encoder": none are meant)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def _with_unet(pipe, unet):
    """A pipeline of `pipe`'s components with another UNet (nothing else is copied)."""
    return type(pipe)(**{**pipe.components, "unet": unet}, requires_safety_checker=pipe.safety_checker is not None)


# ---- in the background, with a status ------------------------------------------------------

@dataclass
class FinetuneStatus:
    """Where a fine-tune job is: queued → running (step, loss) → done (version) or failed (message)."""

    job_id: str
    state: str = "queued"
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    message: str = "waiting for the previous fine-tune to finish"
    version: str | None = None  # the new version's folder, when done
    model: str | None = None  # its label, e.g. "sdlab-tiny-feedback-v2"
    started_at: str | None = None
    finished_at: str | None = None
    seconds: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        loss = f", loss {self.loss:.4f}" if self.loss is not None else ""
        return f"[{self.job_id}] {self.state}: step {self.step}/{self.total_steps}{loss} · {self.message}"


FINETUNE_TURN = threading.Lock()  # fine-tunes in one process take turns: later jobs wait "queued"


class FinetuneJob:
    """`finetune()` in a background thread. `status()` any time; `wait()` for the ModelVersion."""

    def __init__(self, pipe, examples: list[Example], config: FinetuneConfig, models_dir, name: str | None = None):
        self.id = uuid.uuid4().hex[:8]
        self.version: ModelVersion | None = None
        self.error: BaseException | None = None
        self._args = (pipe, examples, config, models_dir, name)
        self._status = FinetuneStatus(self.id, total_steps=config.steps)
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sdlab-finetune-{self.id}", daemon=True)

    def start(self) -> "FinetuneJob":
        self._thread.start()
        return self

    def status(self) -> FinetuneStatus:
        with self._lock:
            return replace(self._status)

    def _update(self, **values) -> None:
        with self._lock:
            self._status = replace(self._status, **values)

    @property
    def running(self) -> bool:
        """True while the job is queued or training."""
        return self._thread.is_alive()

    def cancel(self) -> None:
        """Stop at the next step (the job ends "failed", with the reason)."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> ModelVersion:
        """Block until the job ends; the new version, or the job's error raised here."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the fine-tune is still running after {timeout} s: {self.status().line()}")
        if self.error is not None:
            raise self.error
        return self.version

    def _run(self) -> None:
        pipe, examples, config, models_dir, name = self._args
        with FINETUNE_TURN:
            began = time.perf_counter()
            self._update(state="running", started_at=now(), message=f"training on {len(examples)} liked images")
            try:
                self.version = finetune(pipe, examples, config, models_dir=models_dir, name=name,
                                        on_step=lambda step, loss: self._update(step=step, loss=loss),
                                        should_stop=self._cancel.is_set)
                end = dict(state="done", version=str(self.version.folder), model=self.version.label,
                           message=f"saved {self.version.label}")
            except Exception as err:  # the reason goes into the status; wait() re-raises it
                self.error = err
                reason = str(err) if isinstance(err, (SdlabInputError, InterruptedError)) else \
                    f"{type(err).__name__}: {err}"
                end = dict(state="failed", message=reason)
            self._update(**end, finished_at=now(), seconds=round(time.perf_counter() - began, 2))


def start_finetune(pipe, source, config: FinetuneConfig | None = None, *, models_dir: str | Path,
                   name: str | None = None) -> FinetuneJob:
    """Start `finetune()` in the background and return the job at once.

    The liked images are read now, so zero liked images is a SdlabInputError here, not a failed job.
    """
    config = (config or FinetuneConfig()).checked()
    return FinetuneJob(pipe, training_examples(source, config.min_rating), config, models_dir, name).start()


# ---- the measured loop on sdlab-tiny: simulated raters who like one colour -----------------

@dataclass(frozen=True)
class ColourRater:
    """A simulated rater who likes one object colour: 5 when the checker reads it, 1 otherwise."""

    colour: str = "blue"

    @property
    def name(self) -> str:
        return f"simulated rater (likes {self.colour})"

    def __call__(self, image) -> tuple[int, str]:
        from .tiny.checker import read_scene

        seen = read_scene(image).colour
        return (5, f"yes, {seen}!") if seen == self.colour else (1, f"{seen or 'no shape'}; I wanted {self.colour}")


def rate(store: FeedbackStore, image_ids: list[int], rater) -> list[int]:
    """Let `rater` (image → (rating, comment)) rate stored images; returns the ratings."""
    ratings = []
    for image_id in image_ids:
        rating, comment = rater(store.get(image_id).image)
        store.add_feedback(image_id, rating, comment, user=getattr(rater, "name", "rater"))
        ratings.append(rating)
    return ratings


def open_colour_prompts(colour: str, held_out: bool = False) -> list[str]:
    """Prompts that name a large shape and a background but leave the object's colour open.

    The rated prompts and the held-out ones use different backgrounds (never `colour` itself), so
    "after" is measured on prompts the fine-tune never saw.
    """
    from .tiny.world import COLOUR_NAMES, SHAPES

    backgrounds = [c for c in COLOUR_NAMES if c != colour][int(held_out)::2]
    return [f"a large {shape} on {'an' if bg[0] in 'aeiou' else 'a'} {bg} background"
            for bg in backgrounds for shape in SHAPES]


def colour_counts(images) -> dict[str, int]:
    """How many images the checker reads as each object colour ("none": no object found)."""
    from .tiny.checker import read_scene
    from .tiny.world import COLOUR_NAMES

    counts = dict.fromkeys((*COLOUR_NAMES, "none"), 0)
    for image in images:
        counts[read_scene(image).colour or "none"] += 1
    return counts


def generate_batches(pipe, prompts: list[str], count: int, seed: int, **settings) -> list:
    """`count` images cycling through `prompts`, image k with seed `seed + k`, in batches of 32."""
    from .generation import generate

    prompts = [prompts[k % len(prompts)] for k in range(count)]
    results = []
    for start in range(0, count, 32):
        chunk = list(range(start, min(count, start + 32)))
        results += generate(pipe, [prompts[k] for k in chunk], seed=[seed + k for k in chunk], **settings).results
    return results


def _measure(pipe, prompts, colour, count, seed, settings) -> dict:
    """Share of `colour` objects, colour counts, and adherence to what the prompts do name."""
    from .tiny.checker import score

    results = generate_batches(pipe, prompts, count, seed, **settings)
    images, prompts = [r.image for r in results], [r.params.prompt for r in results]
    counts = colour_counts(images)
    return {"share": counts[colour] / count, "counts": counts, "images": images, "prompts": prompts,
            "adherence": score(images, prompts)}


# tried on sdlab-tiny (notebook 08): more steps shift further, but then prompts that name a colour follow it less
DEMO_CONFIG = FinetuneConfig(steps=150, learning_rate=2e-3)


def preference_demo(pipe, *, colour: str = "blue", store: FeedbackStore | None = None,
                    version: ModelVersion | None = None, rating_images: int = 128, test_images: int = 32,
                    control_images: int = 16, num_inference_steps: int = 20, guidance_scale: float = 7.5,
                    config: FinetuneConfig | None = None, models_dir: str | Path | None = None, seed: int = 0,
                    on_status=None) -> dict:
    """Rate → fine-tune → measure, on sdlab-tiny: does the model learn what the raters like?

    1. Unless `store` already holds liked images: generate `rating_images` from prompts that leave
       the colour open, store them, and let a `ColourRater(colour)` rate them.
    2. Before: the share of held-out open-colour prompts whose object the checker reads as `colour`.
    3. Unless `version` (already fine-tuned on `store`) is given: fine-tune on the liked images in
       the background, passing its FinetuneStatus to `on_status` every half second.
    4. After: the same held-out prompts and seeds with the new version. Controls: adherence to what
       the held-out prompts do name (shape, background, size), and the share of prompts that
       *name* a colour whose object has it (`control_images` held-out scenes; 0 skips it).
    Returns the numbers (shares before/after, colour counts, time) and the images.
    """
    from .tiny.evaluate import measure_adherence
    from .tiny.world import COLOUR_NAMES, held_out_scenes

    check(colour in COLOUR_NAMES, f"colour must be one of {', '.join(COLOUR_NAMES)}, got {colour!r}")
    settings = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    workdir = Path(tempfile.mkdtemp(prefix="sdlab-preference-"))
    store = store or FeedbackStore(workdir / "feedback")
    config = config or DEMO_CONFIG
    # 1. Ratings
    if version is None and not store.liked(config.min_rating):
        made = generate_batches(pipe, open_colour_prompts(colour), rating_images, seed, **settings)
        rate(store, store.add_generations(made), ColourRater(colour))
    stats = store.stats()
    # 2. Before
    held_out = open_colour_prompts(colour, held_out=True)
    before = _measure(pipe, held_out, colour, test_images, seed + 100_000, settings)
    # 3. Fine-tune in the background, watching its status
    seconds = version.info.get("seconds") if version is not None else None
    if version is None:
        job = start_finetune(pipe, store, config, models_dir=models_dir or workdir / "models")
        while job.running:
            time.sleep(0.5)
            if on_status is not None:
                on_status(job.status())
        version, seconds = job.wait(), job.status().seconds
    # 4. After, and the control
    tuned = load_version(version.folder, device=pipe.device.type)
    after = _measure(tuned, held_out, colour, test_images, seed + 100_000, settings)
    scenes = held_out_scenes(control_images, seed=seed) if control_images else []
    control = [measure_adherence(p, scenes, seed=seed + 200_000, **settings).scores["colour"] if scenes else None
               for p in (pipe, tuned)]
    return {"colour": colour, "rated": stats["ratings"], "liked": stats["liked"],
            "liked_share": stats["liked"] / max(1, stats["images"]), "before": before["share"],
            "after": after["share"], "before_counts": before["counts"], "after_counts": after["counts"],
            "named_colour_before": control[0], "named_colour_after": control[1],
            "before_adherence": before["adherence"], "after_adherence": after["adherence"],
            "finetune_seconds": seconds, "steps": version.info["config"]["steps"],
            "method": version.info["method"], "losses": version.info["losses"], "version": version, "pipe": tuned,
            "before_images": before["images"], "after_images": after["images"], "prompts": before["prompts"]}


def plot_preference(result: dict):
    """Bar chart: which colours the checker reads on the held-out prompts, before and after (a Figure)."""
    import matplotlib.pyplot as plt

    names = [n for n in result["before_counts"] if result["before_counts"][n] or result["after_counts"][n]]
    total = sum(result["before_counts"].values())
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for offset, key, label in ((-0.2, "before_counts", "before"), (0.2, "after_counts", "after fine-tuning")):
        ax.bar(x + offset, [100 * result[key][n] / total for n in names], 0.4, label=label,
               edgecolor=["black" if n == result["colour"] else "none" for n in names])
    ax.set_xticks(x, names)
    ax.set_ylabel("% of held-out images")
    ax.set_title(f"object colour on prompts that leave it open: {result['colour']} "
                 f"{100 * result['before']:.0f}% → {100 * result['after']:.0f}%")
    ax.legend()
    fig.tight_layout()
    return fig
