"""The feedback loop on sdlab-tiny, measured: simulated raters who like one colour rate images
from prompts that leave the colour open; after fine-tuning on what they liked, the checker counts
how often held-out prompts come out in that colour, before and after (notebook 08)."""
from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import check, writable_folder
from ..feedback import FeedbackStore
from ..finetune import FinetuneConfig, ModelVersion, load_version, start_finetune
from ..generation import generate
from .checker import read_scene, score
from .evaluate import measure_adherence
from .world import COLOUR_NAMES, SHAPES, held_out_scenes


@dataclass(frozen=True)
class ColourRater:
    """A simulated rater who likes one object colour: 5 when the checker reads it, 1 otherwise."""

    colour: str = "blue"

    @property
    def name(self) -> str:
        return f"simulated rater (likes {self.colour})"

    def __call__(self, image) -> tuple[int, str]:
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
    backgrounds = [c for c in COLOUR_NAMES if c != colour][int(held_out)::2]
    return [f"a large {shape} on {'an' if bg[0] in 'aeiou' else 'a'} {bg} background"
            for bg in backgrounds for shape in SHAPES]


def colour_counts(images) -> dict[str, int]:
    """How many images the checker reads as each object colour ("none": no object found)."""
    counts = dict.fromkeys((*COLOUR_NAMES, "none"), 0)
    for image in images:
        counts[read_scene(image).colour or "none"] += 1
    return counts


def generate_batches(pipe, prompts: list[str], count: int, seed: int, **settings) -> list:
    """`count` images cycling through `prompts`, image k with seed `seed + k`, in batches of 32."""
    prompts = [prompts[k % len(prompts)] for k in range(count)]
    results = []
    for start in range(0, count, 32):
        chunk = list(range(start, min(count, start + 32)))
        results += generate(pipe, [prompts[k] for k in chunk], seed=[seed + k for k in chunk], **settings).results
    return results


@dataclass
class ColourMeasure:
    """Held-out images of one model: the share whose object is the raters' colour, how many the
    checker reads as each colour, and adherence to what the prompts do name."""

    share: float
    counts: dict[str, int]
    adherence: dict[str, float]
    images: list = field(repr=False)
    prompts: list[str] = field(repr=False)


def measure_colour(pipe, prompts, colour, count, seed, settings) -> ColourMeasure:
    """`count` images from `prompts` (seeds from `seed`), measured for `colour`."""
    results = generate_batches(pipe, prompts, count, seed, **settings)
    images, prompts = [r.image for r in results], [r.params.prompt for r in results]
    counts = colour_counts(images)
    return ColourMeasure(share=counts[colour] / count, counts=counts, adherence=score(images, prompts),
                         images=images, prompts=prompts)


@dataclass
class PreferenceResult:
    """What `preference_demo` measured: the ratings, the held-out images before and after
    fine-tuning, and the control (prompts that name a colour: the share of images with that
    colour, None when skipped)."""

    colour: str
    rated: int
    liked: int
    liked_share: float
    before: ColourMeasure
    after: ColourMeasure
    named_colour_before: float | None
    named_colour_after: float | None
    finetune_seconds: float | None
    version: ModelVersion
    pipe: object = field(repr=False)  # the fine-tuned pipeline

    @property
    def steps(self) -> int:
        return self.version.info["config"]["steps"]

    @property
    def method(self) -> str:
        return self.version.info["method"]

    @property
    def losses(self) -> list[float]:
        return self.version.info["losses"]

    def lines(self) -> list[str]:
        """The summary `sdlab feedback-demo` prints."""
        lines = [f"{self.liked} of {self.rated} images liked; {self.colour} objects on held-out prompts: "
                 f"{self.before.share:.0%} → {self.after.share:.0%}"]
        if self.named_colour_before is not None:
            lines.append(f"prompts that name a colour, right colour: {self.named_colour_before:.0%} → "
                         f"{self.named_colour_after:.0%}")
        seconds = "" if self.finetune_seconds is None else f"fine-tuned in {self.finetune_seconds:.0f} s; "
        return lines + [f"{seconds}the new model: {self.version.folder}"]


@contextmanager
def _scratch(needed: bool):
    """A temporary folder for the store and the new version where they are not given (it stays:
    the result points into it); removed if the demo fails."""
    folder = Path(tempfile.mkdtemp(prefix="sdlab-preference-")) if needed else None
    try:
        yield folder
    except BaseException:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise


# tried on sdlab-tiny (notebook 08): more steps shift further, but then prompts that name a colour follow it less
DEMO_CONFIG = FinetuneConfig(steps=150, learning_rate=2e-3)


def preference_demo(pipe, *, colour: str = "blue", store: FeedbackStore | None = None,
                    version: ModelVersion | None = None, rating_images: int = 128, test_images: int = 32,
                    control_images: int = 16, num_inference_steps: int = 20, guidance_scale: float = 7.5,
                    config: FinetuneConfig | None = None, models_dir: str | Path | None = None, seed: int = 0,
                    on_status=None) -> PreferenceResult:
    """Rate → fine-tune → measure, on sdlab-tiny: does the model learn what the raters like?

    1. Unless `store` already holds liked images: generate `rating_images` from prompts that leave
       the colour open, store them, and let a `ColourRater(colour)` rate them.
    2. Before: the share of held-out open-colour prompts whose object the checker reads as `colour`.
    3. Unless `version` (already fine-tuned on `store`) is given: fine-tune on the liked images in
       the background, passing its FinetuneStatus to `on_status` every half second.
    4. After: the same held-out prompts and seeds with the new version. Controls: adherence to what
       the held-out prompts do name (shape, background, size), and the share of prompts that
       *name* a colour whose object has it (`control_images` held-out scenes; 0 skips it).
    Returns the numbers (shares before/after, colour counts, time) and the images, as a PreferenceResult.
    """
    check(colour in COLOUR_NAMES, f"colour must be one of {', '.join(COLOUR_NAMES)}, got {colour!r}")
    for name, value, least in (("rating_images", rating_images, 1), ("test_images", test_images, 1),
                               ("control_images", control_images, 0)):
        check(isinstance(value, int) and value >= least,
              f"{name} must be a whole number, {least} or more, got {value!r}")
    config = (config or DEMO_CONFIG).checked()  # all before the first image is made
    settings = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    if version is None and models_dir is not None:
        models_dir = writable_folder(models_dir, "models_dir")
    with _scratch(store is None or (version is None and models_dir is None)) as workdir:
        store = store or FeedbackStore(workdir / "feedback")
        # 1. Ratings
        if version is None and not store.liked(config.min_rating):
            made = generate_batches(pipe, open_colour_prompts(colour), rating_images, seed, **settings)
            rate(store, store.add_generations(made), ColourRater(colour))
        stats = store.stats()
        # 2. Before
        held_out = open_colour_prompts(colour, held_out=True)
        before = measure_colour(pipe, held_out, colour, test_images, seed + 100_000, settings)
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
        after = measure_colour(tuned, held_out, colour, test_images, seed + 100_000, settings)
        scenes = held_out_scenes(control_images, seed=seed) if control_images else []
        control = [measure_adherence(p, scenes, seed=seed + 200_000, **settings).scores["colour"] if scenes else None
                   for p in (pipe, tuned)]
        return PreferenceResult(colour=colour, rated=stats["ratings"], liked=stats["liked"],
                                liked_share=stats["liked"] / max(1, stats["images"]), before=before, after=after,
                                named_colour_before=control[0], named_colour_after=control[1],
                                finetune_seconds=seconds, version=version, pipe=tuned)


def plot_preference(result: PreferenceResult):
    """Bar chart: which colours the checker reads on the held-out prompts, before and after (a Figure)."""
    import matplotlib.pyplot as plt  # heavy: matplotlib loads only to plot

    before, after = result.before.counts, result.after.counts
    names = [n for n in before if before[n] or after[n]]
    total = sum(before.values())
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for offset, counts, label in ((-0.2, before, "before"), (0.2, after, "after fine-tuning")):
        ax.bar(x + offset, [100 * counts[n] / total for n in names], 0.4, label=label,
               edgecolor=["black" if n == result.colour else "none" for n in names])
    ax.set_xticks(x, names)
    ax.set_ylabel("% of held-out images")
    ax.set_title(f"object colour on prompts that leave it open: {result.colour} "
                 f"{100 * result.before.share:.0f}% → {100 * result.after.share:.0f}%")
    ax.legend()
    fig.tight_layout()
    return fig
