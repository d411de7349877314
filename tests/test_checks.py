"""The notebooks' self-checks: they pass on what the exercise asks for, and fail with the fix."""
import pytest
from PIL import Image

from sdlab import checks
from sdlab.checks import CheckFailed
from sdlab.generation import generate
from sdlab.metadata import read_params

REFERENCE = checks.course_file("images/02_reference.png")


def _make(pipe, **settings):
    return generate(pipe, **{"prompt": "a large red circle on a blue background", **settings})[0]


def test_the_reference_is_replicated_from_its_own_settings_and_not_from_others(tiny_model):
    p = read_params(REFERENCE)
    same = dict(seed=p.seed, num_inference_steps=p.num_inference_steps, guidance_scale=p.guidance_scale,
                scheduler=p.scheduler, height=p.height, width=p.width)
    assert "replicated 02_reference.png" in checks.matches_reference(_make(tiny_model, **same), REFERENCE)
    with pytest.raises(CheckFailed, match="differs from the reference .*Use exactly the reference's settings:\n"
                                          "a large red circle on a blue background"):
        checks.matches_reference(_make(tiny_model, **same | dict(seed=p.seed + 1)), REFERENCE)
    with pytest.raises(CheckFailed, match="your image is 32×32 but the reference is 64×64"):
        checks.matches_reference(_make(tiny_model, **same | dict(height=32, width=32)), REFERENCE)
    with pytest.raises(CheckFailed, match="reference image nowhere.png not found"):
        checks.matches_reference(_make(tiny_model, **same), "nowhere.png")


def test_same_and_different_images_say_which_seed_to_look_at(tiny_model):
    a, again, other = (_make(tiny_model, seed=s, num_inference_steps=8) for s in (3, 3, 4))
    assert str(checks.same_images(a, again)) == "✓ the two images are identical, pixel for pixel"
    assert "differ" in checks.different_images(a, other)
    with pytest.raises(CheckFailed, match="differ in .* pixels .*did you use the same seed"):
        checks.same_images(a, other)
    with pytest.raises(CheckFailed, match=r"are \(almost\) the same .*did you give them different seeds"):
        checks.different_images(a, again)
    with pytest.raises(CheckFailed, match="expected a PIL image, got str"):
        checks.same_images(a, "image.png")


def test_follows_prompt_reads_the_attributes_back(tiny_model):
    made = _make(tiny_model, prompt="a red circle on a blue background", seed=1)
    assert "follows the prompt: colour red, shape circle, background blue" in checks.follows_prompt(
        made, "a red circle on a blue background")
    with pytest.raises(CheckFailed, match="does not follow the prompt .*colour: asked 'green'"):
        checks.follows_prompt(made, "a green circle on a blue background")
    with pytest.raises(CheckFailed, match="names none of"):
        checks.follows_prompt(made, "a photo of a cat")
    with pytest.raises(CheckFailed, match="expected a PIL image, got NoneType"):
        checks.follows_prompt(None, "a red circle")


def test_images_list_counts_and_sizes():
    tile = Image.new("RGB", (64, 64))
    assert checks.images_list([tile, tile], count=2, size=(64, 64))
    with pytest.raises(CheckFailed, match="images has 1 images, expected 2"):
        checks.images_list([tile], count=2)
    with pytest.raises(CheckFailed, match="should be a list of images, got Image"):
        checks.images_list(tile)


def test_a_result_where_a_picture_is_asked_for_says_to_take_its_image(tiny_pipe):
    from sdlab import generate

    made = generate(tiny_pipe, "a red circle", seed=1, num_inference_steps=2)
    assert checks.picture(made[0].image, "from_latents")
    with pytest.raises(CheckFailed, match=r"from_latents is a GeneratedImage .*take its picture: result\[0\].image"):
        checks.picture(made[0], "from_latents")
    with pytest.raises(CheckFailed, match=r"loop_images\[1\] is a GeneratedImage"):
        checks.images_list([made[0].image, made[0]], name="loop_images")
