"""Random-weight Stable Diffusion pipelines built from configs, no download.

* `tiny-random` (tests): sizes follow diffusers' own pipeline tests (UNet block channels (4, 8),
  CLIP hidden size 32), with the real CLIP tokenizer. Weights come from a fixed seed, so every
  build is identical and takes about a second: tests can assert exact pixels.
* `sd15-random` (benchmarks): Stable Diffusion 1.5's full architecture (UNet 860 M parameters,
  CLIP ViT-L/14 text encoder, the SD VAE) with random weights: the same work per image as the
  real model, for timing without the 4 GB download. Its images are noise.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from .tokenizer import VOCAB_SIZE, load_clip_tokenizer

# Stable Diffusion 1.5's own noise schedule, so scheduler swaps behave as on the real model
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True,
                      steps_offset=1)


def build_tiny_random_pipeline(seed: int = 0, dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """A complete StableDiffusionPipeline with seeded random weights (~2 M parameters)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, norm_num_groups=2, attention_head_dim=2,
        )
        vae = AutoencoderKL(
            block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32,
            intermediate_size=37, layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2,
            vocab_size=VOCAB_SIZE, max_position_embeddings=77,
        ))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=load_clip_tokenizer(), unet=unet,
        scheduler=PNDMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    if dtype != torch.float32:  # built in float32; cast only when asked
        for module in (unet, vae, text_encoder):
            module.to(dtype)
    return pipe


def build_sd15_random_pipeline(seed: int = 0, dtype: torch.dtype = torch.float32,
                               device: str | torch.device = "cpu") -> StableDiffusionPipeline:
    """Stable Diffusion 1.5's architecture with seeded random weights (built on `device`, which
    is much faster on a GPU than building on the CPU and moving)."""
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        # SD 1.5: 320/640/1280/1280
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=768, intermediate_size=3072,
            num_attention_heads=12, num_hidden_layers=12, projection_dim=768, hidden_act="quick_gelu",
            vocab_size=VOCAB_SIZE, max_position_embeddings=77,
        ))
    for module in (unet, vae, text_encoder):
        module.to(dtype).eval()
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=load_clip_tokenizer(), unet=unet,
        scheduler=PNDMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
