"""Captions for the tiny world: how a scene is put into words, and how words are read back.

A scene (:mod:`sdlab.tiny.world`) is described by a random natural caption, drawn from
synonyms and templates, so that the model learns the attributes rather than one fixed
sentence. `canonical_prompt` is the one fixed phrasing used for evaluation, and
`parse_prompt` reads the attributes back from any free-text prompt, so
:mod:`sdlab.tiny.checker` can grade an image against the prompt that made it.

The captioned examples that train sdlab-tiny are made here too: the same seed always
gives the same scenes, captions and pixels. With `web=True` (how v4 is trained) they are
like the web's image alt-texts that Stable Diffusion learned from: a share of the captions
describe another image, name one thing wrong, or carry words that name nothing in the image
(`CAPTION_NOISE`), and every image has a random `Look` that no caption names. A model trained
so follows its prompt only loosely without classifier-free guidance, and draws a different
image for every seed, as Stable Diffusion does.
"""

from __future__ import annotations

import random
import re

from PIL import Image

from .world import (
    ATTRIBUTES,
    COLOUR_NAMES,
    DEFAULT_SIZE,
    POSITIONS,
    SHAPES,
    Scene,
    object_mask,
    render_batch,
    sample_look,
    sample_scene,
)

# --------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------
# Words the caption writer may use for each attribute value. The parser below
# understands all of these (plus a few extras).

SHAPE_WORDS = {
    "circle": ("circle", "disc", "ball"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "cross": ("cross", "plus sign", "plus"),
}
#: Words that only make sense for small objects.
SMALL_SHAPE_WORDS = {"circle": ("dot",)}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
COLOUR_WORDS = {name: (name,) for name in COLOUR_NAMES} | {"purple": ("purple", "violet")}
BACKGROUND_WORDS = ("background", "backdrop")
POSITION_WORDS = {
    "top left": ("top left", "upper left", "top-left"),
    "top": ("top", "top centre", "top center", "top middle"),
    "top right": ("top right", "upper right", "top-right"),
    "left": ("left", "middle left", "centre left"),
    "center": ("center", "centre", "middle"),
    "right": ("right", "middle right", "centre right"),
    "bottom left": ("bottom left", "lower left", "bottom-left"),
    "bottom": ("bottom", "bottom centre", "bottom center", "bottom middle"),
    "bottom right": ("bottom right", "lower right", "bottom-right"),
}

#: How often each attribute is mentioned in a caption. Position is mentioned
#: often because the model must learn it; the shape always.
MENTION_RATE = {"shape": 1.0, "colour": 0.95, "background": 0.70, "position": 0.75, "size": 0.50}


def canonical_prompt(scene: Scene) -> str:
    """The one fixed phrasing used for evaluation, naming all five attributes."""
    return f"a {scene.size} {scene.colour} {scene.shape} on a {scene.background} background, {scene.position}"


def caption(scene: Scene, rng: random.Random) -> str:
    """A random natural caption for `scene` (some attributes may be left out)."""
    return caption_with_attributes(scene, rng)[0]


def caption_with_attributes(scene: Scene, rng: random.Random) -> tuple[str, dict[str, str]]:
    """A random caption plus the attributes it mentions (what `parse_prompt` should find)."""
    mentioned = [a for a in ATTRIBUTES if rng.random() < MENTION_RATE[a]]
    words = _choose_words(scene, mentioned, rng)
    template = rng.choice([t for t, needs in _TEMPLATES if needs <= words.keys()])
    text = re.sub(r"\s+", " ", template(words, rng)).strip()
    return text, {a: getattr(scene, a) for a in mentioned}


def _choose_words(scene: Scene, mentioned: list[str], rng: random.Random) -> dict[str, str]:
    """Pick a synonym for each mentioned attribute."""
    shape_words = SHAPE_WORDS[scene.shape]
    if scene.size == "small":
        shape_words += SMALL_SHAPE_WORDS.get(scene.shape, ())
    choices = {
        "shape": shape_words,
        "colour": COLOUR_WORDS[scene.colour],
        "background": COLOUR_WORDS[scene.background],
        "position": POSITION_WORDS[scene.position],
        "size": SIZE_WORDS[scene.size],
    }
    words = {a: rng.choice(choices[a]) for a in mentioned}
    if "position" in words:
        words["position_kind"] = _position_kind(scene.position)
    return words


def _position_kind(position: str) -> str:
    if position == "center":
        return "center"
    if position in ("left", "right"):
        return "side"
    if position in ("top", "bottom"):
        return "edge"
    return "corner"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(words: dict[str, str], with_colour: bool = True) -> str:
    """e.g. 'a small red circle' (size and colour only if mentioned)."""
    parts = [words.get("size", "")]
    if with_colour:
        parts.append(words.get("colour", ""))
    body = " ".join(p for p in parts + [words["shape"]] if p)
    return f"{_article(body)} {body}"


def _background_phrase(words: dict[str, str], rng: random.Random) -> str:
    """e.g. 'on a blue background', 'against a blue backdrop', 'on blue'."""
    if "background" not in words:
        return ""
    colour, noun = words["background"], rng.choice(BACKGROUND_WORDS)
    a = _article(colour)
    return rng.choice([
        f"on {a} {colour} {noun}",
        f"against {a} {colour} {noun}",
        f"with {a} {colour} {noun}",
        f"on {colour}",
    ])


def _position_phrase(words: dict[str, str], rng: random.Random) -> str:
    """e.g. 'in the top left corner', 'on the left', 'at the bottom'."""
    if "position" not in words:
        return ""
    where, kind = words["position"], words["position_kind"]
    one_word = " " not in where and "-" not in where
    if kind == "corner":
        return rng.choice([f"in the {where}", f"at the {where}", f"in the {where} corner"])
    if kind == "side" and one_word:
        return rng.choice([f"on the {where}", f"at the {where}", f"on the {where} side"])
    if kind == "edge" and one_word:
        return rng.choice([f"at the {where}", f"in the {where}", f"along the {where}"])
    return rng.choice([f"in the {where}", f"at the {where}"])


def _sentence(words: dict[str, str], rng: random.Random) -> str:
    """'a small red circle on a blue background in the top left' (any order of the tails)."""
    tails = [_background_phrase(words, rng), _position_phrase(words, rng)]
    rng.shuffle(tails)
    prefix = rng.choice(["", "", "an image of ", "a picture of "])
    return prefix + " ".join([_noun_phrase(words)] + tails)


def _tags(words: dict[str, str], rng: random.Random) -> str:
    """'red ball, blue backdrop, top left'."""
    obj = " ".join(words[a] for a in ("size", "colour", "shape") if a in words)
    rest = []
    if "background" in words:
        rest.append(f"{words['background']} {rng.choice(BACKGROUND_WORDS)}")
    if "position" in words:
        rest.append(words["position"])
    rng.shuffle(rest)
    return ", ".join([obj] + rest)


def _background_first(words: dict[str, str], rng: random.Random) -> str:
    """'blue background with a yellow triangle at the bottom right'."""
    bg = f"{words['background']} {rng.choice(BACKGROUND_WORDS)}"
    return f"{bg} with {_noun_phrase(words)} {_position_phrase(words, rng)}"


def _position_first(words: dict[str, str], rng: random.Random) -> str:
    """'top left: a small red disc on blue'."""
    return f"{words['position']}: {_noun_phrase(words)} {_background_phrase(words, rng)}"


def _colour_after(words: dict[str, str], rng: random.Random) -> str:
    """'a large square, green, on white'."""
    tails = [_background_phrase(words, rng), _position_phrase(words, rng)]
    tail = " ".join(t for t in tails if t)
    return f"{_noun_phrase(words, with_colour=False)}, {words['colour']}" + (f", {tail}" if tail else "")


#: (template, attributes it needs besides the shape)
_TEMPLATES = [
    (_sentence, set()),
    (_sentence, set()),
    (_tags, set()),
    (_background_first, {"background"}),
    (_position_first, {"position"}),
    (_colour_after, {"colour"}),
]


# --------------------------------------------------------------------------
# Web-like captions
# --------------------------------------------------------------------------

#: How training captions go wrong with `web=True`, as a share of all captions (exclusive, drawn in
#: this order). Unrelated captions make the model's prompt-conditioned prediction weak, so that
#: guidance is what makes it follow the prompt; wrong words teach it that a word is a hint, not a
#: law; web words teach it to ignore what names nothing.
#: (35 % unrelated and 10 % wrong words in the first web-world run made guidance 1 follow prompts
#: less than needed: 6 % with every attribute right; these shares keep it far under the 45 % ceiling.)
CAPTION_NOISE = {
    "unrelated": 0.25,  # the caption of another image of the world
    "wrong_word": 0.08,  # one attribute swapped for another value before captioning (colour, shape or place)
    "web_words": 0.25,  # a right caption among words that name nothing in the image
}
WEB_PREFIXES = ("stock photo of", "clipart:", "free download", "icon of", "vector illustration,", "img_2041",
                "wallpaper:", "my drawing of", "photo", "new!")
WEB_SUFFIXES = ("4k wallpaper", "| shutterstock", "hd", "png", "#art", "trending", "free vector",
                "high quality", "- image 3 of 12", "minimalist")
#: Which attribute a wrong word changes (the share of wrong-word captions).
WRONG_WORD_ATTRIBUTE = {"colour": 0.6, "shape": 0.2, "position": 0.2}


def web_caption(scene: Scene, rng: random.Random, split: str = "train") -> str:
    """A caption as a web page might give `scene`: right, or noisy as `CAPTION_NOISE` says."""
    return web_caption_with_kind(scene, rng, split)[0]


def web_caption_with_kind(scene: Scene, rng: random.Random, split: str = "train") -> tuple[str, str]:
    """A web-like caption and its kind: "right", or one of `CAPTION_NOISE`'s names."""
    draw = rng.random()
    unrelated, wrong = CAPTION_NOISE["unrelated"], CAPTION_NOISE["unrelated"] + CAPTION_NOISE["wrong_word"]
    if draw < unrelated:
        return caption(sample_scene(rng, split), rng), "unrelated"
    if draw < wrong:
        return caption(_with_wrong_word(scene, rng), rng), "wrong_word"
    text = caption(scene, rng)
    if draw >= wrong + CAPTION_NOISE["web_words"]:
        return text, "right"
    before, after = rng.random() < 0.6, rng.random() < 0.6
    words = [rng.choice(WEB_PREFIXES)] * before + [text] + [rng.choice(WEB_SUFFIXES)] * (after or not before)
    return " ".join(words), "web_words"


def _with_wrong_word(scene: Scene, rng: random.Random) -> Scene:
    """`scene` with one attribute changed to another value (a colour never equal to the background)."""
    name = rng.choices(list(WRONG_WORD_ATTRIBUTE), weights=list(WRONG_WORD_ATTRIBUTE.values()))[0]
    if name == "colour":
        value = rng.choice([c for c in COLOUR_NAMES if c not in (scene.colour, scene.background)])
    else:
        value = rng.choice([v for v in (SHAPES if name == "shape" else POSITIONS) if v != getattr(scene, name)])
    return Scene(**(scene.as_dict() | {name: value}))


# --------------------------------------------------------------------------
# Parsing free-text prompts
# --------------------------------------------------------------------------

def _phrase_table() -> dict[str, tuple[str, str]]:
    """Map every known phrase to (kind, value); kind 'colour' covers backgrounds too."""
    table: dict[str, tuple[str, str]] = {}
    for kind, groups in [
        ("shape", SHAPE_WORDS),
        ("shape", SMALL_SHAPE_WORDS),
        ("shape", {"circle": ("disk", "round")}),
        ("size", SIZE_WORDS),
        ("colour", COLOUR_WORDS),
        ("position", POSITION_WORDS),
        ("position", {"center": ("centered", "centred"), "top": ("upper middle",),
                      "bottom": ("lower middle",)}),
    ]:
        for value, phrases in groups.items():
            for phrase in phrases:
                table[_normalise(phrase)] = (kind, value)
    return table


def _normalise(phrase: str) -> str:
    return re.sub(r"[\s-]+", " ", phrase.lower()).strip()


_PHRASES = _phrase_table()
# Longest phrases first so that "top left" wins over "top" and "left".
_PHRASE_RE = re.compile(
    r"\b(?:"
    + "|".join(r"[\s-]+".join(map(re.escape, p.split())) for p in sorted(_PHRASES, key=len, reverse=True))
    + r")\b"
)
_BACKGROUND_AFTER = re.compile(r"[\s-]+(?:background|backdrop)\b")
_BACKGROUND_BEFORE = re.compile(
    r"(?:\b(?:on|against|over)\s+(?:an?\s+|the\s+)?|\b(?:background|backdrop)\s*(?::|is|of|=)\s*)$"
)


def parse_prompt(text: str) -> dict[str, str]:
    """The attributes a free-text prompt names, e.g. {'shape': 'circle', 'colour': 'red'}.

    A colour counts as the background when followed by 'background'/'backdrop'
    or preceded by 'on'/'against'/'over' ("a red disc on blue"); otherwise it is
    the object's colour. If an attribute is named twice, the first wins.
    """
    text = text.lower()
    found: dict[str, str] = {}
    for match in _PHRASE_RE.finditer(text):
        kind, value = _PHRASES[_normalise(match.group())]
        if kind == "colour" and _names_background(text, match):
            kind = "background"
        found.setdefault(kind, value)
    return found


def _names_background(text: str, match: re.Match) -> bool:
    return bool(
        _BACKGROUND_AFTER.match(text, match.end()) or _BACKGROUND_BEFORE.search(text[: match.start()])
    )


# --------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------

def sample_captioned(n: int, seed: int, split: str = "train", web: bool = False) -> list[tuple[str, Scene]]:
    """`n` (caption, scene) pairs; the same seed always gives the same list.

    `web`: captions with web-like noise (`web_caption`) instead of always-right ones.
    """
    return [(text, scene) for text, scene, _ in _sample(n, seed, split, web)]


def _sample(n: int, seed: int, split: str, web: bool) -> list[tuple[str, Scene, object]]:
    """(caption, scene, look) triples; the look is None for plain renders (`web=False`)."""
    rng = random.Random(seed)
    triples = []
    for _ in range(n):
        scene = sample_scene(rng, split)
        if web:
            triples.append((web_caption(scene, rng, split), scene, sample_look(scene, rng)))
        else:
            triples.append((caption(scene, rng), scene, None))
    return triples


def _render(triples, size: int, web: bool):
    return render_batch([scene for _, scene, _ in triples], size, [look for *_, look in triples] if web else None)


def make_examples(
    n: int, seed: int, size: int = DEFAULT_SIZE, split: str = "train", web: bool = False
) -> list[tuple[Image.Image, str, Scene]]:
    """`n` (image, caption, scene) triples, identical for identical seeds.

    `web`: noisy captions and images with a random unnamed `Look` (how v4 is trained).
    """
    triples = _sample(n, seed, split, web)
    pixels = _render(triples, size, web)
    return [(Image.fromarray(img), text, scene) for img, (text, scene, _) in zip(pixels, triples, strict=True)]


def batch_tensors(n: int, seed: int, size: int = DEFAULT_SIZE, split: str = "train", web: bool = False,
                  masks: bool = False):
    """Fast training batch: (N x 3 x H x W float tensor in [-1, 1], captions, scenes), and with
    `masks` also the N x H x W boolean object masks (as drawn, look included).

    Gives exactly the same scenes, captions and pixels as `make_examples`
    with the same arguments.
    """
    import torch  # imported here so the world itself works without torch

    triples = _sample(n, seed, split, web)
    scenes = [scene for _, scene, _ in triples]
    pixels = torch.from_numpy(_render(triples, size, web)).permute(0, 3, 1, 2)
    images = pixels.float().div(127.5).sub(1.0).contiguous()
    captions = [text for text, _, _ in triples]
    if masks:
        found = [torch.from_numpy(object_mask(scene, size, look)) for _, scene, look in triples]
        return images, captions, scenes, torch.stack(found)
    return images, captions, scenes
