"""The app's feedback loop over real HTTP: every image gets an image_id, ratings go in (and bad
ones get a 4xx that says what to change), the gallery searches and serves the stored PNGs, a
fine-tune runs as a job with a status; the UI's functions; and the same app without a store.

Everything runs on the `tiny-random` pipeline; fine-tunes take two steps.
"""
import base64
import io
import json
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

import sdlab.app
from sdlab import finetune as finetune_module
from sdlab.app import feedback, ui
from sdlab.app.api import per_image
from sdlab.errors import SdlabInputError
from sdlab.feedback import MAX_COMMENT_CHARS
from sdlab.metadata import read_params

RED_CIRCLE = "a small red circle on a blue background"
GREEN_SQUARE = "a large green square on a white background"
FAST = {"steps": 2, "seed": 7}


# ---- fixtures -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app(tiny_pipe, tmp_path_factory):
    return sdlab.app.create_app(tiny_pipe, face_restorer=None, feedback_dir=tmp_path_factory.mktemp("feedback"))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def fresh(tiny_pipe, tmp_path):
    """An app with an empty store of its own (for counts that other tests must not change)."""
    app = sdlab.app.create_app(tiny_pipe, face_restorer=None, feedback_dir=tmp_path / "feedback")
    with TestClient(app) as test_client:
        yield test_client


def make(client, prompt=RED_CIRCLE, n=1, **fields) -> list[dict]:
    response = client.post("/text2img", json={"prompt": prompt, "num_images_per_prompt": n, **FAST, **fields})
    assert response.status_code == 200, response.text
    return per_image(response.json())


def rate(client, image_id, rating, comment="", **fields):
    return client.post("/feedback", json={"image_id": image_id, "rating": rating, "comment": comment, **fields})


def b64png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def wait_for(client, job_id, timeout=120) -> dict:
    deadline = time.monotonic() + timeout
    while (status := client.get(f"/finetune/{job_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    return status


# ---- every image has an image_id -----------------------------------------------------------

def test_every_image_comes_back_with_its_image_id(client, app):
    images = make(client, n=2)
    ids = [image["image_id"] for image in images]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 2
    store = app.state.studio.store
    for image in images:
        kept = store.get(image["image_id"])
        assert kept.params.to_dict() == image["parameters"]
        assert kept.path.read_bytes() == base64.b64decode(image["image"])  # the very PNG the client got

    start = Image.new("RGB", (64, 64), (30, 60, 200))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    redrawn = client.post("/img2img", json={"prompt": RED_CIRCLE, "image": b64png(start), **FAST}).json()
    inpainted = client.post("/inpainting", json={"prompt": RED_CIRCLE, "image": b64png(start),
                                                 "mask_image": b64png(mask), **FAST}).json()
    for out, mode in ((redrawn, "img2img"), (inpainted, "inpaint")):
        assert store.get(out["image_ids"][0]).params.mode == mode


# ---- feedback -----------------------------------------------------------------------------

def test_feedback_is_kept_and_the_gallery_shows_it_with_the_mean_rating(client):
    [image] = make(client, "a purple triangle on a yellow background")
    first = rate(client, image["image_id"], 5, "just the purple I wanted", user="ana")
    assert first.status_code == 200, first.text
    assert first.json() | {"feedback_id": 0} == {"feedback_id": 0, "image_id": image["image_id"], "rating": 5,
                                                  "mean_rating": 5.0, "ratings": 1}
    second = rate(client, image["image_id"], "down").json()  # thumbs count as 5 and 1
    assert second["rating"] == 1 and second["mean_rating"] == 3.0 and second["ratings"] == 2

    [listed] = client.get("/gallery", params={"q": "triangle"}).json()["images"]
    assert listed["image_id"] == image["image_id"] and listed["parameters"] == image["parameters"]
    assert listed["mean_rating"] == 3.0 and listed["ratings"] == 2
    assert [(f["rating"], f["comment"], f["user"]) for f in listed["feedback"]] == [
        (5, "just the purple I wanted", "ana"), (1, "", "")]


BAD_FEEDBACK = [  # (body, status, words the message must contain)
    ({"image_id": 10**6, "rating": 5}, 404, ["no image with image_id 1000000", "/text2img", "GET /gallery"]),
    ({"image_id": "IMAGE", "rating": 5}, 422, ["image_id", "whole number image_id that /text2img returned"]),
    ({"image_id": True, "rating": 5}, 422, ["image_id", "whole number"]),
    ({"rating": 5}, 422, ["image_id is required", '"image_id": 1, "rating": 5']),
    ({"image_id": "ID", "rating": 0}, 422, ["rating must be a whole number from 1 (bad) to 5 (great)", "got 0"]),
    ({"image_id": "ID", "rating": 6}, 422, ["rating must be a whole number from 1 (bad) to 5 (great)", "got 6"]),
    ({"image_id": "ID", "rating": 4.5}, 422, ["rating", "got 4.5", "whole number from 1 (bad) to 5 (great)"]),
    ({"image_id": "ID", "rating": True}, 422, ["rating", "got True", "whole number from 1"]),
    ({"image_id": "ID", "rating": None}, 422, ["rating", "got None", "whole number from 1"]),
    ({"image_id": "ID", "rating": "great"}, 422, ["rating must be a whole number", "'up'/'down'", "got 'great'"]),
    ({"image_id": "ID"}, 422, ["rating is required", '"rating": 5']),
    ({"image_id": 10**20, "rating": 5}, 404, [f"no image with image_id {10**20} on this server"]),
    ({"image_id": "ID", "rating": 4, "comment": "x" * (MAX_COMMENT_CHARS + 1)}, 422,
     [f"comment is {MAX_COMMENT_CHARS + 1} characters", f"the limit is {MAX_COMMENT_CHARS}", "fewer words"]),
    ({"image_id": "ID", "rating": 4, "comment": 42}, 422, ["comment", "text in quotes"]),
    ({"image_id": "ID", "rating": 4, "user": "u" * 101}, 422, ["user is 101 characters; the limit is 100"]),
    ({"image_id": "ID", "rating": 4, "stars": 4}, 422, ["stars is not a field", "image_id, rating, comment, user"]),
    ("{not json", 422, ["not valid JSON", '"image_id": 1, "rating": 5']),
    ([1, 5], 422, ["must be a JSON object, got list", '"image_id": 1']),
    (None, 422, ["body is empty", '"image_id": 1, "rating": 5']),
]


@pytest.mark.parametrize("body, status, words", BAD_FEEDBACK, ids=[str(i) for i in range(len(BAD_FEEDBACK))])
def test_bad_feedback_is_a_4xx_that_says_what_to_change(client, body, status, words):
    [image] = make(client)
    if isinstance(body, dict) and body.get("image_id") == "ID":
        body = body | {"image_id": image["image_id"]}
    if body is None:
        response = client.post("/feedback")
    elif isinstance(body, str):
        response = client.post("/feedback", content=body, headers={"content-type": "application/json"})
    else:
        response = client.post("/feedback", json=body)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, f"{word!r} not in {detail!r}"
    assert client.get("/gallery", params={"q": "red circle", "limit": 1}).json()["images"][0]["ratings"] == 0


# ---- the gallery --------------------------------------------------------------------------

def test_gallery_search_and_min_rating(fresh):
    circles = [image["image_id"] for image in make(fresh, RED_CIRCLE, n=3)]
    [square] = [image["image_id"] for image in make(fresh, GREEN_SQUARE)]
    for image_id, rating in zip(circles, (5, 4, 2), strict=True):
        rate(fresh, image_id, rating)
    rate(fresh, square, 3)

    def ids(**params):
        response = fresh.get("/gallery", params=params)
        assert response.status_code == 200, response.text
        return [image["image_id"] for image in response.json()["images"]]

    assert ids() == [square, *reversed(circles)]  # newest first
    assert ids(q="circles") == list(reversed(circles))  # words, stemmed: "circles" finds "circle"
    assert ids(q="green squ") == [square]  # every word, the last one a prefix
    assert ids(q="purple") == []
    assert ids(min_rating=4) == [circles[1], circles[0]]
    assert ids(q="circle", min_rating=3, order="rating") == [circles[0], circles[1]]
    assert ids(order="oldest", limit=2) == circles[:2] and ids(order="oldest", limit=2, offset=2) == [circles[2],
                                                                                                      square]
    assert ids(model="another-model") == []

    for params, words in [({"min_rating": 9}, ["min_rating must be between 1 and 5"]),
                          ({"q": "!!"}, ["no words to look for"]),
                          ({"order": "best"}, ["order must be one of newest, oldest, rating"]),
                          ({"since": "yesterday"}, ["'yesterday' is not a date", "2026-11-25"]),
                          ({"since": "0001-01-01T00:00+01:00"}, ["out of the range of dates"]),
                          ({"offset": 10**20}, ["offset must be a whole number from 0 to"]),
                          ({"limit": 1000}, ["limit", "less than or equal to 200"])]:
        response = fresh.get("/gallery", params=params)
        assert response.status_code == 422 and all(w in response.json()["detail"] for w in words), response.text


def test_the_gallery_url_serves_the_png_with_its_parameters(client):
    [made] = make(client, "a small yellow cross on a black background")
    [listed] = client.get("/gallery", params={"q": "yellow cross"}).json()["images"]
    assert listed["url"] == f"/gallery/{made['image_id']}.png"
    response = client.get(listed["url"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    png = Image.open(io.BytesIO(response.content))
    assert png.format == "PNG" and png.size == (64, 64)
    assert read_params(png).to_dict() == made["parameters"]
    for image_id in (999999, 10**20):  # the second past SQLite's integers
        missing = client.get(f"/gallery/{image_id}.png")
        assert missing.status_code == 404 and f"no image with image_id {image_id}" in missing.json()["detail"]


def test_a_seed_past_sqlites_integers_is_kept_with_its_image(client):
    [made] = make(client, seed=2**64 - 1)
    stored = client.get(f"/gallery/{made['image_id']}.png")
    assert stored.status_code == 200 and read_params(Image.open(io.BytesIO(stored.content))).seed == 2**64 - 1


# ---- fine-tuning --------------------------------------------------------------------------

def test_a_finetune_job_runs_to_done_and_reports_its_steps(fresh, tmp_path):
    nothing = fresh.post("/finetune", json={"steps": 2})
    assert nothing.status_code == 409 and "nothing to fine-tune on" in nothing.json()["detail"]
    assert "POST /feedback" in nothing.json()["detail"]

    liked = [image["image_id"] for image in make(fresh, RED_CIRCLE, n=2)]
    for image_id in liked:
        rate(fresh, image_id, 5)
    rate(fresh, make(fresh, GREEN_SQUARE)[0]["image_id"], 1)

    with finetune_module.FINETUNE_TURN:  # another fine-tune holds the turn: this one waits, queued
        started = fresh.post("/finetune", json={"steps": 2})
        assert started.status_code == 202, started.text
        job = started.json()
        assert job["total_steps"] == 2 and job["version"] is None
        time.sleep(0.2)
        assert fresh.get(f"/finetune/{job['job_id']}").json()["state"] == "queued"
        second = fresh.post("/finetune", json={"steps": 2})
        assert second.status_code == 409 and job["job_id"] in second.json()["detail"]

    done = wait_for(fresh, job["job_id"])
    assert done["state"] == "done", done
    assert done["step"] == 2 and done["loss"] > 0 and done["model"] == "tiny-random-feedback-v1"
    folder = Path(done["version"])
    assert folder.parent.parent == tmp_path / "feedback" / "models"  # beside the store by default
    info = json.loads((folder / "sdlab_version.json").read_text())
    assert sorted(info["image_ids"]) == liked and info["base_model"] == "tiny-random"
    assert finetune_module.load_version(folder).sdlab_version.label == "tiny-random-feedback-v1"

    missing = fresh.get("/finetune/no-such-job")
    assert missing.status_code == 404 and "no fine-tune job 'no-such-job'" in missing.json()["detail"]
    for body, words in [({"steps": 0}, ["steps must be 1–100000"]), ({"method": "dreambooth"}, ["'lora' or 'full'"]),
                        ({"min_rating": 6}, ["min_rating must be between 1 and 5"]),
                        ({"learning_rate": -1}, ["learning_rate", "greater than 0"]),
                        ({"batch": 2}, ["batch is not a field", "steps, method, min_rating, learning_rate"])]:
        response = fresh.post("/finetune", json=body)
        assert response.status_code == 422 and all(w in response.json()["detail"] for w in words), response.text


def test_a_finetune_that_cannot_save_is_refused_or_fails_saying_why(tiny_pipe, tmp_path, monkeypatch):
    from sdlab.finetune import training

    (tmp_path / "not-a-folder").write_text("")
    app = sdlab.app.create_app(tiny_pipe, face_restorer=None, feedback_dir=tmp_path / "feedback",
                               models_dir=tmp_path / "not-a-folder")
    with TestClient(app) as client:
        rate(client, make(client)[0]["image_id"], 5)
        refused = client.post("/finetune", json={"steps": 1})  # before any training
        assert refused.status_code == 422 and "not-a-folder is a file, not a folder" in refused.json()["detail"]

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(training, "_save", disk_full)  # as a disk that fills up while the version is written
    app = sdlab.app.create_app(tiny_pipe, face_restorer=None, feedback_dir=tmp_path / "feedback",
                               models_dir=tmp_path / "models")
    with TestClient(app) as client:
        status = wait_for(client, client.post("/finetune", json={"steps": 1}).json()["job_id"])
    assert status["state"] == "failed" and status["version"] is None
    assert "No space left on device" in status["message"] and not list((tmp_path / "models").glob("*/v*"))


# ---- the UI's functions -------------------------------------------------------------------

def test_ui_rates_the_selected_image_and_searches_the_gallery(app):
    studio = app.state.studio
    shown = ui.txt2img(studio, "a tiny orange star on a grey background", **ui.settings(
        seed=3, num_inference_steps=2, num_images=2))
    ids = [made["image_id"] for made in shown.made]
    assert all(isinstance(i, int) for i in ids)
    line = feedback.rate_image(studio, shown.made, 1, 4, "nice orange")
    assert line == f"Image #{ids[1]} rated 4; its mean rating is now 4.0 from 1 rating(s)."
    assert [(f.rating, f.comment) for f in studio.store.feedback(ids[1])] == [(4, "nice orange")]

    found = feedback.search_gallery(studio, "orange star", 0)
    prompt = shown.made[0]["params"]["prompt"]
    assert [caption for _, caption in found] == [f"#{ids[1]} · 4.0/5 from 1 rating(s) · {prompt}",
                                                 f"#{ids[0]} · unrated · {prompt}"]
    assert found[0][0].tobytes() == shown.images[1].tobytes()
    assert [caption.split()[0] for _, caption in feedback.search_gallery(studio, "orange star", 4)] == [f"#{ids[1]}"]

    varied = ui.variations(studio, shown.made, 0, 0.2, 1)  # variations are kept too
    assert varied.made[0]["image_id"] > ids[1]
    with pytest.raises(SdlabInputError, match="pick a rating"):
        feedback.rate_image(studio, shown.made, 0, None, "")
    with pytest.raises(SdlabInputError, match="generate an image first"):
        feedback.rate_image(studio, [], 0, 5, "")
    with pytest.raises(SdlabInputError, match="the limit is"):
        feedback.rate_image(studio, shown.made, 0, 5, "x" * (MAX_COMMENT_CHARS + 1))


def test_the_gradio_api_searches_the_gallery(app):
    from gradio_client import Client

    ui.txt2img(app.state.studio, "a big white ring on a red background", **ui.settings(seed=1, num_inference_steps=2))
    with sdlab.app.Server(app).start() as server:
        client = Client(server.url, verbose=False)
        assert "/gallery" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        found = client.predict("white ring", 0, api_name="/gallery")
        client.close()
    assert len(found) >= 1 and found[0]["caption"].endswith("a big white ring on a red background")


# ---- without a store ----------------------------------------------------------------------

def test_without_a_store_the_app_works_and_says_how_to_get_one(tiny_pipe):
    app = sdlab.app.create_app(tiny_pipe, face_restorer=None, feedback_dir=None)
    with TestClient(app) as client:
        [image] = make(client)
        assert image["image_id"] is None and read_params(Image.open(io.BytesIO(base64.b64decode(image["image"]))))
        for method, path in [("post", "/feedback"), ("get", "/gallery"), ("get", "/gallery/1.png"),
                             ("post", "/finetune"), ("get", "/finetune/abc")]:
            response = getattr(client, method)(path)
            assert response.status_code == 404 and "no feedback store" in response.json()["detail"], path
            assert "sdlab serve" in response.json()["detail"]
        assert "/feedback" not in client.get("/openapi.json").json()["paths"]
    studio = app.state.studio
    shown = ui.txt2img(studio, RED_CIRCLE, **ui.settings(seed=1, num_inference_steps=1))
    assert shown.made[0]["image_id"] is None
    with pytest.raises(SdlabInputError, match="no feedback store"):
        feedback.rate_image(studio, shown.made, 0, 5, "")


# ---- the command line ---------------------------------------------------------------------

def test_cli_finetune_trains_on_the_store_that_serve_keeps(tiny_pipe, tmp_path, monkeypatch, capsys):
    from sdlab import cli

    monkeypatch.chdir(tmp_path)
    app = sdlab.app.create_app(tiny_pipe, face_restorer=None, feedback_dir="feedback")  # as `sdlab serve` does
    with TestClient(app) as client:
        rate(client, make(client)[0]["image_id"], 5)
    assert cli.main(["finetune", "--model", "tiny-random", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "done: step 2/2" in out and "new model: feedback/models/tiny-random-feedback/v1" in out
    assert (tmp_path / "feedback/models/tiny-random-feedback/v1/sdlab_version.json").is_file()

    assert cli.main(["finetune", "--store", "elsewhere"]) == 2
    assert "elsewhere holds no feedback store" in capsys.readouterr().err
    assert cli.main(["finetune", "--model", "sdlab-tiny", "--steps", "2"]) == 2  # the images are tiny-random's
    assert "no image in feedback made with sdlab-tiny has a mean rating of 4" in capsys.readouterr().err


def test_cli_feedback_demo_rates_finetunes_and_measures(tiny_model, tmp_path, capsys):
    from sdlab import cli

    # green: the colour sdlab-tiny v4 gives most often to these open-colour prompts at 10 steps (7 of 32)
    assert cli.main(["feedback-demo", "--colour", "green", "--images", "32", "--test-images", "8",
                     "--control-images", "0", "--num-inference-steps", "10", "--finetune-steps", "2",
                     "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    liked = re.search(r"(\d+) of 32 images liked; green objects on held-out prompts: \d+% → \d+%", out)
    assert liked and int(liked[1]) >= 1, out
    assert f"the new model: {tmp_path}/sdlab-tiny-feedback/v1" in out
