"""sdlab-tiny: a procedural world of captioned shapes, and a checker that grades images of it.

`world` describes and renders scenes, and `captions` puts them into words, so
together they make deterministic (image, caption, scene) examples for training
a tiny text-to-image model; `checker` reads the scene back from pixels so that
prompt adherence of generated images can be measured.
"""

from .captions import (
    batch_tensors,
    canonical_prompt,
    caption,
    caption_with_attributes,
    make_examples,
    parse_prompt,
)
from .checker import Reading, adherence, read_scene, score
from .world import (
    ATTRIBUTES,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    held_out_scenes,
    is_held_out,
    object_mask,
    sample_scene,
    train_scenes,
)

__all__ = [
    "ATTRIBUTES",
    "COLOURS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Reading",
    "Scene",
    "adherence",
    "batch_tensors",
    "canonical_prompt",
    "caption",
    "caption_with_attributes",
    "held_out_scenes",
    "is_held_out",
    "make_examples",
    "object_mask",
    "parse_prompt",
    "read_scene",
    "sample_scene",
    "score",
    "train_scenes",
]
