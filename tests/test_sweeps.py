import numpy as np
import pytest

from sdlab.errors import SdlabInputError
from sdlab.generation import generate
from sdlab.seeds import make_latents
from sdlab.sweeps import guidance_sweep, label, sweep


def _max_diff(a, b):
    return int(np.abs(np.asarray(a, int) - np.asarray(b, int)).max())


@pytest.mark.parametrize("scheduler", ["PNDM", "DPM++ 2M", "Euler", "Euler a"])
def test_batched_guidance_sweep_equals_separate_runs(tiny_pipe, scheduler):
    values = [1, 3, 7.5, 15]
    batched = guidance_sweep(tiny_pipe, "a red circle", values, seed=4, num_inference_steps=6, scheduler=scheduler)
    assert [p.guidance_scale for p in (r.params for r in batched.results)] == values
    for g, item in zip(values, batched.results):
        alone = generate(tiny_pipe, "a red circle", seed=4, guidance_scale=g, num_inference_steps=6,
                         scheduler=scheduler)[0]
        assert item.params == alone.params
        assert _max_diff(item.image, alone.image) <= 2  # float rounding only


def test_guidance_sweep_bad_value(tiny_pipe):
    with pytest.raises(SdlabInputError, match="guidance_scale must be between 0 and 50, got -1"):
        guidance_sweep(tiny_pipe, "a red circle", [1, -1])


@pytest.mark.parametrize("run, message", [
    (lambda pipe: guidance_sweep(pipe, "a red circle", [1, 7], num_inference_steps=0),
     "num_inference_steps must be a whole number from 1 to 500, got 0"),
    (lambda pipe: guidance_sweep(pipe, "a red circle", [1, 7], width=0), "width must be between 32 and 2048 pixels, got 0"),
    (lambda pipe: sweep(pipe, "a red circle", "seed", [1, 2], height=0), "height must be between 32 and 2048 pixels, got 0"),
    (lambda pipe: make_latents(pipe, 1, height=0), "height must be a whole multiple of 2 pixels"),  # tiny VAE: 2×
    (lambda pipe: make_latents(pipe, 1, width=33), r"width must be a whole multiple of 2 pixels \(the VAE's scale\), got 33; "
                                                   "the model's own size is 64"),
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
    values = [1, 2, 3, 5, 7.5, 10, 15]
    whole = guidance_sweep(tiny_pipe, "a red circle", values, seed=4, num_inference_steps=4)
    chunked = guidance_sweep(tiny_pipe, "a red circle", values, seed=4, num_inference_steps=4, max_batch=3)
    assert [r.params for r in chunked.results] == [r.params for r in whole.results]
    assert max(_max_diff(a, b) for a, b in zip(chunked.images, whole.images)) <= 2
