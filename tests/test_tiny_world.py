"""Tests for the tiny procedural world and its pixel checker."""

import dataclasses
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from sdlab.tiny import captions, checker, world
from sdlab.tiny.captions import parse_prompt
from sdlab.tiny.world import ATTRIBUTES, Scene

# ---------------------------------------------------------------- the world

def test_scene_rejects_bad_attributes():
    with pytest.raises(ValueError):
        Scene("hexagon", "red", "blue", "top", "small")
    with pytest.raises(ValueError):
        Scene("circle", "red", "red", "top", "small")  # invisible object


def test_same_seed_gives_identical_examples():
    a = captions.make_examples(50, seed=3)
    b = captions.make_examples(50, seed=3)
    assert [t for _, t, _ in a] == [t for _, t, _ in b]
    assert [s for _, _, s in a] == [s for _, _, s in b]
    for (img_a, _, _), (img_b, _, _) in zip(a, b, strict=True):
        assert np.array_equal(np.asarray(img_a), np.asarray(img_b))
    c = captions.make_examples(50, seed=4)
    assert [t for _, t, _ in a] != [t for _, t, _ in c]


def test_batch_tensors_match_make_examples():
    torch = pytest.importorskip("torch")
    images, texts, scenes = captions.batch_tensors(20, seed=5)
    examples = captions.make_examples(20, seed=5)
    assert images.shape == (20, 3, 64, 64) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert texts == [t for _, t, _ in examples]
    assert scenes == [s for _, _, s in examples]
    pixels = np.stack([np.asarray(img) for img, _, _ in examples])
    from_tensor = ((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    assert np.array_equal(from_tensor, pixels)


def test_render_sizes_and_objects_inside_image():
    for size in (64, 128):
        for shape in world.SHAPES:
            for position in world.POSITIONS:
                scene = Scene(shape, "red", "blue", position, "large")
                img = scene.render(size)
                assert img.size == (size, size) and img.mode == "RGB"
                mask = world.object_mask(scene, size)
                assert mask.shape == (size, size) and mask.any()
                # nothing touches the image border
                assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_object_mask_matches_object_pixels():
    scene = Scene("triangle", "yellow", "purple", "bottom right", "small")
    pixels = np.asarray(scene.render(), dtype=int)
    mask = world.object_mask(scene)
    yellow = np.array(world.COLOURS["yellow"])
    assert np.abs(pixels[mask] - yellow).max() < 128
    assert np.abs(pixels[~mask] - np.array(world.COLOURS["purple"])).max() < 128


# ---------------------------------------------------------------- captions

def test_caption_round_trip_through_parser():
    rng = random.Random(0)
    mentions = {a: 0 for a in ATTRIBUTES}
    n = 3000
    for _ in range(n):
        scene = world.sample_scene(rng)
        text, mentioned = captions.caption_with_attributes(scene, rng)
        assert captions.parse_prompt(text) == mentioned, text
        assert mentioned == {a: getattr(scene, a) for a in mentioned}
        for a in mentioned:
            mentions[a] += 1
    rates = {a: k / n for a, k in mentions.items()}
    assert rates["shape"] == 1.0
    assert rates["colour"] > 0.9
    assert 0.7 <= rates["position"] <= 0.8
    assert 0.62 <= rates["background"] <= 0.78
    assert 0.42 <= rates["size"] <= 0.58


def test_canonical_prompt_names_everything():
    for scene in world.held_out_scenes(40):
        assert captions.parse_prompt(captions.canonical_prompt(scene)) == scene.as_dict()



@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a small red circle on a blue background in the top left",
         dict(size="small", colour="red", shape="circle", background="blue", position="top left")),
        ("red ball, blue backdrop", dict(colour="red", shape="circle", background="blue")),
        ("a red circle", dict(colour="red", shape="circle")),
        ("a large square, green, on white",
         dict(size="large", shape="square", colour="green", background="white")),
        ("blue background with a yellow triangle at the bottom right",
         dict(background="blue", colour="yellow", shape="triangle", position="bottom right")),
        ("top left: a small red disc on blue",
         dict(position="top left", size="small", colour="red", shape="circle", background="blue")),
        ("A big violet plus sign in the upper-right corner",
         dict(size="large", colour="purple", shape="cross", position="top right")),
        ("tiny white dot, centred", dict(size="small", colour="white", shape="circle", position="center")),
        ("an orange block in the middle of a black backdrop",
         dict(colour="orange", shape="square", position="center", background="black")),
        ("a cat", {}),
    ],
)
def test_parse_prompt_examples(prompt, expected):
    assert captions.parse_prompt(prompt) == expected


# ---------------------------------------------------------------- split

def test_a_number_of_scenes_below_1_is_refused():
    from sdlab.errors import SdlabInputError

    for n in (0, -3):
        with pytest.raises(SdlabInputError, match=f"the number of held_out scenes must be a whole number, 1 or more "
                                                  f"\\(or None for all\\), got {n}"):
            world.held_out_scenes(n)


def test_held_out_scenes_never_sampled_for_training():
    rng = random.Random(1)
    train = [world.sample_scene(rng) for _ in range(5000)]
    assert not any(world.is_held_out(s) for s in train)
    held = world.held_out_scenes()
    assert len(set(held)) == len(held) >= 200
    assert all(world.is_held_out(s) for s in held)
    some = world.held_out_scenes(200, seed=0)
    assert {(s.position, s.size) for s in some} == {(p, z) for p in world.POSITIONS for z in world.SIZES}
    assert some == world.held_out_scenes(200, seed=0)
    assert 0.13 <= len(world.HELD_OUT_COMBOS) / len(world.ALL_COMBOS) <= 0.17


def test_every_pair_of_concepts_is_seen_in_training():
    """Held-out combinations are new *compositions*, not new concepts."""
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        everything = {(c[i], c[j]) for c in world.ALL_COMBOS}
        trained = {(c[i], c[j]) for c in world.TRAIN_COMBOS}
        assert trained == everything


# ---------------------------------------------------------------- checker

def _degrade(image, rng):
    """Blur (radius 1) and add Gaussian noise (sigma 10/255), like a soft generated image."""
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(1)), dtype=np.float32)
    noisy = blurred + rng.normal(0.0, 10.0, blurred.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def test_checker_reads_clean_renders():
    examples = captions.make_examples(1000, seed=11)
    result = checker.score([img for img, _, _ in examples], [s for _, _, s in examples])
    print("checker accuracy, clean renders:", result)
    for name in (*ATTRIBUTES, "all"):
        assert result[name] >= 0.99, (name, result)


def test_checker_reads_degraded_renders():
    rng = np.random.default_rng(0)
    examples = captions.make_examples(1000, seed=12)
    images = [_degrade(img, rng) for img, _, _ in examples]
    result = checker.score(images, [s for _, _, s in examples])
    print("checker accuracy, blurred + noisy renders:", result)
    for name in (*ATTRIBUTES, "all"):
        assert result[name] >= 0.95, (name, result)


def test_checker_reads_held_out_scenes_at_128px():
    scenes = world.held_out_scenes(100)
    result = checker.score([s.render(128) for s in scenes], scenes)
    assert result["all"] >= 0.99, result


def test_checker_accepts_arrays_tensors_and_prompts():
    scene = Scene("cross", "green", "white", "left", "large")
    img = scene.render()
    assert checker.read_scene(np.asarray(img)).as_dict() == scene.as_dict()
    assert checker.read_scene(np.asarray(img) / 255.0).as_dict() == scene.as_dict()
    assert checker.adherence(img, "a green plus on the left") == {
        "colour": True, "shape": True, "position": True}
    assert checker.adherence(img, {"shape": "circle"}) == {"shape": False}
    torch = pytest.importorskip("torch")
    tensor = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 127.5 - 1
    assert checker.read_scene(tensor).as_dict() == scene.as_dict()


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((64, 64, 3), dtype=np.uint8),
        np.full((64, 64, 3), 200, dtype=np.uint8),
        np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8),
        np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8),
        np.zeros((4, 4, 3), dtype=np.uint8),
    ],
)
def test_checker_survives_images_without_object(pixels):
    reading = checker.read_scene(pixels)
    assert reading.shape is None and not reading.found
    assert checker.adherence(pixels, Scene("circle", "red", "blue", "top", "small"))["shape"] is False


def test_score_averages_only_named_attributes():
    good = Scene("square", "red", "white", "center", "large")
    result = checker.score([good.render(), good.render()], [{"shape": "square"}, good])
    assert result["shape"] == 1.0 and result["colour"] == 1.0 and result["all"] == 1.0
    assert set(result) == {*ATTRIBUTES, "all"}


# --------------------------------------------------------------------------
# v4's world: an unnamed look per image and web-like captions
# --------------------------------------------------------------------------

def test_checker_reads_renders_with_their_unnamed_look():
    rng = np.random.default_rng(0)
    examples = captions.make_examples(1000, seed=13, web=True)
    clean = checker.score([img for img, _, _ in examples], [s for _, _, s in examples])
    degraded = checker.score([_degrade(img, rng) for img, _, _ in examples], [s for _, _, s in examples])
    print("checker accuracy, renders with a look:", clean, "blurred + noisy:", degraded)
    for name in (*ATTRIBUTES, "all"):
        assert clean[name] >= 0.99 and degraded[name] >= 0.95, (name, clean, degraded)


def test_a_look_is_variation_that_no_caption_names():
    rng = random.Random(0)
    scenes = world.held_out_scenes(60)
    assert np.array_equal(world.render_array(scenes[0], look=world.Look()), world.render_array(scenes[0]))
    apart = []
    for scene in scenes:
        a, b = (world.render_array(scene, look=world.sample_look(scene, rng)) for _ in range(2))
        apart.append(np.abs(a.astype(float) - b).mean())
        assert checker.read_scene(a).as_dict() == checker.read_scene(b).as_dict() == scene.as_dict()
    assert np.mean(apart) >= 15, np.mean(apart)  # two seeds of a fully named prompt have this much to differ in


def test_an_object_mask_follows_its_look():
    scene = Scene("square", "red", "white", "top left", "large")
    look = dataclasses.replace(world.sample_look(scene, random.Random(3)), specks=())  # a speck may be red too
    moved = world.object_mask(scene, look=look)
    pixels = world.render_array(scene, look=look).astype(float)
    reddish = np.linalg.norm(pixels - world.COLOURS["red"], axis=-1) < 60
    assert (moved == reddish).mean() > 0.99 and not np.array_equal(moved, world.object_mask(scene))


def test_web_captions_go_wrong_in_the_documented_shares():
    rng = random.Random(0)
    kinds = {"right": [], **{name: [] for name in captions.CAPTION_NOISE}}
    for _ in range(6000):
        scene = world.sample_scene(rng)
        text, kind = captions.web_caption_with_kind(scene, rng)
        named = parse_prompt(text)
        kinds[kind].append(all(scene.as_dict()[a] == v for a, v in named.items()))
    for name, share in captions.CAPTION_NOISE.items():
        assert abs(len(kinds[name]) / 6000 - share) < 0.02, (name, len(kinds[name]))
    assert all(kinds["right"]) and all(kinds["web_words"])  # noise words never name a wrong attribute
    assert np.mean(kinds["unrelated"]) < 0.2  # another image's caption rarely happens to fit
    assert np.mean(kinds["wrong_word"]) < 0.15  # the swapped word is named, and so wrong, in most of them


def test_web_examples_are_deterministic_and_differ_from_plain_ones():
    a, b = captions.make_examples(8, seed=4, web=True), captions.make_examples(8, seed=4, web=True)
    assert [t for _, t, _ in a] == [t for _, t, _ in b]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for (x, _, _), (y, _, _) in zip(a, b, strict=True))
    images, texts, scenes, masks = captions.batch_tensors(8, seed=4, web=True, masks=True)
    assert texts == [t for _, t, _ in a] and masks.shape == (8, 64, 64)
    assert np.array_equal(((images[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy(), np.asarray(a[0][0]))
    plain = captions.make_examples(8, seed=4)
    assert not np.array_equal(np.asarray(plain[0][0]), np.asarray(a[0][0]))
