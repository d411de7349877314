"""Fine-tuning a copy of a pipeline's UNet on liked images (LoRA via peft, or every weight),
with the training step sdlab-tiny was trained with, saved as a new model version."""
from __future__ import annotations

import copy
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ..errors import check, is_number, is_whole, writable_folder
from ..feedback import LIKED, now
from ..pipelines import _loading_bars, _progress_enabled, _quiet_diffusers, model_name
from ..presets import check_version_name, find_preset
from .examples import encode_examples, training_examples
from .versions import ModelVersion, _publish, _slug, read_version

LORA_FILE = "pytorch_lora_weights.safetensors"
# LoRA beside the attention and feed-forward layers, the ResNet convolutions and time projections, and
# (in sdlab-tiny) the prompt's path into the timestep embedding; names missing in a model are skipped
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "time_emb_proj", "add_embedding.proj")
FULL_SAVE_MAX_PARAMETERS = 100_000_000  # below this the version folder also holds a whole pipeline


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
        check(is_whole(self.steps) and 1 <= self.steps <= 100_000,
              f"steps must be 1–100000, got {self.steps!r}")
        check(is_whole(self.batch_size) and self.batch_size >= 1,
              f"batch_size must be ≥ 1, got {self.batch_size!r}")
        check(is_whole(self.rank) and 1 <= self.rank <= 256,
              f"rank must be 1–256, got {self.rank!r}; 4–16 is typical")
        check(self.learning_rate is None
              or (is_number(self.learning_rate) and 0 < self.learning_rate <= 1),
              f"learning_rate must be above 0 and at most 1, got {self.learning_rate!r}; None picks 1e-3 for LoRA, "
              f"1e-4 for full")
        check(all(is_number(v) for v in (self.caption_dropout, self.high_noise_share))
              and 0 <= self.caption_dropout < 1 and 0 <= self.high_noise_share <= 1,
              f"caption_dropout and high_noise_share are shares between 0 and 1, got {self.caption_dropout!r} "
              f"and {self.high_noise_share!r}")
        check(is_whole(self.seed) and 0 <= self.seed < 2**63,
              f"seed must be a whole number ≥ 0, got {self.seed!r}")
        check(not isinstance(self.target_modules, str) and len(self.target_modules) > 0
              and all(isinstance(m, str) for m in self.target_modules),
              f"target_modules must be a list of layer names, e.g. ('to_q', 'to_v'), got {self.target_modules!r}")
        return self

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-3 if self.method == "lora" else 1e-4


# ---- one training step, the recipe of sdlab.tiny.train ------------------------------------

def noise_scheduler_for(pipe):
    """A DDPM scheduler with the pipeline's noise schedule and prediction type, for training."""
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


# ---- fine-tuning ---------------------------------------------------------------------------

def finetune(pipe, examples, config: FinetuneConfig | None = None, *, models_dir: str | Path,
             name: str | None = None, on_step=None, should_stop=None) -> ModelVersion:
    """Fine-tune a copy of `pipe`'s UNet on `examples` and save it as the next version of `name`.

    examples: a FeedbackStore, a folder of images with their captions or (image, prompt) pairs
    (`training_examples`; one prompt for all of a folder's images: `folder_examples(folder, prompt)`).
    name: what the versions are called, e.g. "my-dog" (its versions load as "my-dog-v1", …); None:
    the name of the version `pipe` is, else "<model>-feedback".
    on_step(step, loss) is called after every step; should_stop() → True cancels the run.
    `pipe` itself is never changed; the new model is loaded with `load_version(version.folder)`.
    """
    from accelerate import Accelerator  # heavy: accelerate loads only when training starts

    # 1. Check inputs, before any training: where the version goes too
    config = (config or FinetuneConfig()).checked()
    examples = training_examples(examples, config.min_rating)
    name = check_version_name(name) if name is not None else default_name(pipe)
    noise_scheduler = noise_scheduler_for(pipe)
    base = base_model(pipe, config)
    models_dir = writable_folder(models_dir, "models_dir")
    _check_targets(pipe.unet, config)
    start = time.perf_counter()

    # 2. Encode the examples once (the VAE and text encoder stay frozen)
    latents, text = encode_examples(pipe, examples)
    empty = pipe.encode_prompt([""], pipe.device, 1, False)[0].float()

    # 3. The UNet to train: a float32 copy, with LoRA adapters or every weight trainable
    acc = Accelerator(cpu=pipe.device.type == "cpu")
    unet = copy.deepcopy(pipe.unet).float()
    if config.method == "lora":
        from peft import LoraConfig  # optional dependency (the finetune extra: peft)

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
    info = {"base_model": base, "method": config.method, "config": asdict(config), "examples": len(examples),
            "image_ids": [e.image_id for e in examples if e.image_id is not None], "losses": losses,
            "seconds": round(time.perf_counter() - start, 2), "created_at": now()}
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=models_dir))  # published only once complete
    try:
        with _loading_bars(_progress_enabled(None)):
            _save(pipe, unet, config, tmp)
        return _publish(tmp, models_dir, name, info)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; removed if saving failed


def base_model(pipe, config: FinetuneConfig) -> str:
    """What a version of `pipe` fine-tuned so will be loaded on: its model (a folder by its whole
    path, so that it loads from anywhere). A version saved as LoRA weights alone needs a base that
    loads without it, so a pipeline that carries LoRA weights is refused."""
    name = model_name(pipe)
    check(not getattr(pipe.unet, "peft_config", None),
          f"{name} carries LoRA weights: fine-tune the model they were made for (load_pipeline(base)) with "
          f"all the liked images, or save the pipeline with them fused in first (pipe.fuse_lora(); "
          f"pipe.unload_lora_weights(); pipe.save_pretrained(folder)) and fine-tune that folder")
    version = getattr(pipe, "sdlab_version", None)  # loaded by its label, its folder, or load_version
    folder = version.folder if version is not None else Path(name)
    if find_preset(name) is None and folder.is_dir():
        check((folder / "model_index.json").is_file() or not _saved_as_lora_only(pipe, config),
              f"{name} is a version saved as LoRA weights alone: fine-tune its base model instead")
        return str(folder.resolve())
    return name


def _saved_as_lora_only(pipe, config: FinetuneConfig) -> bool:
    return config.method == "lora" and sum(p.numel() for p in pipe.unet.parameters()) > FULL_SAVE_MAX_PARAMETERS


def default_name(pipe, purpose: str = "feedback") -> str:
    """A fine-tune of a version (loaded by its label or folder) is the next version of its name; of
    another model, the first of "<model>-<purpose>" ("-feedback" for liked images, "-ft" for one's own)."""
    version = getattr(pipe, "sdlab_version", None) or read_version(model_name(pipe))
    return version.name if version is not None else f"{_slug(model_name(pipe))}-{purpose}"


def _check_targets(unet, config: FinetuneConfig) -> None:
    if config.method == "lora":  # peft's rule: a layer whose name is, or ends with ".", a target
        names = [name for name, _ in unet.named_modules()]
        check(any(name == t or name.endswith(f".{t}") for t in config.target_modules for name in names),
              f"no layer of this UNet is named like {list(config.target_modules)}: use names such as 'to_q', "
              f"'to_v', 'conv1' (the default targets all of {list(LORA_TARGETS)})")


def _save(pipe, unet, config: FinetuneConfig, folder: Path) -> None:
    """LoRA weights in diffusers' format (`pipe.load_lora_weights(folder)`), and for small models a
    whole pipeline with them merged in (`load_pipeline(folder)`); for "full", the pipeline only."""
    if config.method == "full":
        unet = unet if unet.dtype == pipe.unet.dtype else unet.to(pipe.unet.dtype)
        _with_unet(pipe, unet).save_pretrained(folder, safe_serialization=True)
        return
    from peft.utils import get_peft_model_state_dict  # optional dependency (the finetune extra: peft)

    # peft's key names: diffusers reads them back exactly, time_emb_proj adapters included
    type(pipe).save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet),
                                 unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
                                 safe_serialization=True)
    if not _saved_as_lora_only(pipe, config):
        merged = _with_unet(pipe, copy.deepcopy(pipe.unet).float())  # checked in float32, as it was trained
        with _quiet_diffusers():
            merged.load_lora_weights(str(folder))  # the saved file, loaded as any user would load it
        merged.fuse_lora()
        merged.unload_lora_weights()
        _check_same(unet, merged.unet)
        merged.unet.to(pipe.unet.dtype)
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


def _with_unet(pipe, unet):
    """A pipeline of `pipe`'s components with another UNet (nothing else is copied)."""
    return type(pipe)(**{**pipe.components, "unet": unet}, requires_safety_checker=pipe.safety_checker is not None)
