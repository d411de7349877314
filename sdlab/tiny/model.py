"""sdlab-tiny's architecture: Stable Diffusion's parts (CLIP text encoder, UNet2DConditionModel,
AutoencoderKL, a diffusers scheduler), scaled down for 64×64 images and a 2-core CPU.

Differences from SD 1.5, each for a reason:
* the VAE shrinks 4× (not 8×): 64 px images → 4×16×16 latents, enough room for small shapes;
* a cosine noise schedule whose last step is (almost) pure noise, with v-prediction, so the
  model has really seen pure noise — the image's colours and layout then come from the prompt,
  not from leftovers in the noise; it samples with SD 1.5's "leading" timestep spacing, so that
  few steps look unfinished as they do on SD 1.5;
* `train-tiny` makes the UNet's first convolution 17x17 (v1 and v2 have SD's 3x3), wider than
  the 16x16 latents: convolutions do not know where they are, and its zero padding is what
  tells each cell its place (with 3x3, the words "top left" had no effect; see the model card);
* the text also enters the UNet's timestep embedding (`addition_embed_type="text"`), a global
  path that makes colours and background follow the prompt quickly.
"""
from __future__ import annotations

import math

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ..tokenizer import VOCAB_SIZE
from .config import TinyConfig

#: The noise schedule sdlab-tiny is trained with (cosine, v-prediction), and how its default DDIM
#: sampler spaces its steps: "trailing", so every step count starts at t = 999, where this schedule has
#: no signal left. Measured on v4 (64 held-out prompts, guidance 7.5, distance to the 50-step image):
#: trailing 22.6, 19.3, 14.9, 11.6, 7.9, 4.2, 2.3 /255 at 1, 2, 3, 5, 8, 13, 20 steps, a blurred or broken
#: image settling into the finished one; SD 1.5's "leading" spacing 98, 92, 88, 86, 69, 56, 24, because
#: 20 steps start at t = 951 and 50 at t = 981, the noise is read as a faint image, and the layout
#: changes with the step count (the model card has both curves).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
    timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    skip_prk_steps=True,  # as SD 1.5's: PNDM goes straight to its multistep part, so it runs 1 to 3 steps too
)


def build_vae(cfg: TinyConfig) -> AutoencoderKL:
    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        block_out_channels=cfg.vae_channels, layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        sample_size=cfg.image_size,
    )


def build_unet(cfg: TinyConfig) -> UNet2DConditionModel:
    factor = 2 ** (len(cfg.vae_channels) - 1)
    return UNet2DConditionModel(
        sample_size=cfg.image_size // factor, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        block_out_channels=cfg.unet_channels, layers_per_block=cfg.unet_layers_per_block,
        conv_in_kernel=cfg.unet_conv_in_kernel,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cfg.text_width, attention_head_dim=cfg.attention_heads, norm_num_groups=8,
        addition_embed_type="text", addition_embed_type_num_heads=cfg.text_heads,
    )


def build_text_encoder(cfg: TinyConfig) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, max_position_embeddings=77,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_act="quick_gelu",
    ))


def build_scheduler() -> DDIMScheduler:
    # from_config keeps PNDM's skip_prk_steps in the saved config, where every scheduler swapped in finds it
    return DDIMScheduler.from_config(SCHEDULER_CONFIG)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def widen_conv_in(state: dict, kernel: int, seed: int = 0) -> dict:
    """A UNet state dict whose `conv_in` kernel is widened to `kernel` x `kernel`: the old kernel in
    the centre, the new outer taps small and random (PyTorch's initial scale for a kernel that size).

    Not zeros: on pure noise the outer taps tell a cell where it is only through the variance they
    add at the borders, which grows with their square, so at zero their gradient is nil (a fine-tune
    from zero taps left position at chance after 3,000 steps). With small random taps, v2's UNet
    learned the model card's one-attribute position task in 1,000 steps.
    """
    weight = state["conv_in.weight"]
    out_channels, in_channels, size = weight.shape[0], weight.shape[1], weight.shape[-1]
    pad = (kernel - size) // 2
    if pad < 0 or size + 2 * pad != kernel:
        raise ValueError(f"cannot widen a {size}x{size} conv_in to {kernel}x{kernel}")
    if pad == 0:
        return state
    bound = 1 / math.sqrt(in_channels * kernel * kernel)
    generator = torch.Generator().manual_seed(seed)
    wide = (torch.rand(out_channels, in_channels, kernel, kernel, generator=generator) * 2 - 1) * bound
    wide[..., pad:pad + size, pad:pad + size] = weight
    return state | {"conv_in.weight": wide.to(weight.dtype)}
