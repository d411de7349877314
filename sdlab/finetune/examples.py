"""Training pairs for fine-tuning: liked images and their prompts, from a FeedbackStore, an
exported imagefolder or a list; and their latents and text embeddings, encoded once."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import check
from ..feedback import LIKED, FeedbackStore


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
