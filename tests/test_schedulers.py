import inspect
import json

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    LMSDiscreteScheduler,
    StableDiffusionPipeline,
)
from PIL import Image

from sdlab.cli import main
from sdlab.errors import SdlabInputError
from sdlab.generation import generate
from sdlab.pipelines import load_pipeline
from sdlab.schedulers import (
    OFFERED_STEPS,
    make_scheduler,
    resolve_scheduler_name,
    scheduler_name,
    scheduler_names,
    schedulers_for,
    steps_problem,
    using_scheduler,
)
from sdlab.sweeps import guidance_sweep

REQUIRED = ["PNDM", "LMS", "DDIM", "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "UniPC"]


def test_required_names_and_aliases():
    assert set(REQUIRED) <= set(scheduler_names())
    assert resolve_scheduler_name("K_EULER_ANCESTRAL") == "Euler a"
    assert resolve_scheduler_name("k_lms") == "LMS"
    assert resolve_scheduler_name("DPMSolverMultistep") == "DPM++ 2M"


def test_unknown_scheduler_lists_valid_ones():
    with pytest.raises(SdlabInputError, match="Euler a"):
        resolve_scheduler_name("Euler b")


def test_swap_keeps_the_noise_schedule(tiny_pipe):
    config = tiny_pipe.scheduler.config
    karras = make_scheduler("DPM++ 2M Karras", config)
    assert isinstance(karras, DPMSolverMultistepScheduler) and karras.config.use_karras_sigmas
    assert karras.config.beta_schedule == config.beta_schedule
    assert isinstance(make_scheduler("K_LMS", config), LMSDiscreteScheduler)
    assert scheduler_name(karras) == "DPM++ 2M Karras"


@pytest.mark.parametrize("name", REQUIRED)
def test_every_scheduler_generates(tiny_pipe, name):
    result = generate(tiny_pipe, "a blue square", seed=3, num_inference_steps=3, scheduler=name)
    assert result[0].params.scheduler == name
    assert np.asarray(result[0].image).std() > 1


def test_using_scheduler_restores(tiny_pipe):
    before = tiny_pipe.scheduler
    with using_scheduler(tiny_pipe, "Euler a"):
        assert isinstance(tiny_pipe.scheduler, EulerAncestralDiscreteScheduler)
    assert tiny_pipe.scheduler is before


@pytest.mark.parametrize("before", scheduler_names())
def test_a_name_gives_one_scheduler_whatever_came_before(tiny_pipe, before):
    config = tiny_pipe.scheduler.config
    for name in scheduler_names():
        after = make_scheduler(name, make_scheduler(before, config).config)
        assert dict(after.config) == dict(make_scheduler(name, config).config)
        assert scheduler_name(after) == name


def test_a_karras_pipeline_swapped_to_another_name_equals_a_fresh_one(tiny_pipe):
    karras = load_pipeline("tiny-random", scheduler="DPM++ 2M Karras")
    for name in ("UniPC", "Euler a"):
        swapped = generate(karras, "a red circle", seed=1, num_inference_steps=4, scheduler=name)[0]
        fresh = generate(tiny_pipe, "a red circle", seed=1, num_inference_steps=4, scheduler=name)[0]
        assert swapped.params.scheduler == fresh.params.scheduler == name
        assert np.array_equal(np.asarray(swapped.image), np.asarray(fresh.image))


def _runs_from_noise(scheduler, steps: int) -> bool:
    """Whether diffusers' own set_timesteps/step loop gets through `steps` steps to numbers (the UNet
    left out)."""
    noisy = "generator" in inspect.signature(scheduler.step).parameters  # draws noise at each step
    extra = {"generator": torch.Generator().manual_seed(0)} if noisy else {}
    try:
        scheduler.set_timesteps(steps)
        sample = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(sample, t)
            sample = scheduler.step(torch.zeros_like(model_input), t, sample, **extra).prev_sample
    except (IndexError, ValueError, RuntimeError):
        return False
    return bool(torch.isfinite(sample).all())


@pytest.mark.parametrize("name", scheduler_names())
def test_the_steps_check_agrees_with_diffusers(tiny_model, name):
    for steps in range(1, 25):
        scheduler = make_scheduler(name, tiny_model.scheduler.config)
        assert (steps_problem(scheduler, steps) is None) == _runs_from_noise(scheduler, steps), (name, steps)


@pytest.mark.parametrize("name, steps, message", [
    ("DPM++ 2M Karras", 20, r"scheduler 'DPM\+\+ 2M Karras' cannot run 20 steps on this model's noise schedule "
                            r"\(squaredcos_cap_v2, trailing spacing\): its first 9 timesteps are all 998, and "
                            r"diffusers cannot start from a repeated timestep; use scheduler='DPM\+\+ 2M'$"),
    ("PNDM", 1, "scheduler 'PNDM' cannot run 1 step on .*: diffusers fails to lay out its timesteps; use "
                "num_inference_steps=4 or more, or scheduler='DPM\\+\\+ 2M'"),
    ("PNDM", 3, "scheduler 'PNDM' cannot run 3 steps .* use num_inference_steps=4 or more"),
])
def test_a_scheduler_the_model_cannot_run_is_refused_before_any_work(tiny_model, name, steps, message):
    pipe = tiny_model
    if name == "PNDM":  # sdlab-tiny's config has SD 1.5's skip_prk_steps; a model without it cannot run 1-3 steps
        config = {k: v for k, v in tiny_model.scheduler.config.items() if k != "skip_prk_steps"}
        pipe = StableDiffusionPipeline(**tiny_model.components | {"scheduler": DDIMScheduler.from_config(config)})
        made = generate(tiny_model, "a red circle", seed=1, num_inference_steps=steps, scheduler=name)[0]
        assert made.params.scheduler == name
    with pytest.raises(SdlabInputError, match=message):
        generate(pipe, "a red circle", seed=1, num_inference_steps=steps, scheduler=name)
    with pytest.raises(SdlabInputError, match=message):
        guidance_sweep(pipe, "a red circle", [1, 5], num_inference_steps=steps, scheduler=name)
    suggested = make_scheduler("DPM++ 2M", tiny_model.scheduler.config)
    assert steps_problem(suggested, steps) is None


def test_what_the_steps_check_lets_through_runs(tiny_model):
    made = generate(tiny_model, "a red circle", seed=1, num_inference_steps=4, scheduler="PNDM")[0]
    assert made.params.scheduler == "PNDM"
    # image to image starts partway with its place given, so repeated first timesteps do not stop it
    start = Image.new("RGB", (64, 64), "red")
    again = generate(tiny_model, "a red circle", seed=1, num_inference_steps=4, scheduler="DPM++ 2M Karras",
                     image=start, strength=1.0)[0]
    assert again.params.scheduler == "DPM++ 2M Karras" and again.image.size == (64, 64)


def test_the_schedulers_offered_for_a_model_run_it_at_every_step_count(tiny_model):
    from sdlab.tiny.model import build_scheduler

    shipped, trained = tiny_model.scheduler.config, build_scheduler().config  # the shipped model's, and training's
    schedules = {json.dumps({k: v for k, v in c.items() if not k.startswith("_")}, sort_keys=True): c
                 for c in (shipped, trained)}  # one schedule while the shipped model is the one training makes
    for config in schedules.values():
        offered = schedulers_for(config)
        for name in scheduler_names():
            runs = all(_runs_from_noise(make_scheduler(name, config), steps) for steps in OFFERED_STEPS)
            assert (name in offered) == runs, (name, dict(config))
        assert "DPM++ 2M Karras" not in offered  # Karras sigmas cannot start a cosine schedule from noise
    assert "PNDM" in schedulers_for(trained)  # SD 1.5's PNDM config (skip_prk_steps) runs 1 to 3 steps too


def test_sdlab_schedulers_for_a_model_names_what_it_leaves_out(capsys):
    assert main(["schedulers", "--model", "sdlab-tiny"]) == 0
    out, err = capsys.readouterr()
    assert "DPM++ 2M Karras" not in out and "DDIM" in out
    assert "not offered for sdlab-tiny" in err and "DPM++ 2M Karras" in err
    assert main(["schedulers"]) == 0 and "DPM++ 2M Karras" not in capsys.readouterr().out  # the default model
    assert main(["schedulers", "--all"]) == 0 and "DPM++ 2M Karras" in capsys.readouterr().out


def test_the_widget_offers_only_what_runs_and_refuses_the_rest(tiny_model):
    from sdlab.widgets import GenerationControls

    menu = GenerationControls(tiny_model).widgets["scheduler"]
    assert [value for _, value in menu.options if value] == schedulers_for(tiny_model.scheduler.config)
    with pytest.raises(SdlabInputError, match="cannot run this model at every step count"):
        GenerationControls(tiny_model, scheduler="DPM++ 2M Karras")


def test_a_scheduler_whose_arithmetic_gives_nan_is_refused_and_not_offered(tiny_model):
    # the cosine schedule ends in pure noise: the first sigma is 20291, and float32 rounding makes
    # Euler a's step take the square root of a negative number at 3 steps (a black, NaN image)
    with pytest.raises(SdlabInputError, match=r"scheduler 'Euler a' cannot run 3 steps .*gives no number \(NaN\)"
                                              r".*use num_inference_steps=4 or more, or scheduler='DPM\+\+ 2M'"):
        generate(tiny_model, "a red circle", seed=1, num_inference_steps=3, scheduler="Euler a")
    assert "Euler a" not in schedulers_for(tiny_model.scheduler.config)
    made = generate(tiny_model, "a red circle", seed=1, num_inference_steps=4, scheduler="Euler a")[0]
    assert np.isfinite(np.asarray(made.image, dtype=float)).all() and np.asarray(made.image).std() > 1
