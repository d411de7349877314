import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab.errors import SdlabInputError
from sdlab.generation import MAX_IMAGES, PromptTruncatedWarning, generate
from sdlab.seeds import make_latents, seeds_for, slerp, variation_latents


def pixels(image):
    return np.asarray(image).astype(int)


def test_same_seed_same_pixels_different_seed_differs(tiny_pipe):
    a = generate(tiny_pipe, "a red circle", seed=42, num_inference_steps=3)[0].image
    b = generate(tiny_pipe, "a red circle", seed=42, num_inference_steps=3)[0].image
    c = generate(tiny_pipe, "a red circle", seed=43, num_inference_steps=3)[0].image
    assert np.array_equal(pixels(a), pixels(b))
    assert np.abs(pixels(a) - pixels(c)).mean() > 1


def test_latents_from_seed_equal_the_pipelines_own(tiny_pipe):
    by_seed = generate(tiny_pipe, "a red circle", seed=7, num_inference_steps=3)[0].image
    latents = make_latents(tiny_pipe, 7)
    assert latents.shape == (1, 4, 32, 32)
    by_latents = generate(tiny_pipe, "a red circle", latents=latents, seed=7, num_inference_steps=3)[0].image
    assert np.array_equal(pixels(by_seed), pixels(by_latents))


def test_batch_image_k_is_the_single_run_with_seed_k(tiny_pipe):
    batch = generate(tiny_pipe, "a green cross", seed=100, num_images_per_prompt=4, num_inference_steps=3)
    assert [p.seed for p in batch.params] == [100, 101, 102, 103]
    for k, item in enumerate(batch):
        single = generate(tiny_pipe, "a green cross", seed=100 + k, num_inference_steps=3)[0]
        # the starting noise is identical; batched matrix products may round the last bit differently
        assert np.abs(pixels(item.image) - pixels(single.image)).max() <= 2


def test_batch_is_one_call_with_timing(tiny_pipe):
    result = generate(tiny_pipe, ["a red circle", "a blue square"], seed=[5, 9], num_images_per_prompt=1,
                      num_inference_steps=2)
    assert [p.prompt for p in result.params] == ["a red circle", "a blue square"]
    assert [p.seed for p in result.params] == [5, 9]
    assert result.seconds > 0 and result[0].seconds == pytest.approx(result.seconds / 2)


def test_params_record_everything(tiny_pipe):
    item = generate(tiny_pipe, "a red circle", negative_prompt="blurry", seed=1, num_inference_steps=2,
                    guidance_scale=3.0, scheduler="Euler a", width=96, height=64)[0]
    p = item.params
    assert (p.prompt, p.negative_prompt, p.seed, p.num_inference_steps, p.guidance_scale) == \
        ("a red circle", "blurry", 1, 2, 3.0)
    assert (p.scheduler, p.model, p.width, p.height, p.mode) == ("Euler a", "tiny-random", 96, 64, "txt2img")
    assert item.image.size == (96, 64)


def test_variations_are_close_to_the_base(tiny_pipe):
    base = make_latents(tiny_pipe, 1)
    assert torch.equal(slerp(0.0, base, make_latents(tiny_pipe, 2)), base)
    near = variation_latents(tiny_pipe, 1, 2, 0.1)
    far = variation_latents(tiny_pipe, 1, 2, 0.9)
    assert (near - base).norm() < (far - base).norm()
    assert abs(near.norm() / base.norm() - 1) < 0.05  # slerp keeps the noise's length
    result = generate(tiny_pipe, "a red circle", seed=1, variation_seed=2, variation_strength=0.1,
                      num_inference_steps=2)
    assert result[0].params.variation_seed == 2


def test_img2img_and_inpaint_share_the_pipeline(tiny_pipe):
    init = generate(tiny_pipe, "a red circle", seed=1, num_inference_steps=2)[0].image
    changed = generate(tiny_pipe, "a blue square", seed=1, image=init, strength=0.6, num_inference_steps=4)[0]
    assert changed.params.mode == "img2img" and changed.params.strength == 0.6
    mask = Image.new("L", init.size, 0)
    mask.paste(255, (0, 0, 32, 64))
    painted = generate(tiny_pipe, "a blue square", seed=1, image=init, mask_image=mask, num_inference_steps=4)[0]
    assert painted.params.mode == "inpaint" and painted.image.size == init.size


def test_long_prompt_warns_what_was_cut(tiny_pipe):
    prompt = "a red circle " + " ".join(f"word{i}" for i in range(80)) + " ENDING"
    with pytest.warns(PromptTruncatedWarning, match="ending"):
        generate(tiny_pipe, prompt, seed=0, num_inference_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncatedWarning)
        generate(tiny_pipe, "a red circle", seed=0, num_inference_steps=1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(height=500), "height must be a multiple of 8, got 500; try 496 or 504"),
    (dict(width=63), "width must be a multiple of 8"),
    (dict(width=4096), "between 32 and 2048"),
    (dict(height=16), "between 32 and 2048"),
    (dict(height=0), "height must be between 32 and 2048 pixels, got 0"),  # 0 is not "the default"
    (dict(num_inference_steps=0), "num_inference_steps must be a whole number from 1 to 500, got 0"),
    (dict(num_inference_steps=501), "from 1 to 500"),
    (dict(num_inference_steps=2.5), "whole number"),
    (dict(num_inference_steps=True), "num_inference_steps must be a whole number from 1 to 500, got True"),
    (dict(guidance_scale=True), "guidance_scale must be between 0 and 50, got True"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be between 0 and 50, got nan"),
    (dict(num_images_per_prompt=True), "num_images_per_prompt must be between 1 and 64, got True"),
    (dict(negative_prompt=3), r"negative_prompt must be a string, or a list of strings \(one per prompt\), got 3"),
    (dict(negative_prompt=["x", "y"]), "negative_prompt is a list of 2 but there are 1 prompts; give one"),
    (dict(variation_strength=0.5), "variation_strength 0.5 has no seed to mix towards: pass variation_seed="),
    (dict(variation_seed=3, variation_strength=-0.5), "variation_strength must be a number from 0 to 1, got -0.5"),
    (dict(variation_seed=3, variation_strength=float("nan")),
     "variation_strength must be a number from 0 to 1, got nan"),
    (dict(variation_seed=3, variation_strength="0.5"), "variation_strength must be a number from 0 to 1, got '0.5'"),
    (dict(variation_seed=3, variation_strength=True), "variation_strength must be a number from 0 to 1, got True"),
    (dict(variation_seed=-1, variation_strength=0.5), r"variation_seed must be in \[0, 2\*\*64\), got -1"),
    (dict(variation_seed="5", variation_strength=0.5), "variation_seed must be a whole number"),
    (dict(variation_seed=2, variation_strength=0.5, latents=torch.zeros(1, 4, 32, 32)),
     "either latents= or variation_seed="),
    (dict(guidance_scale=-1), "guidance_scale must be between 0 and 50, got -1"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt must be between 1 and"),
    (dict(num_images_per_prompt=MAX_IMAGES + 1), "num_images_per_prompt must be between 1 and"),
    (dict(seed=-1), r"seed must be in \[0, 2\*\*64\)"),
    (dict(seed=2**64), r"seed must be in \[0, 2\*\*64\)"),
    (dict(seed="42"), "seed must be a whole number"),
    (dict(seed=[1, 2]), "one seed per image"),
    (dict(scheduler="K_NOPE"), "choose one of"),
    (dict(latents=torch.zeros(1, 4, 8, 8)), r"latents must have shape \(N, 4, 32, 32\)"),
    (dict(mask_image=Image.new("L", (64, 64))), "needs an image"),
])
def test_bad_input_is_a_teaching_error(tiny_pipe, kwargs, message):
    with pytest.raises(SdlabInputError, match=message):
        generate(tiny_pipe, "a red circle", **kwargs)


def test_wrong_kinds_of_argument_are_teaching_errors(tiny_pipe):
    with pytest.raises(SdlabInputError, match="prompt must be a string or a list of strings, got NoneType"):
        generate(tiny_pipe, None)
    with pytest.raises(SdlabInputError, match=r"slerp mixes two noises of one shape, got \(1, 4, 32, 32\) and "
                                              r"\(1, 4, 16, 16\); make both with make_latents"):
        slerp(0.5, make_latents(tiny_pipe, 1), make_latents(tiny_pipe, 2, height=32, width=32))
    from sdlab.metadata import read_params
    with pytest.raises(SdlabInputError, match="read_params takes a PNG's path or an opened PNG image, got NoneType"):
        read_params(None)


@pytest.mark.parametrize("strength", [0, -0.1, 1.5, True, float("nan")])
def test_bad_strength(tiny_pipe, strength):
    init = Image.new("RGB", (64, 64), "red")
    with pytest.raises(SdlabInputError, match=r"strength must be in \(0, 1\]"):
        generate(tiny_pipe, "x", image=init, strength=strength)


@pytest.mark.parametrize("mask", [None, Image.new("L", (64, 64), 255)])
def test_a_strength_too_small_for_the_steps_is_refused(tiny_pipe, mask):
    init = Image.new("RGB", (64, 64), "red")
    with pytest.raises(SdlabInputError, match=r"strength 0.3 of 3 steps leaves no step to run .* raise "
                                              r"num_inference_steps to 4 or more, or strength to 0.33 or more"):
        generate(tiny_pipe, "x", image=init, mask_image=mask, strength=0.3, num_inference_steps=3)
    made = generate(tiny_pipe, "x", image=init, mask_image=mask, strength=0.3, num_inference_steps=4)[0]
    assert made.image.size == (64, 64)  # one step of the four runs


@pytest.mark.parametrize("kwargs, message", [
    (dict(latents=torch.zeros(1, 4, 32, 32)), "latents= is the starting noise of text to image, but image to image "
                                              "starts from the image"),
    (dict(variation_seed=2, variation_strength=0.5), "variation_seed= mixes the starting noise of text to image"),
])
@pytest.mark.parametrize("mask", [None, Image.new("L", (64, 64), 255)])
def test_image_to_image_refuses_the_noise_it_would_not_use(tiny_pipe, kwargs, message, mask):
    init = Image.new("RGB", (64, 64), "red")
    with pytest.raises(SdlabInputError, match=message):
        generate(tiny_pipe, "x", image=init, mask_image=mask, num_inference_steps=2, **kwargs)


def test_an_image_too_small_to_size_the_result_says_so(tiny_pipe):
    with pytest.raises(SdlabInputError, match="image is 1×1 pixels, smaller than the 32×32 the model needs"):
        generate(tiny_pipe, "x", image=Image.new("RGB", (1, 1), "red"))
    made = generate(tiny_pipe, "x", image=Image.new("RGB", (1, 1), "red"), height=64, width=64, num_inference_steps=2)
    assert made[0].image.size == (64, 64)  # resized to the size asked for


def test_mask_size_must_match(tiny_pipe):
    init = Image.new("RGB", (64, 64), "red")
    with pytest.raises(SdlabInputError, match="mask_image is 32×32 but image is 64×64"):
        generate(tiny_pipe, "x", image=init, mask_image=Image.new("L", (32, 32)))


def test_seeds_for():
    assert seeds_for(10, 3) == [10, 11, 12]
    assert seeds_for([4, 2], 2) == [4, 2]
    assert len(set(seeds_for(None, 4))) == 4


def test_latents_given_by_hand_record_no_seed(tiny_pipe, tmp_path):
    from sdlab.metadata import read_params, regenerate, save_png

    item = generate(tiny_pipe, "a red circle", latents=make_latents(tiny_pipe, 7), num_inference_steps=2)[0]
    assert item.params.seed is None and item.params.batch_size == 1
    path = save_png(item, tmp_path / "latents.png")
    assert "Seed:" not in Image.open(path).info["parameters"] and read_params(path).seed is None
    with pytest.raises(SdlabInputError, match="no Seed, so the image cannot be made again"):
        regenerate(path, tiny_pipe)


def test_negative_prompt_none_is_empty_and_a_list_gives_one_per_prompt(tiny_pipe):
    none = generate(tiny_pipe, "a red circle", negative_prompt=None, seed=3, num_inference_steps=2)[0]
    empty = generate(tiny_pipe, "a red circle", seed=3, num_inference_steps=2)[0]
    assert none.params == empty.params and np.array_equal(pixels(none.image), pixels(empty.image))
    prompts, negatives = ["a red circle", "a blue square"], ["blurry", "dark"]
    both = generate(tiny_pipe, prompts, negative_prompt=negatives, seed=[3, 4], num_images_per_prompt=1,
                    num_inference_steps=2, guidance_scale=7.5)
    assert [(p.prompt, p.negative_prompt) for p in both.params] == list(zip(prompts, negatives, strict=True))
    diffusers_own = tiny_pipe(prompts, negative_prompt=negatives, num_inference_steps=2, guidance_scale=7.5, height=64,
                              width=64, generator=[torch.Generator().manual_seed(s) for s in (3, 4)]).images
    for ours, theirs in zip(both.images, diffusers_own, strict=True):
        assert np.array_equal(pixels(ours), pixels(theirs))


def test_consecutive_seeds_of_one_prompt_are_a_batch_to_rerun(tiny_pipe):
    listed = generate(tiny_pipe, ["a red circle"] * 3, seed=[10, 11, 12], num_inference_steps=1)
    assert [(p.seed, p.batch_size, p.batch_pos) for p in listed.params] == [(10, 3, 0), (11, 3, 1), (12, 3, 2)]
    assert listed.params == generate(tiny_pipe, "a red circle", seed=10, num_images_per_prompt=3,
                                     num_inference_steps=1).params
    for other in (dict(prompt=["a red circle"] * 2, seed=[5, 9]),
                  dict(prompt=["a red circle", "a square"], seed=[5, 6]),
                  dict(prompt=["a red circle"] * 2, seed=[5, 6], negative_prompt=["x", "y"])):
        assert {(p.batch_size, p.batch_pos) for p in generate(tiny_pipe, num_inference_steps=1, **other).params} == \
            {(1, 0)}


def test_generation_controls_take_what_generate_takes(tiny_pipe):
    from sdlab.generation import MAX_GUIDANCE, MAX_STEPS
    from sdlab.seeds import MAX_SEED
    from sdlab.widgets import GenerationControls

    big = GenerationControls(tiny_pipe, seed=MAX_SEED, num_inference_steps=MAX_STEPS, guidance_scale=MAX_GUIDANCE,
                             scheduler="k_euler_ancestral")
    assert big.values() | {"prompt": None} == {"prompt": None, "negative_prompt": "", "seed": MAX_SEED,
                                                "num_inference_steps": MAX_STEPS, "guidance_scale": MAX_GUIDANCE,
                                                "scheduler": "Euler a"}
    usual = GenerationControls(tiny_pipe).widgets
    assert (usual["num_inference_steps"].max, usual["guidance_scale"].max) == (150, 30)  # A1111's sliders
    for kwargs, message in [(dict(seed=MAX_SEED + 1), r"seed must be in \[0, 2\*\*64\)"),
                            (dict(num_inference_steps=MAX_STEPS + 1), "num_inference_steps must be a whole number"),
                            (dict(guidance_scale=MAX_GUIDANCE + 1), "guidance_scale must be between 0 and 50"),
                            (dict(scheduler="k_nope"), "scheduler 'k_nope' is unknown")]:
        with pytest.raises(SdlabInputError, match=message):
            GenerationControls(tiny_pipe, **kwargs)


def test_generation_controls_show_a_teaching_error_next_to_them(tiny_model, monkeypatch):
    import sdlab.widgets
    from sdlab.widgets import GenerationControls

    # the controls offer only what runs (the schedulers too), so the error comes from generate itself
    controls = GenerationControls(tiny_model, num_inference_steps=2)

    def refuse(pipe, **settings):
        raise SdlabInputError(f"scheduler {settings['scheduler']!r} cannot run 2 steps; use <b>4</b>")
    monkeypatch.setattr(sdlab.widgets, "generate", refuse)
    assert controls.run() is None
    assert "cannot run 2 steps; use &lt;b&gt;4&lt;/b&gt;" in controls.info.value  # shown as text, escaped


def test_explore_shows_one_output_the_live_controls_or_else_their_picture(tiny_pipe, monkeypatch):
    import base64

    import IPython.display

    from sdlab.widgets import explore

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objects: shown.extend(objects))
    controls = explore(tiny_pipe, prompt="a red circle", seed=3, num_inference_steps=2)
    assert len(shown) == 1  # no second, static image under the controls
    bundle = shown[0]._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # JupyterLab and Colab: the widget
    assert base64.b64decode(bundle["image/png"]) == controls.image.value  # elsewhere: its picture
    before = bundle["image/png"]
    controls.widgets["seed"].value = 4
    controls.run()  # the picture follows the controls
    assert shown[0]._repr_mimebundle_()["image/png"] != before
