"""AUTOMATIC1111's API (`/sdapi/v1`) as the real `webuiapi` client uses it, against a live server."""
import numpy as np
import pytest
import webuiapi
from PIL import Image

import sdlab
import sdlab.app
from sdlab.metadata import read_params
from sdlab.schedulers import schedulers_for

PROMPT = "a small red circle on a blue background"


@pytest.fixture(scope="module")
def app(tiny_pipe, tmp_path_factory):
    return sdlab.app.create_app(tiny_pipe, face_restorer=None, feedback_dir=tmp_path_factory.mktemp("feedback"))


@pytest.fixture(scope="module")
def live(app):
    server = sdlab.app.Server(app, "127.0.0.1", 0).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def api(live):
    return webuiapi.WebUIApi(host="127.0.0.1", port=live.port, sampler="Euler", steps=3)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def test_txt2img_gives_the_images_generate_gives(api, tiny_pipe):
    result = api.txt2img(prompt=PROMPT, negative_prompt="green", seed=5, cfg_scale=6.0, width=64, height=64,
                         batch_size=2)
    assert len(result.images) == 2
    assert result.info["all_seeds"] == [5, 6] and result.info["sampler_name"] == "Euler"
    assert result.info["steps"] == 3 and result.info["cfg_scale"] == 6.0
    assert result.info["sd_model_name"] == "tiny-random"
    assert all(isinstance(i, int) for i in result.info["image_ids"])  # kept in the feedback store
    alone = sdlab.generate(tiny_pipe, PROMPT, negative_prompt="green", seed=5, num_images_per_prompt=2,
                           num_inference_steps=3, guidance_scale=6.0, scheduler="Euler")
    for got, want in zip(result.images, alone.images, strict=True):
        assert np.array_equal(pixels(got), pixels(want))
    assert read_params(result.images[0]).seed == 5  # each PNG carries its parameters
    assert result.info["infotexts"][1].endswith("Batch size: 2, Batch pos: 1")


def test_the_seed_minus_one_is_random_and_echoed(api):
    result = api.txt2img(prompt=PROMPT, seed=-1, width=64, height=64)
    assert isinstance(result.info["seed"], int) and result.info["seed"] >= 0


def test_img2img_and_inpainting(api, tiny_pipe):
    start = Image.new("RGB", (64, 64), (30, 60, 200))
    start.paste((220, 30, 30), (16, 16, 48, 48))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    # webuiapi sends width and height 512 unless told: A1111 then resizes the start image to them. On sdlab-tiny,
    # whose VAE divides the size by 4: tiny-random's divides it by 2 and attends over all 256 × 256 positions (half
    # a minute of this machine's CPU)
    api.util_set_model("sdlab-tiny", find_closest=False)
    try:
        assert api.img2img(images=[start], prompt=PROMPT, seed=3, steps=2).image.size == (512, 512)
    finally:
        api.set_options({"sd_model_checkpoint": "tiny-random"})
    redrawn = api.img2img(images=[start], prompt=PROMPT, denoising_strength=0.5, seed=3, steps=4, width=64, height=64)
    want = sdlab.generate(tiny_pipe, PROMPT, image=start, strength=0.5, seed=3, num_inference_steps=4,
                          scheduler="Euler", guidance_scale=7.0)[0]
    assert np.array_equal(pixels(redrawn.image), pixels(want.image))
    assert redrawn.info["denoising_strength"] == 0.5

    painted = api.img2img(images=[start], mask_image=mask, prompt=PROMPT, denoising_strength=1.0, seed=3, steps=4,
                          width=64, height=64)
    kept = pixels(painted.image)[:, 40:]  # the black half of the mask stays close to the start image
    assert np.abs(kept - pixels(start)[:, 40:]).mean() < np.abs(pixels(painted.image)[:, :24]
                                                                 - pixels(start)[:, :24]).mean()
    assert read_params(painted.image).mode == "inpaint"


def test_samplers_schedulers_models_and_options(api, tiny_pipe):
    assert api.util_get_sampler_names() == sorted(schedulers_for(tiny_pipe.scheduler.config))
    assert "automatic" in api.util_get_scheduler_names()
    assert "tiny-random" in api.util_get_model_names() and "sdlab-tiny" in api.util_get_model_names()
    assert api.util_get_current_model() == "tiny-random"
    assert api.get_progress()["state"]["job_count"] == 0
    api.util_wait_for_ready(check_interval=0.1)  # returns at once: nothing is running


def test_switching_the_model_through_options(api, app):
    api.util_set_model("sdlab-tiny", find_closest=False)
    try:
        assert api.util_get_current_model() == "sdlab-tiny"
        result = api.txt2img(prompt=PROMPT, seed=1, steps=4, width=64, height=64)
        assert result.info["sd_model_name"] == "sdlab-tiny" and read_params(result.image).model == "sdlab-tiny"
    finally:
        api.set_options({"sd_model_checkpoint": "tiny-random"})
    assert api.util_get_current_model() == "tiny-random" and app.state.studio.model == "tiny-random"


def test_png_info_reads_the_parameters(api):
    made = api.txt2img(prompt=PROMPT, negative_prompt="blurry", seed=9, width=64, height=64).image
    info = api.png_info(made)
    assert info.info.startswith(PROMPT) and "Seed: 9" in info.info
    assert info.json["parameters"]["Negative prompt"] == "blurry" and info.json["parameters"]["Size-1"] == "64"


@pytest.mark.parametrize("fields, words", [
    ({"enable_hr": True}, ["enable_hr (hires fix)", "does not have that"]),
    ({"restore_faces": True}, ["restore_faces"]),
    ({"sampler_name": "DPM++ SDE"}, ["DPM++ SDE", "unknown"]),
    ({"scheduler": "exponential"}, ["'exponential' is not offered", "automatic"]),
    ({"override_settings": {"sd_model_checkpoint": "sd15"}}, ["serves 'tiny-random'", "/sdapi/v1/options"]),
])
def test_features_this_server_lacks_are_refused_not_ignored(api, fields, words):
    with pytest.raises(RuntimeError) as refused:
        api.txt2img(prompt=PROMPT, width=64, height=64, **fields)
    status, text = refused.value.args
    assert status == 422 and all(w in text for w in words), text


def test_an_unknown_model_and_the_operator_token(tiny_pipe, tmp_path):
    from fastapi.testclient import TestClient

    app = sdlab.app.create_app(tiny_pipe, face_restorer=None, operator_token="tok")
    with TestClient(app) as client:
        assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sdlab-tiny"}).status_code == 401
        unknown = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"},
                              headers={"Authorization": "Bearer tok"})
        assert unknown.status_code == 422 and "not a model this server offers" in unknown.json()["detail"]
        assert client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": "2"}).status_code == 422


def test_extras_repair_faces_and_upscale_as_webuiapi_asks(tiny_pipe, api):
    from skimage import data

    from sdlab.app.face_repair import FacesRestorer
    from sdlab.faces import restore_faces

    photo = Image.fromarray(data.astronaut()).resize((192, 192))
    app = sdlab.app.create_app(tiny_pipe, face_restorer=FacesRestorer())
    server = sdlab.app.Server(app, "127.0.0.1", 0).start()
    try:
        client = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
        assert [u["name"] for u in client.get_upscalers()] == ["None", "Lanczos"]
        repaired = client.extra_single_image(photo, upscaler_1="Lanczos", upscaling_resize=2, gfpgan_visibility=0.8)
        here = restore_faces(photo, "classical", upscale=2, weight=0.8).image
        assert repaired.image.size == (384, 384) and np.abs(pixels(repaired.image) - pixels(here)).max() == 0
        kept = client.extra_single_image(photo, gfpgan_visibility=1.0)  # upscaler "None": the size stays
        assert kept.image.size == photo.size and not np.array_equal(pixels(kept.image), pixels(photo))
        for fields, words in [({"codeformer_visibility": 0.5}, "CodeFormer is not offered"),
                              ({"upscaler_1": "R-ESRGAN 4x+"}, "'R-ESRGAN 4x+' is not offered"),
                              ({"upscaling_resize": 8, "upscaler_1": "Lanczos"}, "from 1 to 4")]:
            with pytest.raises(RuntimeError) as refused:
                client.extra_single_image(photo, **fields)
            assert refused.value.args[0] == 422 and words in refused.value.args[1]
    finally:
        server.close()
    # a server without face repair upscales, and says it cannot repair
    only = api.extra_single_image(photo, upscaler_1="Lanczos", upscaling_resize=2)
    assert np.array_equal(pixels(only.image), pixels(photo.resize((384, 384), Image.LANCZOS)))
    with pytest.raises(RuntimeError) as refused:
        api.extra_single_image(photo, gfpgan_visibility=0.5)
    assert "no face repair" in refused.value.args[1]
