"""sdlab-tiny's settings as plain dataclasses: the model's sizes and the training recipe.

Kept apart from the code that uses them so the `sdlab` command can show the defaults without
importing torch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import check


@dataclass
class TinyConfig:
    """Sizes of sdlab-tiny's components (plain numbers, saved with every checkpoint)."""

    image_size: int = 64
    vae_channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 128)
    unet_layers_per_block: int = 1
    #: The UNet's first convolution. Wider than the latents (16), so that its zero padding gives
    #: every latent cell a different view: the UNet's only sense of where it is in the image,
    #: which "top left" needs (with 3x3, position stayed at chance).
    unet_conv_in_kernel: int = 17
    attention_heads: int = 4
    text_width: int = 64
    text_layers: int = 3
    text_heads: int = 4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TinyConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


COMPILE_BACKENDS = ("inductor", "aot_eager")


@dataclass
class TrainConfig:
    """How long and how hard to train (the model's sizes are in `TinyConfig`)."""

    out_dir: str = "runs/sdlab-tiny"
    vae_steps: int = 2500
    unet_steps: int = 4400
    batch_size: int = 32
    vae_lr: float = 1e-3
    unet_lr: float = 5e-4
    warmup_steps: int = 200
    caption_dropout: float = 0.1  # share of empty captions: what "no prompt" looks like, for guidance
    #: share of samples whose end-of-text and padding positions get the empty prompt's embeddings. CLIP's
    #: left-to-right encoder fills those positions with a summary of the whole prompt; without it the
    #: UNet must read the words' own positions. Measured on v4 (model card): 600 steps at 0.5 left the
    #: colour word's attention map as even as before, because the positions after a word carry it too
    summary_dropout: float = 0.0
    object_weight: float = 10.0  # VAE loss weight on object pixels (small shapes must survive)
    kl_weight: float = 1e-6
    high_noise_share: float = 0.3  # extra samples at high noise, where layout and position are decided
    high_noise_from: float = 0.7  # ... drawn from the timesteps above this fraction of the schedule
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    eval_every: int = 2000  # measure held-out adherence with the EMA weights this often
    vae_eval_count: int = 256  # held-out renders the VAE is measured on before the UNet trains (the gate)
    data_workers: int = 0  # processes rendering batches ahead (0: render in the training process)
    compile: bool = False  # torch.compile the UNet and text encoder's training passes (fewer, fused kernels)
    #: torch.compile's backend: "inductor" generates fused kernels; "aot_eager" traces the forward and
    #: backward passes as inductor does but runs them with PyTorch's own kernels (no code generated: seconds)
    compile_backend: str = "inductor"
    vae_from: str | None = None  # a diffusers folder whose trained VAE to keep (skips phase 1)
    #: with vae_from or init_from: train that VAE this many steps on this world first (0: keep it as it is);
    #: v4's world has shading and texture that v3's VAE, trained on flat colours, blurs
    vae_finetune_steps: int = 0
    init_from: str | None = None  # a diffusers folder to start all three models from (a fine-tune)
    #: v4's world: web-like caption noise and an unnamed look per image (`sdlab.tiny.captions`);
    #: False trains on v3's always-right captions and flat renders
    web_world: bool = True
    seed: int = 0
    mixed_precision: str = "bf16"  # "no" for full float32
    model: TinyConfig = field(default_factory=TinyConfig)

    def checked(self) -> "TrainConfig":
        """This config, after checking every value (a SdlabInputError names the wrong one)."""
        for name in ("vae_steps", "unet_steps", "warmup_steps", "data_workers", "vae_finetune_steps"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 0, f"{name} must be a whole number, 0 or more, got {value!r}")
        for name in ("batch_size", "checkpoint_every", "eval_every", "vae_eval_count"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, f"{name} must be a whole number, 1 or more, got {value!r}")
        for name in ("vae_lr", "unet_lr"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and 0 < value <= 1, f"{name} must be above 0 and at most 1, "
                                                                       f"got {value!r}")
        check(0 <= self.caption_dropout < 1 and 0 <= self.ema_decay < 1,
              f"caption_dropout and ema_decay must be in [0, 1), got {self.caption_dropout} and {self.ema_decay}")
        check(isinstance(self.summary_dropout, (int, float)) and 0 <= self.summary_dropout <= 1,
              f"summary_dropout must be in [0, 1], got {self.summary_dropout!r}")
        check(self.mixed_precision in ("no", "bf16"), f"mixed_precision must be 'no' or 'bf16', got "
                                                      f"{self.mixed_precision!r}")
        check(0 <= self.high_noise_share <= 1 and 0 <= self.high_noise_from < 1,
              f"high_noise_share must be in [0, 1] and high_noise_from in [0, 1), got {self.high_noise_share} and "
              f"{self.high_noise_from}")
        check(self.compile_backend in COMPILE_BACKENDS, f"compile_backend must be one of "
                                                        f"{', '.join(COMPILE_BACKENDS)}, got {self.compile_backend!r}")
        kernel = self.model.unet_conv_in_kernel
        check(kernel >= 1 and kernel % 2 == 1, f"the conv_in kernel must be odd (3, 17, ...) to keep the latent "
                                               f"size, got {kernel}")
        return self
