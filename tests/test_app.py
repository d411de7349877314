"""The web app: REST endpoints and their errors, the UI's functions, gradio_client, the server.

Everything runs on the `tiny-random` pipeline over loopback (127.0.0.1) only.
"""
import base64
import io
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import sdlab
import sdlab.app
from sdlab.app import api, ui
from sdlab.app.api import per_image
from sdlab.app.feedback import FinetuneLimits
from sdlab.app.studio import BusyError, Studio
from sdlab.errors import SdlabInputError
from sdlab.metadata import read_params

PROMPT = "a small red circle on a blue background"


# ---- fixtures -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app(tiny_pipe):
    return sdlab.app.create_app(tiny_pipe, face_restorer=None)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def live(app):
    """The same app served by uvicorn on a free loopback port."""
    server = sdlab.app.Server(app, "127.0.0.1", 0).start()
    yield server
    server.close()


def b64(image: Image.Image, format: str, **options) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return base64.b64encode(buffer.getvalue()).decode()


def b64png(image: Image.Image) -> str:
    return b64(image, "PNG")


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def start_image(size=64) -> Image.Image:
    image = Image.new("RGB", (size, size), (30, 60, 200))
    image.paste((220, 30, 30), (16, 16, 48, 48))
    return image


def half_mask(size=64) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (0, 0, size // 2, size))
    return mask


# ---- the happy paths ----------------------------------------------------------------------

def test_health_models_schedulers(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny-random"
    assert health["queue"] == {"in_line": 0, "max": 16}
    models = client.get("/models").json()
    assert models["loaded"] == "tiny-random"
    assert {m["name"] for m in models["models"]} >= {"sdlab-tiny", "tiny-random", "sd15", "sd-turbo"}
    schedulers = client.get("/schedulers").json()
    assert "DPM++ 2M" in schedulers["schedulers"] and schedulers["aliases"]["K_EULER_ANCESTRAL"] == "Euler a"
    assert schedulers["default"] == "PNDM"


def test_docs_and_ui_are_served(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/text2img", "/img2img", "/inpainting", "/models", "/schedulers", "/health"} <= set(paths)
    page = client.get("/")
    assert page.status_code == 200 and "gradio" in page.text.lower()


def test_text2img_takes_the_seed_services_names_and_echoes_what_it_used(client, tiny_pipe):
    body = {"prompt": PROMPT, "seed": 42, "cfg_scale": 5, "steps": 3, "number_of_images": 2,
            "scheduler": "K_EULER", "negative_prompt": "blurry"}
    response = client.post("/text2img", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["model"] == "tiny-random" and out["seconds"] > 0
    assert out["seeds"] == [42, 43]
    first = per_image(out)[0]
    assert first["parameters"] == {
        "prompt": PROMPT, "seed": 42, "num_inference_steps": 3, "guidance_scale": 5.0, "height": 64, "width": 64,
        "scheduler": "Euler", "model": "tiny-random", "negative_prompt": "blurry", "mode": "txt2img",
        "strength": None, "variation_seed": None, "variation_strength": 0.0, "batch_size": 2, "batch_pos": 0}
    png = decode(first["image"])
    assert png.format == "PNG" and png.size == (64, 64)
    assert read_params(png).to_dict() == first["parameters"]  # the PNG keeps its parameters
    assert png.info["parameters"] == first["infotext"]
    # the same call in Python gives the same pixels
    same = sdlab.generate(tiny_pipe, PROMPT, seed=42, guidance_scale=5, num_inference_steps=3,
                          num_images_per_prompt=2, scheduler="Euler", negative_prompt="blurry")
    assert np.array_equal(pixels(png), pixels(same[0].image))


def test_random_seed_is_echoed(client):
    out = client.post("/text2img", json={"prompt": PROMPT, "seed": -1, "steps": 1}).json()
    seed = out["seeds"][0]
    again = client.post("/text2img", json={"prompt": PROMPT, "seed": seed, "steps": 1}).json()
    assert again["images"][0] == out["images"][0]


def test_img2img_and_inpainting(client):
    out = client.post("/img2img", json={"prompt": PROMPT, "image": "data:image/png;base64," + b64png(start_image()),
                                        "strength": 0.5, "seed": 1, "steps": 4}).json()
    params = out["parameters"][0]
    assert params["mode"] == "img2img" and params["strength"] == 0.5 and \
        decode(out["images"][0]).size == (64, 64)

    response = client.post("/inpainting", json={"prompt": PROMPT, "image": b64png(start_image()),
                                                "mask": b64png(half_mask()), "seed": 1, "steps": 2, "strength": 1.0})
    assert response.status_code == 200, response.text
    image = per_image(response.json())[0]
    assert image["parameters"]["mode"] == "inpaint"
    assert read_params(decode(image["image"])).mode == "inpaint"


# ---- bad input: a 4xx that names the field and the fix, and the server keeps serving -----

TOO_WIDE = Image.new("RGB", (2056, 8))
NOT_BASE64 = "this is not base64!"
NOT_AN_IMAGE = base64.b64encode(b"hello, I am a text file").decode()
BIG_TEXT = PngInfo()
BIG_TEXT.add_text("comment", "x" * 2**21, zip=True)  # a few KB that inflate past PIL's limit for text

BAD = [  # (endpoint, body, words the message must contain)
    ("/text2img", None, ["body is empty", "prompt"]),
    ("/text2img", "{not json", ["not valid JSON"]),
    ("/text2img", [PROMPT], ["JSON object"]),
    ("/text2img", {}, ["prompt is required"]),
    ("/text2img", {"prompt": 5}, ["prompt", "text"]),
    ("/text2img", {"prompt": PROMPT, "steps": "many"}, ["steps", "whole number"]),
    ("/text2img", {"prompt": PROMPT, "seed": "lucky"}, ["seed", "whole number"]),
    ("/text2img", {"prompt": PROMPT, "cfg_scale": "high"}, ["cfg_scale", "number"]),
    ("/text2img", {"prompt": PROMPT, "width": 500}, ["width", "multiple of 8", "496 or 504"]),
    ("/text2img", {"prompt": PROMPT, "height": 4096}, ["height", "between"]),
    ("/text2img", {"prompt": PROMPT, "steps": 0}, ["num_inference_steps", "1 to 500"]),
    ("/text2img", {"prompt": PROMPT, "steps": 501}, ["num_inference_steps", "1 to 500"]),
    ("/text2img", {"prompt": PROMPT, "cfg_scale": 99}, ["guidance_scale", "between 0 and 50"]),
    ("/text2img", {"prompt": PROMPT, "number_of_images": 0}, ["num_images_per_prompt", "between 1 and 64"]),
    ("/text2img", {"prompt": PROMPT, "number_of_images": 65}, ["num_images_per_prompt"]),
    ("/text2img", {"prompt": PROMPT, "seed": -5}, ["seed", "2**64"]),
    ("/text2img", {"prompt": PROMPT, "scheduler": "K_TURBO"}, ["scheduler 'K_TURBO' is unknown", "DPM++ 2M"]),
    ("/text2img", {"prompt": PROMPT, "model": "sd15"}, ["'sd15' is not loaded", "sdlab serve --model sd15"]),
    ("/text2img", {"prompt": PROMPT, "model": "dall-e"}, ["'dall-e' is unknown", "GET /models"]),
    ("/text2img", {"prompt": PROMPT, "cfg": 7}, ["cfg is not a field", "guidance_scale (or cfg_scale)"]),
    ("/text2img", {"prompt": PROMPT, "steps": 2, "num_inference_steps": 3}, ["steps is another name"]),
    ("/text2img", {"prompt": PROMPT, "variation_seed": 3, "variation_strength": 1.5},
     ["variation_strength must be a number from 0 to 1, got 1.5"]),
    ("/text2img", '{"prompt": "' + PROMPT + '", "variation_seed": 3, "variation_strength": NaN}',
     ["variation_strength must be a number from 0 to 1, got nan"]),
    ("/text2img", {"prompt": PROMPT, "variation_strength": 0.5}, ["no seed to mix towards", "variation_seed"]),
    ("/text2img", {"prompt": PROMPT, "variation_seed": -1, "variation_strength": 0.5}, ["variation_seed must be in"]),
    ("/img2img", {"prompt": PROMPT}, ["image is required"]),
    ("/img2img", {"prompt": PROMPT, "image": NOT_BASE64}, ["image is not valid base64", "b64encode"]),
    ("/img2img", {"prompt": PROMPT, "image": NOT_AN_IMAGE}, ["image is base64 but not a PNG, JPEG or WebP file"]),
    ("/img2img", {"prompt": PROMPT, "image": b64(start_image(), "GIF")}, ["not a PNG, JPEG or WebP file"]),
    ("/img2img", {"prompt": PROMPT, "image": b64(start_image(), "PNG", pnginfo=BIG_TEXT)},
     ["image is base64 but not a PNG, JPEG or WebP file"]),  # its text would inflate to 2 MB
    ("/img2img", {"prompt": PROMPT, "image": b64png(TOO_WIDE)}, ["image is 2056×8 pixels", "resize"]),
    ("/img2img", {"prompt": PROMPT, "image": ""}, ["image is empty"]),
    ("/img2img", {"prompt": PROMPT, "image": b64png(start_image()), "strength": 0}, ["strength", "(0, 1]"]),
    ("/inpainting", {"prompt": PROMPT, "image": b64png(start_image())}, ["mask_image is required"]),
    ("/inpainting", {"prompt": PROMPT, "image": b64png(start_image()), "mask_image": b64png(half_mask(32))},
     ["mask_image is 32×32 but image is 64×64", "resize the mask"]),
    ("/inpainting", {"prompt": PROMPT, "image": b64png(start_image()), "mask": NOT_AN_IMAGE},
     ["mask_image is base64 but not a PNG, JPEG or WebP file"]),
    ("/inpainting", {"prompt": PROMPT, "image": b64png(start_image()), "mask": b64png(half_mask()), "steps": 2,
                     "strength": 0.01}, ["strength 0.01 of 2 steps leaves no step to run", "strength to 0.5"]),
]


@pytest.mark.parametrize("endpoint, body, words", BAD, ids=[f"{e}-{i}" for i, (e, _, _) in enumerate(BAD)])
def test_bad_input_is_a_422_that_teaches(client, endpoint, body, words):
    if body is None:
        response = client.post(endpoint)
    elif isinstance(body, str):
        response = client.post(endpoint, content=body, headers={"content-type": "application/json"})
    else:
        response = client.post(endpoint, json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for word in words:
        assert word in detail, f"{word!r} not in {detail!r}"
    assert client.get("/health").json()["queue"]["in_line"] == 0


def test_a_json_body_without_its_content_type_is_told_to_send_it(client):
    response = client.post("/text2img", content=f'{{"prompt": "{PROMPT}"}}', headers={"content-type": "text/plain"})
    assert response.status_code == 422 and "header Content-Type: application/json" in response.json()["detail"]


def test_server_keeps_serving_after_bad_input(client):
    for endpoint, body, _ in BAD[:6]:
        client.post(endpoint, json=body if isinstance(body, dict) else None)
    assert client.post("/text2img", json={"prompt": PROMPT, "steps": 1}).status_code == 200


def test_image_over_the_byte_limit(client, monkeypatch):
    monkeypatch.setattr(api, "MAX_IMAGE_BYTES", 100)
    response = client.post("/img2img", json={"prompt": PROMPT, "image": b64png(start_image())})
    assert response.status_code == 422 and "the limit is" in response.json()["detail"]


def test_a_body_announced_too_large_is_refused_before_reading(client):
    response = client.post("/img2img", content=b"{}", headers={"content-type": "application/json",
                                                              "content-length": str(api.MAX_BODY_BYTES + 1)})
    assert response.status_code == 413 and "smaller images" in response.json()["detail"]


def test_the_original_services_paths_and_nulls_are_accepted(client):
    """The FastAPI service this course grew out of documented POST /text2img/ (with a slash), and its
    clients send null for the optional fields."""
    response = client.post("/text2img/", json={"prompt": PROMPT, "negative_prompt": None, "seed": None, "steps": 2,
                                               "number_of_images": None, "cfg_scale": None, "width": None})
    assert response.status_code == 200, response.text
    made = per_image(response.json())
    assert len(made) == 1 and made[0]["parameters"]["negative_prompt"] == ""
    start = b64png(start_image())
    assert client.post("/img2img/", json={"prompt": PROMPT, "image": start, "strength": None,
                                          "steps": 2}).status_code == 200


# ---- the line for the pipeline ------------------------------------------------------------

def _wait_until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _post(server, body: dict, **options) -> httpx.Response:
    return httpx.post(server.url + "text2img", json=body, timeout=120, **options)


def test_full_line_answers_503_and_the_waiting_requests_still_succeed(live, app):
    studio = app.state.studio
    studio.max_queue = 2
    try:
        with ThreadPoolExecutor(2) as pool:
            with studio.batcher.hold():  # no call starts: the requests wait in line
                waiting = [pool.submit(_post, live, {"prompt": PROMPT, "steps": 1, "seed": seed}) for seed in (1, 2)]
                _wait_until(lambda: studio.in_line == 2)
                refused = _post(live, {"prompt": PROMPT, "steps": 1})
                assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
                assert "busy" in refused.json()["detail"]
            assert [w.result().status_code for w in waiting] == [200, 200]
    finally:
        studio.max_queue = 16


def _alike(image: Image.Image, alone: Image.Image) -> bool:
    """The same pixels up to a batch's float rounding (a level or two: see `sdlab.regenerate`)."""
    return np.abs(pixels(image) - pixels(alone)).max() <= 2


def test_requests_that_arrive_together_share_one_call_and_get_their_images_alone(live, app, tiny_pipe, client):
    studio = app.state.studio
    bodies = [{"prompt": PROMPT, "seed": seed, "steps": 2} for seed in range(100, 105)]
    bodies += [{"prompt": "a green square", "negative_prompt": "blurry", "seed": 7, "number_of_images": 3, "steps": 2},
               {"prompt": PROMPT, "seed": 9, "steps": 3}]  # more steps: it cannot share their call
    calls = client.get("/health").json()["batching"]["calls"]
    with ThreadPoolExecutor(len(bodies)) as pool:
        with studio.batcher.hold():  # they arrive while the pipeline is busy
            responses = [pool.submit(_post, live, body) for body in bodies]
            _wait_until(lambda: studio.in_line == len(bodies))
        responses = [r.result() for r in responses]
    assert [r.status_code for r in responses] == [200] * len(bodies)
    answers = [r.json() for r in responses]
    # the seven images of two steps in one call, then the one of three steps
    assert client.get("/health").json()["batching"]["calls"] == calls + 2
    assert [a["call_sizes"] for a in answers] == [[8]] * 5 + [[8, 8, 8], [1]]
    for body, answer in zip(bodies, answers, strict=True):
        alone = sdlab.generate(tiny_pipe, body["prompt"], seed=body["seed"], num_inference_steps=body["steps"],
                               negative_prompt=body.get("negative_prompt"),
                               num_images_per_prompt=body.get("number_of_images", 1))
        assert answer["parameters"] == [item.params.to_dict() for item in alone]  # Batch size 3 for the three
        for image, item in zip(answer["images"], alone, strict=True):
            assert _alike(decode(image), item.image)


def test_a_small_request_behind_a_long_one_is_answered_first(live, app):
    studio = app.state.studio
    before = studio.batcher.max_batch
    studio.batcher.max_batch = 2  # the long request is made in 8 pieces of 2
    finished = {}

    def post(name, body):
        response = _post(live, body)
        finished[name] = time.monotonic()
        return response

    try:
        with ThreadPoolExecutor(2) as pool:
            with studio.batcher.hold():
                long = pool.submit(post, "long", {"prompt": PROMPT, "number_of_images": 16, "steps": 2})
                _wait_until(lambda: studio.in_line == 1)
                small = pool.submit(post, "small", {"prompt": PROMPT, "steps": 2, "seed": 3})
                _wait_until(lambda: studio.in_line == 2)
            assert small.result().status_code == 200 and long.result().status_code == 200
    finally:
        studio.batcher.max_batch = before
    assert finished["small"] < finished["long"]
    # the small one shared the first call with the long one's first image, not its ninth
    assert small.result().json()["call_sizes"] == [2] and len(long.result().json()["images"]) == 16


def test_the_ui_and_rest_wait_in_the_same_line_and_share_a_call(live, app, client, tiny_pipe):
    from gradio_client import Client

    studio = app.state.studio
    gradio = Client(live.url, verbose=False)
    calls = client.get("/health").json()["batching"]["calls"]
    with ThreadPoolExecutor(2) as pool:
        with studio.batcher.hold():
            rest = pool.submit(_post, live, {"prompt": PROMPT, "seed": 21, "steps": 2})
            ui_click = pool.submit(gradio.predict, PROMPT, seed=22, num_inference_steps=2, api_name="/text2img")
            _wait_until(lambda: studio.in_line == 2)
        assert rest.result().json()["call_sizes"] == [2]
        gallery, summary, info = ui_click.result()
    gradio.close()
    assert client.get("/health").json()["batching"]["calls"] == calls + 1  # one call made both
    alone = sdlab.generate(tiny_pipe, PROMPT, seed=22, num_inference_steps=2)[0]
    downloaded = Image.open(gallery[0]["image"])
    assert read_params(downloaded) == alone.params and _alike(downloaded, alone.image)


def test_requests_are_planned_without_the_tokenizer_the_running_call_uses(tiny_pipe, monkeypatch):
    """A tokenizer's settings change on every call: planning a request with the pipeline's own while a
    call tokenizes its batch once cut that batch's padding short (a 500 for every request in it)."""
    import threading

    studio, used = Studio(tiny_pipe), []
    tokenize = type(tiny_pipe.tokenizer).__call__

    def spy(tokenizer, *args, **kwargs):
        if tokenizer is studio.pipe.tokenizer:
            used.append(threading.current_thread().name)
        return tokenize(tokenizer, *args, **kwargs)

    monkeypatch.setattr(type(tiny_pipe.tokenizer), "__call__", spy)
    long_prompt = " ".join([PROMPT] * 12)  # planning counts its tokens, to warn
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda seed: studio.generate(long_prompt if seed % 2 else PROMPT, seed=seed,
                                                             num_inference_steps=2), range(4)))
    assert [len(warnings) for _, warnings in answers] == [0, 1, 0, 1]
    assert used and set(used) == {"sdlab-batcher"}  # only the worker, in its calls


def test_studio_refuses_beyond_its_line(tiny_pipe):
    studio = Studio(tiny_pipe, max_queue=1)
    with ThreadPoolExecutor(1) as pool, studio.batcher.hold():
        waiting = pool.submit(studio.generate, PROMPT, num_inference_steps=1)
        _wait_until(lambda: studio.in_line == 1)
        with pytest.raises(BusyError, match="at most 1"):
            studio.generate(PROMPT, num_inference_steps=1)
    assert len(waiting.result()[0]) == 1 and studio.in_line == 0


# ---- the UI's functions, and the same image through every door -----------------------------

def test_ui_function_rest_and_gradio_client_give_the_identical_image(client, live, app):
    studio = app.state.studio
    shown = ui.txt2img(studio, PROMPT, **ui.settings(seed=5, num_inference_steps=3, guidance_scale=6.0))
    assert shown.last_seed == 5 and "Seed: 5" in shown.gallery[0][1] and "Time:" in shown.gallery[0][1]
    assert shown.images[0].info["parameters"].startswith(PROMPT)  # kept when Gradio writes the PNG
    rest = client.post("/text2img", json={"prompt": PROMPT, "seed": 5, "steps": 3, "cfg_scale": 6}).json()
    assert np.array_equal(pixels(shown.images[0]), pixels(decode(rest["images"][0])))

    from gradio_client import Client

    gradio = Client(live.url, verbose=False)
    gallery, summary, info = gradio.predict(PROMPT, seed=5, num_inference_steps=3, guidance_scale=6,
                                            api_name="/text2img")
    downloaded = Image.open(gallery[0]["image"])
    assert np.array_equal(pixels(downloaded), pixels(shown.images[0]))
    assert read_params(downloaded).seed == 5 and "seed 5" in summary and "Steps: 3" in info
    with pytest.raises(Exception, match="multiple of 8"):  # the teaching message reaches the client
        gradio.predict(PROMPT, width=100, api_name="/text2img")
    gradio.close()


def test_ui_img2img_inpaint_and_variations(app):
    studio = app.state.studio
    common = ui.settings(seed=3, num_inference_steps=2)
    assert ui.img2img(studio, start_image(), 0.5, PROMPT, **common).made[0]["params"]["mode"] == "img2img"

    paint = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    paint.paste((255, 255, 255, 255), (0, 0, 20, 20))
    mask = ui.mask_from_layers([paint])
    assert mask.getbbox() == (0, 0, 20, 20)
    editor = {"background": start_image(), "layers": [paint], "composite": None}
    drawn = ui.inpaint(studio, editor, None, 1.0, PROMPT, **common)
    uploaded = ui.inpaint(studio, editor, mask, 1.0, PROMPT, **common)
    assert np.array_equal(pixels(drawn.images[0]), pixels(uploaded.images[0]))

    with pytest.raises(SdlabInputError, match="paint over"):
        ui.inpaint(studio, {"background": start_image(), "layers": []}, None, 1.0, PROMPT, **common)
    with pytest.raises(SdlabInputError, match="upload a start image"):
        ui.img2img(studio, None, 0.5, PROMPT, **common)

    first = ui.txt2img(studio, PROMPT, **ui.settings(seed=9, num_inference_steps=2, num_images=2))
    varied = ui.variations(studio, first.made, 1, 0.2, 2)
    params = [made["params"] for made in varied.made]
    assert [p["seed"] for p in params] == [10, 10] and params[0]["variation_strength"] == 0.2
    assert params[0]["variation_seed"] + 1 == params[1]["variation_seed"]
    assert not np.array_equal(pixels(varied.images[0]), pixels(varied.images[1]))
    with pytest.raises(SdlabInputError, match="generate an image first"):
        ui.variations(studio, [], 0, 0.2, 2)


def test_settings_map_the_controls_to_generate_arguments():
    assert ui.settings(seed=-1, num_inference_steps=20.0, width=64.0) == {
        "negative_prompt": "", "scheduler": None, "num_inference_steps": 20, "guidance_scale": None, "seed": None,
        "width": 64, "height": None, "num_images_per_prompt": 1}


# ---- running it ---------------------------------------------------------------------------

def test_launch_serves_on_loopback_and_close_frees_the_port(tiny_pipe):
    server = sdlab.app.launch(tiny_pipe, inline=False)
    assert server.url.startswith("http://127.0.0.1:") and server.running
    assert httpx.get(server.url + "health").json()["status"] == "ok"
    assert "running" in repr(server)
    # a TCP socket asyncio recognises, so it sets TCP_NODELAY (else each response waits ~40 ms)
    assert {sock.proto for sock in server._uvicorn.servers[0].sockets} == {socket.IPPROTO_TCP}
    server.close()
    assert not server.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "health", timeout=2)


def test_a_taken_port_is_a_teaching_error(live, app):
    with pytest.raises(SdlabInputError, match="port 0 for any free one"):
        sdlab.app.Server(app, "127.0.0.1", live.port).start()


def test_share_prints_what_it_exposes(app, monkeypatch, capsys):
    from gradio import networking

    monkeypatch.setattr(networking, "setup_tunnel", lambda host, port, *args: f"https://abc.gradio.live#{port}")
    with sdlab.app.Server(app, "127.0.0.1", 0).start() as server:
        assert server.open_share_link() == f"https://abc.gradio.live#{server.port}"
        assert server.open_share_link() == server.share_url  # one link per server
    warning = capsys.readouterr().err
    assert "PUBLIC link" in warning and "/text2img" in warning and "no password" in warning

    monkeypatch.setattr(networking, "setup_tunnel", lambda *args: (_ for _ in ()).throw(OSError("offline")))
    with sdlab.app.Server(app, "127.0.0.1", 0).start() as server:
        assert server.open_share_link() is None
    assert "stays local" in capsys.readouterr().err


def test_serve_runs_until_stopped_and_keeps_images_in_its_folder(tiny_pipe, monkeypatch, capsys, tmp_path):
    started = {}

    def stop_at_once(server):
        started["health"] = httpx.get(server.url + "health").json()
        started["made"] = httpx.post(server.url + "text2img", json={"prompt": PROMPT, "steps": 1}).json()
        server.close()

    monkeypatch.chdir(tmp_path)  # `sdlab serve` keeps its feedback store in ./feedback
    monkeypatch.setattr(sdlab.app.Server, "wait", stop_at_once)
    sdlab.app.serve(tiny_pipe, port=0)
    assert started["health"]["model"] == "tiny-random"
    assert started["made"]["image_ids"][0] == 1
    assert (tmp_path / "feedback" / "feedback.sqlite3").is_file()
    err = capsys.readouterr().err
    assert "/docs" in err and str(tmp_path / "feedback") in err


def test_the_cli_reaches_serve(monkeypatch):
    from sdlab import cli

    called = {}
    monkeypatch.setattr(sdlab.app, "serve", lambda model, **kw: called.update(model=model, **kw))
    assert cli.main(["serve", "--model", "tiny-random", "--port", "0", "--max-work", "800", "--max-finetune-steps",
                     "300", "--keep-versions", "3", "--operator-token", "t", "--max-batch", "4",
                     "--batch-window-ms", "20"]) == 0
    assert called == {"model": "tiny-random", "host": "127.0.0.1", "port": 0, "share": False, "max_queue": 16,
                      "max_work": 800, "max_side": None, "finetune_limits": FinetuneLimits(300, 30, 3),
                      "token": "t", "max_batch": 4, "batch_window": 0.02}


# ---- face repair: a hook for sdlab.faces (any restore(image, upscale=, weight=) -> image) ---

def fake_restore(image, upscale=2, weight=0.5):
    """Stands in for sdlab.faces.restore_faces: upscales, and tints by weight."""
    bigger = image.convert("RGB").resize((image.width * upscale, image.height * upscale), Image.NEAREST)
    return Image.blend(bigger, Image.new("RGB", bigger.size, "white"), weight)


def test_face_repair_keeps_and_extends_the_parameters():
    from sdlab.app import face_repair

    image = start_image()
    image.info["parameters"] = "a face\nSteps: 2, Sampler: PNDM, CFG scale: 7.5, Seed: 1, Size: 64x64, Model: m"
    repaired = face_repair.repair(fake_restore, image, upscale=2, weight=0.25)
    assert repaired.size == (128, 128)
    assert repaired.info["parameters"].endswith("Face restoration weight: 0.25, Upscale: 2")
    assert read_params(repaired).seed == 1
    [(again, text)] = face_repair.repair_gallery(fake_restore, [(image, "caption")], 2, 0.25)
    assert np.array_equal(pixels(again), pixels(repaired)) and "Faces repaired" in text
    with pytest.raises(SdlabInputError, match="choose an image"):
        face_repair.repair(fake_restore, None)


def test_restore_faces_endpoint_when_a_restorer_is_given(tiny_pipe, tmp_path):
    from gradio_client import Client, handle_file

    app = sdlab.app.create_app(tiny_pipe, face_restorer=fake_restore)
    start_image().save(tmp_path / "in.png")
    with sdlab.app.Server(app).start() as server:
        client = Client(server.url, verbose=False)
        assert "/restore_faces" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        out = Image.open(client.predict(handle_file(str(tmp_path / "in.png")), upscale=3, weight=0.0,
                                        api_name="/restore_faces"))
        assert out.size == (192, 192)
        assert np.array_equal(pixels(out), pixels(fake_restore(start_image(), 3, 0.0)))
        client.close()


def test_no_face_repair_endpoint_without_a_restorer(live):
    from gradio_client import Client

    client = Client(live.url, verbose=False)
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/text2img", "/img2img", "/inpainting", "/variations"}
    client.close()


def test_the_default_face_restorer_is_sdlab_faces_when_installed():
    import importlib.util

    from sdlab.app.face_repair import find_restorer

    restorer = find_restorer()
    if importlib.util.find_spec("sdlab.faces") is None:
        assert restorer is None
        return
    face = start_image()  # no face in it: sdlab.faces warns and only resizes it
    with pytest.warns(UserWarning, match="no face"):
        repaired = restorer(face, upscale=2, weight=0.5)
    assert repaired.size == (128, 128) and restorer.name


def test_a_too_long_prompt_comes_back_with_a_warning(client):
    long_prompt = " ".join(["a small red circle on a blue background"] * 12)
    out = client.post("/text2img", json={"prompt": long_prompt, "steps": 1}).json()
    assert len(out["images"]) == 1 and "CLIP reads only 77" in out["warnings"][0]


def test_each_request_gets_its_own_warnings_each_time(client):
    import threading
    import warnings

    from sdlab.errors import warnings_of_this_thread
    from sdlab.faces import NoFaceFoundWarning

    stop, kept_beside = threading.Event(), []

    def another_request_warns():  # as a face repair beside it does
        with warnings_of_this_thread() as kept:
            while not stop.is_set():
                warnings.warn("no face found in the picture", NoFaceFoundWarning, stacklevel=1)
                time.sleep(0.001)
        kept_beside.extend(kept)

    beside = threading.Thread(target=another_request_warns)
    beside.start()
    long_prompt = " ".join(["a small red circle on a blue background"] * 12)
    try:
        short = [client.post("/text2img", json={"prompt": PROMPT, "steps": 1}).json() for _ in range(3)]
        long = [client.post("/text2img", json={"prompt": long_prompt, "steps": 1}).json() for _ in range(2)]
    finally:
        stop.set()
        beside.join()
    assert [out["warnings"] for out in short] == [[], [], []] and kept_beside
    assert set(kept_beside) == {"no face found in the picture"}  # none of the requests' warnings
    assert [len(out["warnings"]) for out in long] == [1, 1]  # the same warning again, not only the first time
    with pytest.warns(NoFaceFoundWarning):  # outside a request, warnings are shown as usual
        warnings.warn("no face found in the picture", NoFaceFoundWarning, stacklevel=1)


def test_a_chunked_body_is_refused_once_it_passes_the_limit(client):
    def chunks():  # no content-length: the size shows only while the body is read
        for _ in range(api.MAX_BODY_BYTES // 2**20 + 8):
            yield b" " * 2**20

    response = client.post("/img2img", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "the request body is more than that; the limit for /img2img is 48 MB" in response.text
    assert client.post("/text2img", json={"prompt": PROMPT, "steps": 1}).status_code == 200


# ---- the original services' own clients -------------------------------------------------------

def test_the_original_services_client_code_works_unchanged(live):
    # seed 001's README example, copied as it is: only the address and the sizes (the tiny model's) differ
    import requests

    api_url = live.url + "text2img/"

    prompt = "reinassance painting of a Penguin"
    negative_prompt = "out of focus, comic"

    request_body = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "width": 64,
        "height": 64,
        "cfg_scale": 9,
        "steps": 3,
        "number_of_images": 2,
        "seed": 5
    }

    response = requests.post(api_url, json=request_body)

    def decode_image(img):
        img = io.BytesIO(base64.b64decode(img))
        img = Image.open(img)
        return img

    images_base64 = response.json()['images']
    images = [decode_image(img) for img in images_base64]

    assert [img.size for img in images] == [(64, 64), (64, 64)]
    assert [read_params(img).seed for img in images] == [5, 6] and response.json()["seeds"] == [5, 6]
    start, mask = images[0], Image.new("L", (64, 64), 255)
    for path, extra in (("img2img/", {"image": b64png(start)}),
                        ("inpainting/", {"image": b64png(start), "mask": b64png(mask)})):
        body = request_body | extra | {"negative_prompt": None, "number_of_images": 1}
        images = [decode_image(img) for img in requests.post(live.url + path, json=body).json()['images']]
        assert len(images) == 1 and read_params(images[0]).mode in ("img2img", "inpaint")


def test_a_get_returns_the_png_itself(client):
    got = client.get("/text2img", params={"prompt": PROMPT, "seed": "42", "steps": "2", "cfg_scale": "6",
                                          "model": "tiny-random"})
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert got.headers["x-seed"] == "42" and "max-age" in got.headers["cache-control"]  # seed and model: fixed
    assert 'filename="42.png"' in got.headers["content-disposition"]
    png = Image.open(io.BytesIO(got.content))
    assert png.size == (64, 64) and read_params(png).prompt == PROMPT and read_params(png).guidance_scale == 6
    posted = client.post("/text2img", json={"prompt": PROMPT, "seed": 42, "steps": 2, "cfg_scale": 6}).json()
    assert got.content == base64.b64decode(posted["images"][0])  # the same image as the POST's
    for path in ("/text2img/", "/generate", "/api/generate/"):  # the addresses image front ends call
        again = client.get(path, params={"prompt": PROMPT, "seed": "42", "steps": "2", "guidance_scale": "6"})
        assert again.status_code == 200 and again.content == got.content, path
        assert again.headers["cache-control"] == "no-store"  # no model named: it may be switched
    random = client.get("/text2img", params={"prompt": PROMPT, "steps": "1", "seed": ""})  # a cleared field
    assert random.status_code == 200 and random.headers["cache-control"] == "no-store"
    twice = client.get("/text2img?prompt=a+circle&steps=2&steps=3")
    assert twice.status_code == 422 and "steps given more than once" in twice.json()["detail"]
    bad_path = client.get("/api/generate", params={"prompt": PROMPT, "steps": "x"})
    assert bad_path.status_code == 422 and bad_path.json()["errors"][0]["field"] == "steps"
    bad = client.get("/text2img", params={"prompt": PROMPT, "steps": "many"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "steps"
    several = client.get("/text2img", params={"prompt": PROMPT, "number_of_images": "2"})
    assert several.status_code == 422 and "POST /text2img for several" in several.json()["detail"]
    unknown = client.get("/text2img", params={"prompt": PROMPT, "colour": "red"})
    assert unknown.status_code == 422 and "colour" in unknown.text
    parameters = {p["name"] for p in client.get("/openapi.json").json()["paths"]["/text2img"]["get"]["parameters"]}
    assert {"prompt", "seed", "num_inference_steps", "steps", "cfg_scale"} <= parameters
