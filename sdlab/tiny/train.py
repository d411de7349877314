"""Training sdlab-tiny: first the VAE (the gate: its reconstructions must keep shapes and
colours), then the UNet and text encoder together, with caption dropout so classifier-free
guidance works, and an EMA of the weights (which samples much better early on).

Runs with accelerate on the CPU or a GPU; checkpoints as it goes and resumes from the last
one. `sdlab train-tiny --out runs/sdlab-tiny` is the whole recipe.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import CLIPTextModel

from ..errors import SdlabInputError, check, writable_folder
from ..pipelines import part_is_whole
from ..tokenizer import load_clip_tokenizer
from .captions import batch_tensors
from .config import TinyConfig, TrainConfig
from .evaluate import measure_adherence, reconstruction_accuracy
from .model import build_scheduler, build_text_encoder, build_unet, build_vae, widen_conv_in
from .world import held_out_scenes


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


class _EMA:
    """Exponential moving average of a module's weights (a frozen copy, updated in place)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(module).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # warm-up: follow closely at first
        ema_params = list(self.module.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in module.parameters()], 1 - decay)


def without_summary(text: torch.Tensor, ids: torch.Tensor, empty: torch.Tensor, eos_id: int,
                    chosen: torch.Tensor) -> torch.Tensor:
    """The text embeddings with, for the `chosen` samples, every position from the first end-of-text
    token on taken from `empty` (the empty prompt's embeddings, 1 x positions x width): only the
    word positions still say what the caption says."""
    positions = torch.arange(ids.shape[1], device=ids.device)
    end = (ids == eos_id).int().argmax(dim=1)  # the first end token (the padding repeats it)
    replace = chosen[:, None] & (positions[None] >= end[:, None])
    return torch.where(replace[..., None], empty.to(text.dtype), text)


def _token_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


class _Batches(torch.utils.data.Dataset):
    """Training batch number `step`: images, then the captions' token ids (UNet phase) or object
    masks (VAE phase). The same for a given step whichever process renders it, so rendering and
    tokenizing in worker processes changes no result and keeps that work off the training loop."""

    def __init__(self, config: TrainConfig, phase: str):
        self.cfg, self.phase = config, phase
        self.tokenizer = None  # loaded where it is used: in the worker

    def __len__(self) -> int:
        return 10**12

    def __getitem__(self, step: int):
        cfg = self.cfg
        seed = (cfg.seed * 1_000_003 + step) * (2 if self.phase == "vae" else 3)
        batch = batch_tensors(cfg.batch_size, seed=seed, size=cfg.model.image_size, web=cfg.web_world,
                              masks=self.phase == "vae")
        if self.phase == "vae":
            return batch[0], batch[3]  # images and their object masks
        images, captions = batch[:2]
        if self.tokenizer is None:
            self.tokenizer = load_clip_tokenizer()
        return images, _token_ids(self.tokenizer, captions)


class _StepsToDeadline:
    """How many steps fit before a deadline, measured: times the steps after a warm-up (the first
    20 steps, or a tenth of the time left if that ends sooner: allocation, workers starting) for
    300 steps or another tenth of the time, whichever ends first."""

    def __init__(self, step: int, deadline: float):
        self.window = (deadline - time.time()) / 10
        self.first, self.warm_until, self.started, self.deadline = step + 20, time.time() + self.window, None, deadline
        self.rate = 0.0

    def fit(self, step: int) -> int | None:
        """The total step count once measured (the 2 % margin keeps the last steps in time), else None."""
        now = time.time()
        if self.started is None:
            if step >= self.first or now >= self.warm_until:  # warmed up: measure from here
                self.first, self.started = step, now
            return None
        if step < self.first + 300 and now - self.started <= self.window:
            return None
        self.rate = (step - self.first) / (now - self.started)
        return step + max(1, int(self.rate * (self.deadline - now) * 0.98))


def _check_parts(option: str, folder: str | None, parts: tuple[str, ...]) -> None:
    """Refuse, before training, a pipeline folder that lacks one of `parts` (its config or weights)."""
    for part in parts if folder else ():
        check(part_is_whole(Path(folder), part), f"{option} {folder} has no whole {part}/ (config.json and its "
                                                 f"weights): give a pipeline folder that export_pipeline wrote, "
                                                 f"e.g. models/sdlab-tiny")


class Trainer:
    """Holds the models, optimizers and progress; `run()` trains what is left and resumes."""

    def __init__(self, config: TrainConfig):
        self.cfg = config.checked()  # before anything is made
        self.out = writable_folder(config.out_dir, "--out")
        _check_parts("--vae-from", config.vae_from, ("vae",))
        _check_parts("--init-from", config.init_from, ("vae", "unet", "text_encoder"))
        # precision is set by `autocast` below, not in accelerate's process-wide state, so other
        # training in the same process (a fine-tune, a notebook) keeps its own
        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        torch.manual_seed(config.seed)
        self.tokenizer = load_clip_tokenizer()
        self.scheduler = build_scheduler()
        self.vae = build_vae(config.model)
        self.unet = build_unet(config.model)
        self.text_encoder = build_text_encoder(config.model)
        # fused: one kernel for all ~400 small weight tensors (the tiny model's steps are launch-bound)
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=config.vae_lr, weight_decay=0.0, fused=True)
        self.unet_opt = torch.optim.AdamW(list(self.unet.parameters()) + list(self.text_encoder.parameters()),
                                          lr=config.unet_lr, weight_decay=0.01, fused=True)
        self.vae_step = 0
        self.unet_step = 0
        if config.vae_finetune_steps and (config.init_from or config.vae_from):
            config.vae_steps = config.vae_finetune_steps  # phase 1 fine-tunes the given VAE
        fresh = not self.checkpoint_path.exists()  # a resumed run has its own weights
        if config.init_from and fresh:
            self._start_from(config.init_from)
        self.unet_ema = _EMA(self.unet, config.ema_decay)
        self.text_ema = _EMA(self.text_encoder, config.ema_decay)
        self._load_checkpoint()
        if config.vae_from and fresh:
            self._keep_trained_vae(config.vae_from)
        self.vae, self.unet, self.text_encoder, self.vae_opt, self.unet_opt = self.acc.prepare(
            self.vae, self.unet, self.text_encoder, self.vae_opt, self.unet_opt)
        self.device = self.acc.device
        self.unet_ema.module.to(self.device)
        self.text_ema.module.to(self.device)

    # -- checkpoints ----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def _load_checkpoint(self) -> None:
        if not self.checkpoint_path.exists():
            return
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - torch raises many kinds for a damaged file
            raise SdlabInputError(f"{self.checkpoint_path} cannot be read ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0][:200]}): train into another --out, or remove it to "
                                  f"start over") from None
        saved = state.get("config", {}).get("model")
        # checkpoints from before `unet_conv_in_kernel` existed had SD's 3x3
        if saved and TinyConfig.from_dict({"unet_conv_in_kernel": 3} | saved) != self.cfg.model:
            raise SdlabInputError(f"{self.checkpoint_path} was made with other model sizes ({saved}): resume "
                                  f"with the same options (e.g. --conv-in-kernel) or train into another --out")
        for name in ("vae", "unet", "text_encoder", "vae_opt", "unet_opt"):
            getattr(self, name).load_state_dict(state[name])
        self.unet_ema.module.load_state_dict(state["unet_ema"])
        self.text_ema.module.load_state_dict(state["text_ema"])
        self.vae_step, self.unet_step = state["vae_step"], state["unet_step"]
        if "scaling_factor" in state:
            self.vae.register_to_config(scaling_factor=state["scaling_factor"])

    def _keep_trained_vae(self, folder: str) -> None:
        """Start from the VAE of an exported pipeline (phase 1 done): retrain only what comes after."""
        if not (Path(folder) / "vae" / "config.json").is_file():
            raise SdlabInputError(f"{folder} has no vae/ folder; give a diffusers pipeline folder such as "
                                  f"models/sdlab-tiny")
        trained = AutoencoderKL.from_pretrained(folder, subfolder="vae")
        if list(trained.config.block_out_channels) != list(self.vae.config.block_out_channels):
            raise SdlabInputError(f"the VAE in {folder} has channels {trained.config.block_out_channels}, this model "
                             f"{self.vae.config.block_out_channels}: give a folder made with the same TinyConfig")
        self.vae.load_state_dict(trained.state_dict())
        self.vae.register_to_config(scaling_factor=trained.config.scaling_factor)
        self.vae_step = 0 if self.cfg.vae_finetune_steps else self.cfg.vae_steps

    def _start_from(self, folder: str) -> None:
        """Fine-tune an exported pipeline: its VAE is kept, its UNet and text encoder train on (a
        narrower `conv_in` is widened, see `widen_conv_in`)."""
        self._keep_trained_vae(folder)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict()
        text = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").state_dict()
        try:
            self.unet.load_state_dict(widen_conv_in(unet, self.cfg.model.unet_conv_in_kernel, self.cfg.seed))
            self.text_encoder.load_state_dict(text)
        except (RuntimeError, ValueError) as error:
            raise SdlabInputError(f"the model in {folder} has other sizes than this TinyConfig: give a folder made "
                                  f"with the same sizes ({str(error).splitlines()[0]})") from None

    def save_checkpoint(self) -> None:
        unwrap = self.acc.unwrap_model
        state = {name: unwrap(getattr(self, name)).state_dict() for name in ("vae", "unet", "text_encoder")}
        state |= {"vae_opt": self.vae_opt.state_dict(), "unet_opt": self.unet_opt.state_dict(),
                  "unet_ema": self.unet_ema.module.state_dict(), "text_ema": self.text_ema.module.state_dict(),
                  "vae_step": self.vae_step, "unet_step": self.unet_step,
                  "scaling_factor": unwrap(self.vae).config.scaling_factor,
                  "config": asdict(self.cfg)}
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)  # atomic: a crash never leaves half a checkpoint

    def log(self, **values) -> None:
        with open(self.out / "train.log", "a") as f:
            f.write(json.dumps(values) + "\n")

    def autocast(self):
        """bfloat16 autocast for the forward passes when `mixed_precision="bf16"`."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.mixed_precision == "bf16")

    # -- data -----------------------------------------------------------------------------
    def batches(self, start: int, phase: str):
        """`_Batches` for step `start`, `start + 1`, … on the device (rendered ahead by workers)."""
        workers = self.cfg.data_workers
        loader = torch.utils.data.DataLoader(
            _Batches(self.cfg, phase), batch_size=None, sampler=itertools.count(start), num_workers=workers,
            prefetch_factor=4 if workers else None, persistent_workers=False, pin_memory=torch.cuda.is_available())
        for images, other in loader:
            yield images.to(self.device, non_blocking=True), other.to(self.device, non_blocking=True)

    # -- phase 1: the VAE -----------------------------------------------------------------
    def train_vae(self, deadline: float) -> None:
        cfg = self.cfg
        vae = self.vae.train()
        bar = tqdm(total=cfg.vae_steps, initial=self.vae_step, desc="VAE", disable=None)
        data = self.batches(self.vae_step, "vae")
        while self.vae_step < cfg.vae_steps and time.time() < deadline:
            images, masks = next(data)
            weight = 1 + (cfg.object_weight - 1) * masks[:, None].float()
            for group in self.vae_opt.param_groups:
                group["lr"] = _lr_at(self.vae_step, cfg.vae_steps, cfg.vae_lr, cfg.warmup_steps)
            with self.autocast():
                posterior = vae.encode(images).latent_dist
                recon = vae.decode(posterior.mode()).sample.float()  # decoder learns from the mean
                err = recon - images
                loss = (weight * err.abs()).mean() + (weight * err.square()).mean()
                loss = loss + cfg.kl_weight * posterior.kl().mean()
            self.acc.backward(loss)
            self.vae_opt.step()
            self.vae_opt.zero_grad(set_to_none=True)
            self.vae_step += 1
            bar.update(1)
            if self.vae_step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
                self.log(phase="vae", step=self.vae_step, loss=loss.item(), time=time.time())
            if self.vae_step % cfg.checkpoint_every == 0 or self.vae_step == cfg.vae_steps:
                self._set_scaling_factor()
                self.save_checkpoint()
        bar.close()

    @torch.no_grad()
    def _set_scaling_factor(self) -> None:
        """Scale latents to unit variance, as SD's 0.18215 does for its VAE."""
        vae = self.acc.unwrap_model(self.vae)
        images, _ = _Batches(self.cfg, "vae")[10**9]
        std = vae.encode(images.to(self.device)).latent_dist.mode().float().std().item()
        vae.register_to_config(scaling_factor=1.0 / std)

    # -- phase 2: UNet and text encoder ---------------------------------------------------
    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n timesteps on the generator's device, drawn there without waiting for it (no
        data-dependent sizes): uniform, or from the top of the schedule for `high_noise_share`."""
        steps, device = self.scheduler.config.num_train_timesteps, generator.device
        t = torch.randint(0, steps, (n,), generator=generator, device=device)
        top = torch.randint(int(steps * self.cfg.high_noise_from), steps, (n,), generator=generator, device=device)
        return torch.where(torch.rand(n, generator=generator, device=device) < self.cfg.high_noise_share, top, t)

    def train_unet(self, deadline: float, fit_to_deadline: bool = False) -> None:
        cfg = self.cfg
        vae = self.acc.unwrap_model(self.vae).eval().requires_grad_(False)
        scaling = vae.config.scaling_factor
        unet, text_encoder = self.unet.train(), self.text_encoder.train()
        # compiled calls share the modules' weights; checkpoints and the EMA see the plain modules
        unet_call, text_call = (torch.compile(unet, backend=cfg.compile_backend),
                                torch.compile(text_encoder, backend=cfg.compile_backend)) if cfg.compile \
            else (unet, text_encoder)
        # random numbers drawn on the device: copying them there each step would make the CPU wait for the GPU
        generator = torch.Generator(self.device).manual_seed(cfg.seed + self.unet_step)
        alphas = self.scheduler.alphas_cumprod.to(self.device)
        empty_ids = _token_ids(self.tokenizer, [""]).to(self.device)  # a dropped caption: what "no prompt" is
        bar = tqdm(total=cfg.unet_steps, initial=self.unet_step, desc="UNet", disable=None)
        data = self.batches(self.unet_step, "unet")
        fitter = _StepsToDeadline(self.unet_step, deadline) if fit_to_deadline else None
        while self.unet_step < cfg.unet_steps and time.time() < deadline:
            if fitter and (total := fitter.fit(self.unet_step)):
                cfg.unet_steps = bar.total = total
                self.log(phase="schedule", step=self.unet_step, unet_steps=total, steps_per_s=fitter.rate)
                fitter = None
            images, ids = next(data)
            drop = torch.rand(len(ids), generator=generator, device=self.device) < cfg.caption_dropout
            ids = torch.where(drop[:, None], empty_ids, ids)
            no_summary = torch.rand(len(ids), generator=generator, device=self.device) < cfg.summary_dropout
            for group in self.unet_opt.param_groups:
                group["lr"] = _lr_at(self.unet_step, cfg.unet_steps, cfg.unet_lr, cfg.warmup_steps)
            with torch.no_grad():
                latents = vae.encode(images).latent_dist.mode() * scaling
            noise = torch.randn(latents.shape, generator=generator, device=self.device)
            t = self.sample_timesteps(len(ids), generator)
            a = alphas[t].sqrt()[:, None, None, None]
            s = (1 - alphas[t]).sqrt()[:, None, None, None]
            noisy, target = a * latents + s * noise, a * noise - s * latents  # v-prediction target
            with self.autocast():
                text = text_call(ids)[0]
                if cfg.summary_dropout:
                    text = without_summary(text, ids, text_call(empty_ids)[0], self.tokenizer.eos_token_id,
                                           no_summary)
                pred = unet_call(noisy, t, text).sample
                loss = F.mse_loss(pred.float(), target)
            self.acc.backward(loss)
            self.acc.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
            self.unet_opt.step()
            self.unet_opt.zero_grad(set_to_none=True)
            self.unet_ema.update(self.acc.unwrap_model(unet), self.unet_step)
            self.text_ema.update(self.acc.unwrap_model(text_encoder), self.unet_step)
            self.unet_step += 1
            bar.update(1)
            if self.unet_step % 50 == 0:  # reading the loss waits for the GPU: not every step
                bar.set_postfix(loss=f"{loss.item():.4f}")
                self.log(phase="unet", step=self.unet_step, loss=loss.item(), time=time.time())
            if self.unet_step % cfg.checkpoint_every == 0 or self.unet_step == cfg.unet_steps:
                self.save_checkpoint()
            if self.unet_step % cfg.eval_every == 0:
                self.evaluate()
        bar.close()

    def evaluate(self, count: int = 48) -> None:
        """Log held-out adherence of the current EMA weights (20 steps, guidance 7.5)."""
        result = measure_adherence(self.pipeline().to(self.device), held_out_scenes(count, seed=1))
        self.log(phase="eval", step=self.unet_step, **result.scores, time=time.time())

    # -- the result -----------------------------------------------------------------------
    def pipeline(self, ema: bool = True):
        """A StableDiffusionPipeline made of the current (EMA) weights, in float32 on the CPU."""
        from diffusers import StableDiffusionPipeline  # heavy: diffusers' pipeline classes load only to export

        unwrap = self.acc.unwrap_model
        unet = copy.deepcopy(self.unet_ema.module if ema else unwrap(self.unet)).float().cpu().eval()
        text = copy.deepcopy(self.text_ema.module if ema else unwrap(self.text_encoder)).float().cpu().eval()
        vae = copy.deepcopy(unwrap(self.vae)).float().cpu().eval()
        # a fresh tokenizer: the training one keeps the padding it last used, and saving would store it
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=load_clip_tokenizer(), unet=unet,
                                       scheduler=build_scheduler(), safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        pipe.sdlab_model_name = "sdlab-tiny"
        return pipe

    def run(self, minutes: float | None = None, fit_to_deadline: bool = False) -> None:
        """Train what is left; stop after `minutes`. `fit_to_deadline`: measure the speed, then set
        the UNet's step count so its LR schedule completes in the time (a fixed-time recipe)."""
        if fit_to_deadline and not minutes:
            raise ValueError("fit_to_deadline needs minutes: the time the UNet's schedule should fill")
        deadline = time.time() + (minutes * 60 if minutes else float("inf"))
        self.train_vae(deadline)
        if self.vae_step >= self.cfg.vae_steps and self.unet_step == 0:
            self.log(phase="vae_eval", step=self.vae_step, **reconstruction_accuracy(
                self.acc.unwrap_model(self.vae), count=self.cfg.vae_eval_count, web=self.cfg.web_world))
        if self.vae_step >= self.cfg.vae_steps:
            self.train_unet(deadline, fit_to_deadline)
        self.save_checkpoint()


def export_pipeline(pipe, out_dir: str | Path, round_to_half: bool = True) -> Path:
    """Save a pipeline as a diffusers folder of float32 safetensors.

    Stored float32 so plain `from_pretrained` works: transformers loads the text encoder in its
    stored dtype, and a float16 text encoder beside a float32 UNet fails. `round_to_half` rounds
    the weights to float16 precision first (what the shipped model has; nothing measurable lost).
    """
    out = Path(out_dir)
    if round_to_half:
        pipe = copy.deepcopy(pipe)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.half().float()
    pipe.save_pretrained(out, safe_serialization=True)
    return out
