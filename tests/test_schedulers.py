import numpy as np
import pytest
from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, LMSDiscreteScheduler

from sdlab.errors import SdlabInputError
from sdlab.generation import generate
from sdlab.schedulers import (make_scheduler, resolve_scheduler_name, scheduler_name, scheduler_names,
                              using_scheduler)

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
