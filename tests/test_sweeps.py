import numpy as np
import pytest

from sdlab.errors import SdlabInputError
from sdlab.generation import MAX_IMAGES, generate
from sdlab.seeds import make_latents
from sdlab.sweeps import guidance_sweep, label, sweep


def _max_diff(a, b):
    return int(np.abs(np.asarray(a, int) - np.asarray(b, int)).max())


@pytest.mark.parametrize("scheduler", ["PNDM", "DPM++ 2M", "Euler", "Euler a"])
def test_batched_guidance_sweep_equals_separate_runs(tiny_pipe, scheduler):
    values = [1, 3, 7.5, 15]
    batched = guidance_sweep(tiny_pipe, "a red circle", values, seed=4, num_inference_steps=6, scheduler=scheduler)
    assert [p.guidance_scale for p in (r.params for r in batched.results)] == values
    for g, item in zip(values, batched.results, strict=True):
        alone = generate(tiny_pipe, "a red circle", seed=4, guidance_scale=g, num_inference_steps=6,
                         scheduler=scheduler)[0]
        assert item.params == alone.params
        assert _max_diff(item.image, alone.image) <= 2  # float rounding only


def test_guidance_one_or_less_is_the_prompts_prediction_alone_as_in_diffusers(tiny_model):
    values = [0, 0.5, 1, 7.5]  # diffusers turns guidance off at 1 or less: no unconditional half
    batched = guidance_sweep(tiny_model, "a red circle", values, seed=3, num_inference_steps=3)
    for g, item in zip(values, batched.results, strict=True):
        alone = generate(tiny_model, "a red circle", seed=3, guidance_scale=g, num_inference_steps=3)[0]
        assert item.params == alone.params
        assert _max_diff(item.image, alone.image) <= 2  # float rounding only


@pytest.mark.parametrize("run, message", [
    (lambda pipe: guidance_sweep(pipe, "a red circle", [1, -1]), "guidance_scale must be between 0 and 50, got -1"),
    (lambda pipe: guidance_sweep(pipe, "a red circle", [True, 3]),
     "guidance_scale must be between 0 and 50, got True"),
    (lambda pipe: guidance_sweep(pipe, "a red circle", 7.5),
     r"guidance_values must be a list of the values guidance_scale takes, got 7.5 \(float\); put even one value "
     r"in a list: \[7.5\]"),
    (lambda pipe: guidance_sweep(pipe, "a red circle", "7.5"), "guidance_values must be a list of the values"),
    (lambda pipe: guidance_sweep(pipe, "a red circle", []), "needs at least one value"),
    (lambda pipe: guidance_sweep(pipe, "a red circle", [1, 3], max_batch=0), "max_batch must be a whole number of "
                                                                             "images, 1 or more"),
    (lambda pipe: guidance_sweep(pipe, "a red circle", [1, 3], max_batch=-1), "max_batch must be .* got -1"),
    (lambda pipe: guidance_sweep(pipe, "a red circle", [1, 3], max_batch=1.5), "max_batch must be .* got 1.5"),
    (lambda pipe: guidance_sweep(pipe, "a red circle", [1, 3], max_batch=True), "max_batch must be .* got True"),
    (lambda pipe: guidance_sweep(pipe, "a red circle", [1, 3], negative_prompt=["a"]),
     r"negative_prompt must be one string for a sweep's one prompt, got \['a'\]"),
    (lambda pipe: sweep(pipe, "a red circle", "seed", [1, 2], negative_prompt=["a"]), "negative_prompt must be one"),
    (lambda pipe: sweep(pipe, "a red circle", "guidance_scale", 7.5), "x_values must be a list of the values "
                                                                      "guidance_scale takes"),
    (lambda pipe: sweep(pipe, "a red circle", "seed", [1], "scheduler", "DDIM"), "y_values must be a list"),
    (lambda pipe: sweep(pipe, "a red circle", "guidance", [1, 7]), "'guidance' is not a parameter of generate.*; "
                                                                   "sweep or set one of guidance_scale"),
    (lambda pipe: sweep(pipe, "a red circle", "seed", [1], steps=4), "'steps' is not a parameter of generate"),
])
def test_guidance_sweep_bad_input(tiny_pipe, run, message):
    with pytest.raises(SdlabInputError, match=message):
        run(tiny_pipe)


def test_negative_prompt_none_in_a_sweep_is_empty(tiny_pipe):
    swept = guidance_sweep(tiny_pipe, "a red circle", [1, 3], seed=2, num_inference_steps=1, negative_prompt=None)
    plain = guidance_sweep(tiny_pipe, "a red circle", [1, 3], seed=2, num_inference_steps=1)
    assert [r.params for r in swept.results] == [r.params for r in plain.results]
    assert all(_max_diff(a, b) == 0 for a, b in zip(swept.images, plain.images, strict=True))


@pytest.mark.parametrize("run, message", [
    (lambda pipe: guidance_sweep(pipe, "a red circle", [1, 7], num_inference_steps=0),
     "num_inference_steps must be a whole number from 1 to 500, got 0"),
    (lambda pipe: guidance_sweep(pipe, "a red circle", [1, 7], width=0),
     "width must be between 32 and 2048 pixels, got 0"),
    (lambda pipe: sweep(pipe, "a red circle", "seed", [1, 2], height=0),
     "height must be between 32 and 2048 pixels, got 0"),
    # make_latents checks sizes by generate's rule, so the latents it makes are ones generate takes
    (lambda pipe: make_latents(pipe, 1, height=0), "height must be between 32 and 2048 pixels, got 0"),
    (lambda pipe: make_latents(pipe, 1, width=33), "width must be a multiple of 8, got 33; try 32 or 40"),
    (lambda pipe: make_latents(pipe, 1, width=True), "width must be a whole number of pixels, got True"),
])
def test_a_zero_is_refused_not_taken_for_the_default(tiny_pipe, run, message):
    with pytest.raises(SdlabInputError, match=message):
        run(tiny_pipe)


def test_xy_sweep_layout_and_grid(tiny_pipe):
    xy = sweep(tiny_pipe, "a red circle", "guidance_scale", [1, 7.5], "seed", [1, 2, 3], num_inference_steps=2)
    assert [(r.params.seed, r.params.guidance_scale) for r in xy.results] == \
        [(1, 1.0), (1, 7.5), (2, 1.0), (2, 7.5), (3, 1.0), (3, 7.5)]
    grid = xy.grid(title="t")
    assert grid.width > 2 * 128 and grid.height > 3 * 128
    steps = sweep(tiny_pipe, "a red circle", "num_inference_steps", [1, 3], seed=5)
    assert [r.params.num_inference_steps for r in steps.results] == [1, 3]
    assert all(r.params.seed == 5 for r in steps.results)


def test_sweep_arguments():
    assert label("guidance_scale", 7.5) == "guidance 7.5" and label("scheduler", "DDIM") == "DDIM"
    with pytest.raises(SdlabInputError, match="two different parameters"):
        sweep(None, "x", "seed", [1], "seed", [2])


def test_sweeps_bigger_than_one_call_go_in_chunks_with_the_same_images(tiny_pipe):
    seeds = list(range(70))  # more than MAX_IMAGES (64) in one call
    many = sweep(tiny_pipe, "a red circle", "seed", seeds, num_inference_steps=2)
    assert [r.params.seed for r in many.results] == seeds
    for k in (0, 63, 64, 69):  # both sides of the chunk border
        alone = generate(tiny_pipe, "a red circle", seed=k, num_inference_steps=2)[0]
        assert _max_diff(many.results[k].image, alone.image) <= 2
    many_values = [1 + k / 8 for k in range(MAX_IMAGES + 1)]  # more than one call holds
    swept = sweep(tiny_pipe, "a red circle", "guidance_scale", many_values, seed=4, num_inference_steps=1)
    assert [r.params.guidance_scale for r in swept.results] == many_values
    last = generate(tiny_pipe, "a red circle", seed=4, guidance_scale=many_values[-1], num_inference_steps=1)[0]
    assert _max_diff(swept.results[-1].image, last.image) <= 2
    values = [1, 2, 3, 5, 7.5, 10, 15]
    whole = guidance_sweep(tiny_pipe, "a red circle", values, seed=4, num_inference_steps=4)
    chunked = guidance_sweep(tiny_pipe, "a red circle", values, seed=4, num_inference_steps=4, max_batch=3)
    assert [r.params for r in chunked.results] == [r.params for r in whole.results]
    assert max(_max_diff(a, b) for a, b in zip(chunked.images, whole.images, strict=True)) <= 2


def test_a_seed_sweep_image_is_made_again_pixel_for_pixel(tiny_model, tmp_path):
    """A seed sweep is a batch of consecutive seeds: regenerate() runs that batch again, since a
    batch's arithmetic on the CPU can round differently from one image's."""
    from sdlab.metadata import read_params, regenerate, save_png

    swept = sweep(tiny_model, "a red circle", "seed", [10, 11, 12, 13], num_inference_steps=3)
    for k, item in enumerate(swept.results):
        assert (item.params.seed, item.params.batch_size, item.params.batch_pos) == (10 + k, 4, k)
        path = save_png(item, tmp_path / f"{item.params.seed}.png")
        assert read_params(path) == item.params
        assert _max_diff(regenerate(path, tiny_model).image, item.image) == 0


def test_a_guidance_sweep_image_is_made_again_alone_within_rounding(tiny_model, tmp_path):
    """One loop for all guidance values has no single-image equal, so regenerate() makes the image
    alone: the same parameters, the pixels within float rounding (`sdlab regenerate` says by how much)."""
    from sdlab.metadata import regenerate, save_png

    item = guidance_sweep(tiny_model, "a red circle", [3, 7.5], seed=5, num_inference_steps=3).results[1]
    assert (item.params.batch_size, item.params.batch_pos) == (1, 0)
    again = regenerate(save_png(item, tmp_path / "g.png"), tiny_model)
    assert again.params == item.params and _max_diff(again.image, item.image) <= 2
