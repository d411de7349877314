"""Where each word acts: cross-attention heat maps, DAAM-style (notebook 04).

In every cross-attention layer of the UNet, each latent pixel asks "which of the 77 prompt
positions matter to me?" and spreads a weight of 1 over them (a softmax). Adding up, for one word,
the weight every pixel gives it, over the layers (each upsampled to the image's size), the heads
and the denoising steps, gives a map of where that word acted: DAAM's method (Tang et al., "What
the DAAM: Interpreting Stable Diffusion Using Cross Attention", 2023).

`word_heatmaps` collects the weights with an attention processor of its own, installed on the
UNet's cross-attention layers for one `generate` call and removed afterwards (diffusers itself is
not changed). The image is the one `generate` makes with the same arguments: the processor computes
the layer's output with the processor it replaces and only *reads* the weights beside it. Do not
call it on a pipeline another thread is generating with (a server's): the processors are the
pipeline's while it runs.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import SdlabInputError, check
from .generation import generate
from .grids import display_scale, enlarge, labelled_grid
from .seeds import default_size


class Heatmaps(dict):
    """word → heat map (a float array of the image's height × width that sums to 1), in the prompt's
    order, plus the image they were collected on (`.image`) and the prompt (`.prompt`). A word the
    prompt holds twice has one map, of both places together; words are as the tokenizer wrote them
    (lower case, punctuation its own word)."""

    def __init__(self, maps: dict[str, np.ndarray], image: Image.Image, prompt: str):
        super().__init__(maps)
        self.image, self.prompt = image, prompt


class _Recorder:
    """Runs a cross-attention layer with its own processor, and adds the attention weights the
    prompt's images give each token to a running sum at the latents' resolution."""

    def __init__(self, inner, collected: dict, latent_size: tuple[int, int], images: int):
        self.inner, self.collected, self.latent_size, self.images = inner, collected, latent_size, images

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if encoder_hidden_states is not None and hidden_states.ndim == 3:
            with torch.no_grad():
                query = attn.head_to_batch_dim(attn.to_q(hidden_states))
                key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
                weights = attn.get_attention_scores(query, key, None)  # (batch × heads) × pixels × tokens
            batch = hidden_states.shape[0]
            weights = weights.view(batch, attn.heads, *weights.shape[1:]).mean(1)[batch - self.images:]  # the prompt's
            self._add(weights.float())
        return out

    def _add(self, weights: torch.Tensor) -> None:
        lat_h, lat_w = self.latent_size
        pixels = weights.shape[1]
        factor = round((lat_h * lat_w / pixels) ** 0.5)  # this layer works at 1/factor of the latents' size
        h, w = lat_h // factor, lat_w // factor
        maps = weights.transpose(1, 2).reshape(weights.shape[0], weights.shape[2], h, w)
        maps = F.interpolate(maps, size=(lat_h, lat_w), mode="bilinear", align_corners=False)
        self.collected["sum"] = maps if "sum" not in self.collected else self.collected["sum"] + maps


def _words(tokenizer, prompt: str) -> list[tuple[str, list[int]]]:
    """The prompt's words and the token positions of each (a word split in pieces has several; the
    start token is position 0), as the tokenizer splits them, in order, repeated words merged."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids[1:-1])  # without the start and end tokens
    words: dict[str, list[int]] = {}
    pieces: list[int] = []
    for position, token in enumerate(tokens, start=1):
        pieces.append(position)
        if token.endswith("</w>") or position == len(tokens):
            word = "".join(tokens[p - 1] for p in pieces).replace("</w>", "")
            words.setdefault(word, []).extend(pieces)
            pieces = []
    return list(words.items())


def word_heatmaps(pipe, prompt: str, *, seed: int = 0, **generate_kwargs) -> Heatmaps:
    """Generate `prompt`'s image and return a heat map per word of where it acted (see the module).

    generate_kwargs: anything `generate` takes for one image (steps, guidance, scheduler, size…).
    """
    check(isinstance(prompt, str) and prompt.strip() != "",
          "prompt must be a non-empty string: the heat maps are of its words")
    check(generate_kwargs.get("num_images_per_prompt", 1) == 1 and "image" not in generate_kwargs,
          "word_heatmaps makes one image from the prompt: leave out num_images_per_prompt and image")
    words = _words(pipe.tokenizer, prompt)
    check(words, f"the tokenizer finds no words in {prompt!r}")
    height = generate_kwargs.get("height") or default_size(pipe)
    width = generate_kwargs.get("width") or default_size(pipe)
    latent_size = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    original = dict(pipe.unet.attn_processors)
    collected: dict = {}
    recorders = {name: _Recorder(proc, collected, latent_size, images=1) if name.endswith("attn2.processor")
                 else proc for name, proc in original.items()}
    pipe.unet.set_attn_processor(recorders)
    try:
        image = generate(pipe, prompt, seed=seed, **generate_kwargs)[0].image
    finally:
        pipe.unet.set_attn_processor(dict(original))  # (diffusers empties the dict it is given)
    summed = collected["sum"][0]  # 77 × latent height × latent width, over layers and steps
    maps = {}
    for word, positions in words:
        heat = summed[positions].sum(0, keepdim=True)[None]
        heat = F.interpolate(heat, size=(image.height, image.width), mode="bilinear", align_corners=False)[0, 0]
        heat = heat.clamp(min=0).cpu().numpy().astype(np.float64)
        maps[word] = heat / heat.sum()
    return Heatmaps(maps, image, prompt)


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """The share of a heat map's weight that falls on the pixels of `mask` (a boolean array)."""
    check(heatmap.shape == mask.shape, f"the heat map is {heatmap.shape} and the mask {mask.shape}: give a mask of "
                                       f"the image's size")
    return float(heatmap[mask].sum() / heatmap.sum())


def overlay(image: Image.Image, heatmap: np.ndarray, strength: float = 0.65) -> Image.Image:
    """The image with a heat map laid over it (hot = red/yellow), for showing."""
    import matplotlib  # noqa: PLC0415  (colour maps: heavy, display only)

    colours = matplotlib.colormaps["inferno"](heatmap / max(heatmap.max(), 1e-12))[..., :3]
    grey = np.asarray(image.convert("L").convert("RGB"), dtype=float) / 255  # the map's colours, not the image's
    mixed = (1 - strength) * grey + strength * colours
    return Image.fromarray((mixed * 255).round().astype(np.uint8))


# ---- display (notebooks) ------------------------------------------------------------------

def show_heatmaps(heatmaps: Heatmaps, words: list[str] | None = None) -> None:
    """Display the image, then one overlay per word (all the prompt's words by default), labelled."""
    from IPython.display import display  # notebooks only (IPython)

    words = list(heatmaps) if words is None else list(words)
    missing = [w for w in words if w not in heatmaps]
    if missing:
        raise SdlabInputError(f"{', '.join(map(repr, missing))} not in the prompt's words; choose from "
                              f"{', '.join(map(repr, heatmaps))}")
    scale = display_scale(heatmaps.image, 128)
    images = [enlarge(heatmaps.image, scale)] + [enlarge(overlay(heatmaps.image, heatmaps[w]), scale) for w in words]
    display(labelled_grid(images, col_labels=["image"] + words, title=repr(heatmaps.prompt)))
