"""Training pairs for fine-tuning: liked images and their prompts, from a FeedbackStore, an
exported imagefolder or a list, or one's own images and their captions, from a folder; and their
latents and text embeddings, encoded once, at the model's own size."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import SdlabInputError, check
from ..feedback import LIKED, FeedbackStore
from ..seeds import default_size


@dataclass(frozen=True)
class Example:
    """One training pair: an image and the prompt that made it."""

    image: Image.Image
    prompt: str
    image_id: int | None = None


def training_examples(source, min_rating: float = LIKED) -> list[Example]:
    """Training pairs from a FeedbackStore (its liked images), a folder of images with their captions
    (an exported imagefolder, or .txt captions: `folder_examples`), or a list of (image, prompt) pairs.
    Zero pairs, or a pair that is not an 8-bit image of at least MIN_SIDE pixels a side and its prompt,
    is a teaching error naming it."""
    if isinstance(source, FeedbackStore):
        examples = stored_examples(source.liked(min_rating))
        what = f"the store has no images with a mean rating of {min_rating:g} or more"
    elif isinstance(source, (str, Path)):
        examples = folder_examples(source)
        what = f"{source}/metadata.jsonl lists no images"
    else:
        check(not isinstance(source, (bytes, Image.Image)) and hasattr(source, "__iter__"),
              f"examples must be a FeedbackStore, an imagefolder or a list of (image, prompt) pairs, got "
              f"{type(source).__name__}")
        examples = [_from_pair(pair, f"pair {i}") for i, pair in enumerate(source)]
        what = "the list of (image, prompt) pairs is empty"
    check(bool(examples), f"nothing to fine-tune on: {what}. Rate some images 4 or 5 first "
                          f"(store.add_feedback(image_id, 5)), or lower min_rating")
    return examples


def stored_examples(items) -> list[Example]:
    """Checked training pairs of stored images (what `FeedbackStore.liked` gives), each error naming its id."""
    return [_checked(lambda item=item: item.image, item.prompt, item.id, f"the store's image {item.id}")
            for item in items]


def existing_store(folder: str | Path) -> FeedbackStore:
    """The feedback store kept in `folder`, which must exist (FeedbackStore itself would start one)."""
    check((Path(folder) / "feedback.sqlite3").is_file(),
          f"{folder} holds no feedback store; give the folder that `sdlab serve` kept (./feedback where it ran) "
          f"with --store, or your own pictures with --images DIR")
    return FeedbackStore(folder)


def liked_examples(store: FeedbackStore, model: str, min_rating: float = LIKED) -> list[Example]:
    """The training pairs `sdlab finetune --store` uses: the images in `store` that `model` made and
    that have a mean rating of `min_rating` or more (a teaching error if there are none)."""
    liked = store.liked(min_rating, model=model)  # the model's own images
    check(liked, f"no image in {store.folder} made with {model} has a mean rating of {min_rating:g} or more; rate "
                 f"some in the app, lower --min-rating, or name the model that made them with --model")
    return stored_examples(liked)


def _from_pair(pair, where: str) -> Example:
    if isinstance(pair, Example):
        return _checked(lambda: pair.image, pair.prompt, pair.image_id, where)
    check(isinstance(pair, (tuple, list)) and len(pair) == 2, f"{where}: expected (image, prompt), got {pair!r:.80}")
    return _checked(lambda: pair[0], pair[1], None, where)


MIN_SIDE = 8  # the VAE's scale: a smaller image has no latent pixel


def _checked(open_image, prompt, image_id, where: str) -> Example:
    """One checked pair; `open_image()` gives its image (files are opened here, so errors name them)."""
    try:
        image = open_image()
        if isinstance(image, Image.Image):
            image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise SdlabInputError(f"{where}: its image file cannot be read ({type(err).__name__}: {err}); mend or "
                              f"remove it (a feedback store: store.verify() lists missing files)") from None
    check(isinstance(image, Image.Image), f"{where}: expected (image, prompt) with a PIL image first, got "
                                          f"{type(image).__name__}")
    check(isinstance(prompt, str), f"{where}: the prompt must be text, got {prompt!r}")
    check(image.mode not in HIGH_DEPTH, f"{where}: a {image.mode} image has more than 8 bits a channel; "
                                        f"convert it to 8-bit RGB first")
    check(min(image.size) >= MIN_SIDE, f"{where}: the image is {image.width}×{image.height} pixels; fine-tuning "
                                       f"needs at least {MIN_SIDE} a side (the model's own size is best)")
    return Example(image.convert("RGB"), prompt, image_id)


HIGH_DEPTH = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # the pictures a folder of one's own images is read for


def folder_examples(folder: str | Path, prompt: str | None = None) -> list[Example]:
    """Training pairs from a folder of one's own images, DreamBooth style: each image with its caption.

    With a metadata.jsonl (an imagefolder, as `FeedbackStore.export_imagefolder` writes it), its rows
    are the pairs: "file_name" and "text". Otherwise every png, jpg and webp file directly in `folder`
    (not in subfolders), captioned by the .txt file of the same name beside it (`dog1.txt` for
    `dog1.jpg`: kohya's and A1111's convention), else by `prompt`. One prompt for all is DreamBooth's
    way: a rare word for the subject, then its class, e.g. "a photo of sks dog". Images of any size
    and shape are center-cropped and resized to the model's own size when encoded (`encode_examples`);
    a phone's photo is turned upright first, as viewers show it.
    """
    folder = Path(folder)
    check(folder.is_dir(), f"{folder} is a file: give the folder that holds the images" if folder.exists()
          else f"there is no folder {folder}: give the folder that holds the images")
    check(prompt is None or (isinstance(prompt, str) and prompt.strip() != ""),
          f"prompt must be a caption such as 'a photo of sks dog', got {prompt!r}")
    if (folder / "metadata.jsonl").is_file():
        return _from_imagefolder(folder, prompt)
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    check(bool(images), f"{folder} holds no images: put your .png, .jpg or .webp files directly in it "
                        f"(subfolders are not read)")
    captions = {path: _caption_beside(path) or prompt for path in images}
    missing = [path.name for path, caption in captions.items() if caption is None]
    check(not missing, f"{len(missing)} of the {len(images)} images in {folder} have no caption "
                       f"({', '.join(missing[:5])}{', …' if len(missing) > 5 else ''}): give one for all of them "
                       f"(--prompt \"a photo of sks dog\": a rare word for your subject, then its class), or "
                       f"write a .txt file of the same name beside each image, or a metadata.jsonl")
    return [_checked(lambda path=path: _upright(Image.open(path)), caption, None, str(path))
            for path, caption in captions.items()]


def _caption_beside(image: Path) -> str | None:
    """The caption in the .txt file of the image's name, if there is one with text in it."""
    text_file = image.with_suffix(".txt")
    if not text_file.is_file():
        return None
    try:
        return text_file.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError) as err:
        raise SdlabInputError(f"{text_file}: the caption cannot be read ({type(err).__name__}: {err}); save it "
                              f"as UTF-8 text") from None


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (a phone stores its photos sideways with a note)."""
    return ImageOps.exif_transpose(image)


def _from_imagefolder(folder: Path, prompt: str | None = None) -> list[Example]:
    metadata = folder / "metadata.jsonl"
    check(metadata.is_file(), f"{folder} has no metadata.jsonl; export one with store.export_imagefolder(folder)")
    examples = []
    for n, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, text = row["file_name"], row.get("text") or prompt
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise SdlabInputError(f"{metadata} line {n} is not a row like {{\"file_name\": \"a.png\", \"text\": "
                                  f"\"the prompt\"}} ({type(err).__name__}: {err})") from None
        check(text is not None, f"{metadata} line {n} ({name}) has no \"text\": add its caption, or give a "
                                f"prompt for the images that have none")
        examples.append(_checked(lambda name=name: _upright(Image.open(folder / name)), text, row.get("image_id"),
                                 f"{metadata} line {n} ({name})"))
    return examples


@torch.no_grad()
def encode_examples(pipe, examples: list[Example], chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents of the images (the VAE's mean, scaled) and the prompts' text embeddings, in float32.
    Each image is center-cropped to a square and resized to the model's own size (`default_size`),
    as DreamBooth's scripts do: the size the UNet was trained at, whatever the photo's."""
    size = default_size(pipe)
    latents, texts = [], []
    for start in range(0, len(examples), chunk):
        batch = examples[start:start + chunk]
        pixels = torch.stack([torch.from_numpy(np.array(ImageOps.fit(e.image.convert("RGB"), (size, size))))
                              .permute(2, 0, 1) for e in batch])
        pixels = (pixels.float() / 127.5 - 1).to(pipe.device, pipe.vae.dtype)
        latents.append(pipe.vae.encode(pixels).latent_dist.mode().float() * pipe.vae.config.scaling_factor)
        texts.append(pipe.encode_prompt([e.prompt for e in batch], pipe.device, 1, False)[0].float())
    return torch.cat(latents), torch.cat(texts)
