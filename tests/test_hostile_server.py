"""A careless or hostile client of the class server, and PNGs that lie to `sdlab regenerate`.

Every case gets a 4xx (or a CLI error that says what to change), never a 500 or a traceback; the
server keeps serving throughout, and what it stored stays whole. Loopback only, on `tiny-random`.
"""
import io
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import sdlab
import sdlab.app
from sdlab import cli
from sdlab import finetune as finetune_module
from sdlab.app.batcher import Batcher, BusyError, ClientGone, Job
from sdlab.app.feedback import FinetuneLimits
from sdlab.app.studio import Studio
from sdlab.errors import SdlabInputError
from sdlab.feedback import MAX_COMMENT_CHARS
from sdlab.generation import MAX_PROMPT_CHARS, GenerationCancelled
from sdlab.metadata import read_params, regenerate, save_png
from sdlab.seeds import default_size

PROMPT = "a small red circle on a blue background"
TOKEN = "operator-secret"


@pytest.fixture(scope="module")
def app(tiny_pipe, tmp_path_factory):
    return sdlab.app.create_app(tiny_pipe, face_restorer=None, feedback_dir=tmp_path_factory.mktemp("feedback"),
                                max_queue=4, finetune_limits=FinetuneLimits(max_steps=50, keep_versions=2),
                                operator_token=TOKEN)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def live(app):
    server = sdlab.app.Server(app, "127.0.0.1", 0).start()
    yield server
    server.close()


def stored_count(client) -> int:
    return len(client.get("/gallery", params={"limit": 200}).json()["images"])


def assert_store_whole(client):
    """Every stored image is listed, served and readable, with the parameters it was made with."""
    for entry in client.get("/gallery", params={"limit": 200}).json()["images"]:
        png = client.get(entry["url"])
        assert png.status_code == 200
        assert read_params(Image.open(io.BytesIO(png.content))).to_dict() == entry["parameters"]


# ---- types and text -----------------------------------------------------------------------

@pytest.mark.parametrize("body, words", [
    ({"steps": "2"}, ["steps", "got '2'", "a whole number"]),
    ({"num_inference_steps": True}, ["num_inference_steps", "got True"]),
    ({"cfg_scale": "7.5"}, ["cfg_scale", "got '7.5'", "a number"]),
    ({"seed": 1.5}, ["seed", "got 1.5"]),
    ({"number_of_images": False}, ["number_of_images", "got False"]),
    ({"width": "64"}, ["width", "got '64'"]),
])
def test_numbers_must_be_numbers_not_strings_or_booleans(client, body, words):
    response = client.post("/text2img", json={"prompt": PROMPT} | body)
    assert response.status_code == 422 and all(w in response.json()["detail"] for w in words), response.text


def test_a_finetune_with_a_string_for_a_number_is_refused(client):
    response = client.post("/finetune", json={"steps": 2, "min_rating": "4"}, headers={"Authorization":
                                                                                        f"Bearer {TOKEN}"})
    assert response.status_code == 422 and "min_rating" in response.json()["detail"]


def test_a_huge_negative_prompt_is_refused_at_once_with_a_short_answer(client):
    before = stored_count(client)
    start = time.monotonic()
    response = client.post("/text2img", json={"prompt": PROMPT, "negative_prompt": "blurry " * 500_000})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert f"the limit is {MAX_PROMPT_CHARS}" in detail and len(response.content) < 2000
    assert time.monotonic() - start < 10 and stored_count(client) == before


def test_the_limits_are_named_in_the_openapi_schema(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert schema["Text2ImgRequest"]["properties"]["prompt"]["maxLength"] == MAX_PROMPT_CHARS
    assert schema["FeedbackRequest"]["properties"]["comment"]["maxLength"] == MAX_COMMENT_CHARS


@pytest.mark.parametrize("path, body", [
    ("/text2img", '{"prompt": "a cat \\ud800"}'),
    ("/text2img", '{"prompt": "a cat", "negative_prompt": "\\udfff"}'),
    ("/feedback", '{"image_id": 1, "rating": 5, "comment": "nice \\ud800"}'),
    ("/feedback", '{"image_id": 1, "rating": 5, "user": "\\ud800"}'),
])
def test_a_lone_surrogate_is_a_422_not_a_500(client, path, body):
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert "Unicode" in response.json()["detail"]


def test_a_generation_path_with_its_trailing_slash_has_the_same_body_limit(client):
    announced = client.post("/img2img/", content=b"{}", headers={"Content-Type": "application/json",
                                                                 "content-length": str(60 * 2**20)})
    assert announced.status_code == 413 and "the limit for /img2img is 48 MB" in announced.json()["detail"]


@pytest.mark.parametrize("path", ["/feedback", "/finetune"])
def test_small_endpoints_refuse_a_big_body_before_reading_it(client, path):
    announced = client.post(path, content=b"{}", headers={"Content-Type": "application/json",
                                                          "content-length": str(50 * 2**20)})
    assert announced.status_code == 413 and "the limit for" in announced.json()["detail"]
    slashed = client.post(path + "/", content=b"{}", headers={"Content-Type": "application/json",
                                                              "content-length": str(50 * 2**20)})
    assert slashed.status_code == 413  # the other spelling of the path has the same limit

    def chunks():  # no Content-Length: refused once what was read passes the limit
        yield b'{"comment": "'
        for _ in range(200):
            yield b"x" * 1024
    streamed = client.post(path, content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and "64 KB" in streamed.json()["detail"]


# ---- the line: bounded work, fairness, nobody's work done for nobody ---------------------------

def test_a_request_for_too_much_work_is_refused_before_it_waits(client):
    response = client.post("/text2img", json={"prompt": PROMPT, "number_of_images": 64, "steps": 500})
    assert response.status_code == 422
    assert all(w in response.json()["detail"] for w in ("64 image(s) × 500 steps", "allows 1600", "fewer"))


def test_sizes_far_above_the_models_own_are_refused_and_above_twice_it_warned(client, app):
    size = default_size(app.state.studio.pipe)
    too_big = client.post("/text2img", json={"prompt": PROMPT, "width": 12 * size, "height": 12 * size, "steps": 1})
    assert too_big.status_code == 422
    assert all(w in too_big.json()["detail"] for w in (f"width is {12 * size}", f"sides up to {8 * size}",
                                                       f"own size is {size}×{size}"))
    big = client.post("/text2img", json={"prompt": PROMPT, "width": 4 * size, "height": 4 * size, "steps": 1})
    assert big.status_code == 200 and "more than twice" in big.json()["warnings"][0]
    assert client.post("/text2img", json={"prompt": PROMPT, "steps": 1}).json()["warnings"] == []


def _recording_batcher(size=10, max_batch=1):
    """A batcher whose calls record the (job name, image) they make, in order."""
    calls = []

    def run(pieces):
        calls.append([(piece.job.payload, k) for piece in pieces for k in range(piece.start, piece.stop)])
        return [[piece.job.payload] * len(piece) for piece in pieces]

    return Batcher(run, size=size, max_batch=max_batch, window=0), calls


def _in_line(batcher, jobs, serve=None):
    """Start serving `jobs` (one thread each, `serve(job)`), one after the other in line; the threads."""
    threads = []
    for job in jobs:
        threads.append(threading.Thread(target=serve or batcher.serve, args=(job,)))
        threads[-1].start()
        _wait_until(lambda: len(batcher) == len(threads))
    return threads


def test_the_line_gives_the_next_image_to_the_client_served_longest_ago():
    batcher, calls = _recording_batcher(max_batch=1)
    jobs = [Job(client, "same settings", size, payload=name)
            for client, name, size in [("a", "a1", 1), ("a", "a2", 1), ("a", "a3", 1), ("b", "b1", 1), ("c", "c1", 3),
                                       ("d", "d1", 1)]]
    with batcher.hold():  # the pipeline is busy while the requests arrive
        threads = _in_line(batcher, jobs)
    for thread in threads:
        thread.join(10)
    made = [name for call in calls for name, _ in call]
    # b's, c's and d's requests do not wait behind all of a's, nor d's behind all of c's three images
    assert made == ["a1", "b1", "c1", "d1", "a2", "c1", "a3", "c1"]
    assert batcher.calls == 8 and batcher.images == 8 and len(batcher) == 0


def test_requests_that_can_share_a_call_are_merged_in_fair_order_and_others_wait_their_turn():
    batcher, calls = _recording_batcher(max_batch=4)
    jobs = [Job("a", "20 steps", 6, payload="a"), Job("b", "50 steps", 1, payload="b"),
            Job("c", "20 steps", 1, payload="c"), Job("d", "big", 2, payload="d", cost=4.0)]
    with batcher.hold():
        threads = _in_line(batcher, jobs)
    for thread in threads:
        thread.join(10)
    assert calls == [[("a", 0), ("a", 1), ("a", 2), ("c", 0)],  # a's first image, c's (a's settings), a's next
                     [("b", 0)],  # the client served longest ago whose settings differ
                     [("d", 0)],  # an image 4 times the model's pixels fills a call of 4
                     [("a", 3), ("a", 4), ("a", 5)], [("d", 1)]]


def test_after_a_call_the_line_waits_for_the_clients_it_answered():
    """Clients that ask again 0.15 s after their answer, with a window of 0.1 s: without waiting for
    them, the first client's requests would take calls of their own, turn about with the others'."""
    sizes = []

    def run(pieces):
        sizes.append(sum(len(piece) for piece in pieces))
        time.sleep(0.2)
        return [[None] * len(piece) for piece in pieces]

    batcher = Batcher(run, max_batch=8, window=0.1)

    def client(name, start):
        time.sleep(start)
        for _ in range(3):
            batcher.serve(Job(name, "same settings", 1))
            time.sleep(0.15)  # reading the answer

    # the first client's first request is alone in the first call (0.1–0.3 s); the others come at 0.2 s
    threads = [threading.Thread(target=client, args=(name, 0 if name == "a" else 0.2)) for name in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sizes == [1, 4, 4, 3]


def test_a_waiting_request_whose_client_left_leaves_the_line():
    batcher, calls = _recording_batcher(size=2)
    gone, outcome = threading.Event(), []

    def wait_in_line(job):
        try:
            batcher.serve(job)
            outcome.append("ran")
        except ClientGone:
            outcome.append("left")

    with batcher.hold():
        threads = [threading.Thread(target=wait_in_line, args=(Job("a", 0, 1, payload="a"),)),
                   threading.Thread(target=wait_in_line, args=(Job("b", 0, 1, payload="b", gone=gone.is_set),))]
        for thread in threads:
            thread.start()
        _wait_until(lambda: len(batcher) == 2)
        with pytest.raises(BusyError, match="at most 2"):  # full of live requests
            batcher.serve(Job("c", 0, 1))
        gone.set()
        threads[1].join(5)
        assert outcome == ["left"] and len(batcher) == 1  # a place is free again
    threads[0].join(5)
    assert outcome == ["left", "ran"] and calls == [[("a", 0)]] and len(batcher) == 0


def test_an_error_in_a_call_goes_to_each_of_its_requests_and_the_line_goes_on():
    def run(pieces):
        if any(piece.job.payload == "bad" for piece in pieces):
            raise RuntimeError("out of memory")
        return [[piece.job.payload] * len(piece) for piece in pieces]

    batcher, errors = Batcher(run, max_batch=4, window=0), []

    def serve(job):
        try:
            batcher.serve(job)
        except RuntimeError as err:
            errors.append((job.payload, str(err)))

    with batcher.hold():
        threads = _in_line(batcher, [Job("a", 0, 1, payload="bad"), Job("b", 0, 1, payload="b")], serve)
    for thread in threads:
        thread.join(5)
    assert sorted(errors) == [("b", "out of memory"), ("bad", "out of memory")]
    assert batcher.serve(Job("c", 0, 2, payload="c")) == ["c", "c"]


def test_a_generation_whose_client_left_stops_between_steps(tiny_pipe):
    asked = []

    def stop_after_three():
        asked.append(1)
        return len(asked) > 3

    with pytest.raises(GenerationCancelled, match="after denoising step"):
        sdlab.generate(tiny_pipe, PROMPT, num_inference_steps=30, seed=1, should_stop=stop_after_three)
    assert len(asked) == 4  # asked after each step: stopped at the fourth of 30

    studio = Studio(tiny_pipe)
    left = threading.Event()
    calls = []

    def gone():
        calls.append(1)
        if len(calls) > 5:
            left.set()
        return left.is_set()

    with pytest.raises(ClientGone):
        studio.generate(PROMPT, num_inference_steps=30, gone=gone)
    assert studio.in_line == 0 and len(calls) < 30


def _post_and_leave(server, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /text2img HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


def _wait_until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_clients_that_give_up_do_not_fill_the_line(live, app, client):
    """The probe's case: after `max_queue` abandoned requests every generation got 503 for good."""
    studio = app.state.studio
    before = stored_count(client)
    with studio.batcher.hold():  # the pipeline is busy: the requests wait in line
        sockets = []
        for seed in range(studio.max_queue):
            sockets.append(_post_and_leave(live, {"prompt": PROMPT, "seed": seed, "steps": 2}))
            _wait_until(lambda: studio.in_line == len(sockets))
        full = httpx.post(live.url + "text2img", json={"prompt": PROMPT, "steps": 1}, timeout=30)
        assert full.status_code == 503 and full.headers["retry-after"] == "5"  # truly full of live requests
        for sock in sockets:
            sock.close()
        _wait_until(lambda: studio.in_line == 0)  # they left the line
    after = httpx.post(live.url + "text2img", json={"prompt": PROMPT, "seed": 7, "steps": 2}, timeout=60)
    assert after.status_code == 200, after.text
    assert stored_count(client) == before + 1  # nothing was made for the clients that left
    assert_store_whole(client)


# ---- fine-tuning is the operator's ---------------------------------------------------------------

def _liked(client):
    images = client.post("/text2img", json={"prompt": PROMPT, "number_of_images": 2, "steps": 2, "seed": 3}).json()
    for image_id in images["image_ids"]:
        assert client.post("/feedback", json={"image_id": image_id, "rating": 5}).status_code == 200


def _wait_job(client, job_id) -> dict:
    _wait_until(lambda: client.get(f"/finetune/{job_id}").json()["state"] not in ("queued", "running"), 120)
    return client.get(f"/finetune/{job_id}").json()


def test_finetuning_needs_the_operator_token_and_stays_within_the_limits(client):
    _liked(client)
    assert client.get("/finetune/limits").json() == {"max_steps": 50, "max_minutes": 30.0, "keep_versions": 2,
                                                     "needs_token": True}
    nobody = client.post("/finetune", json={"steps": 1})
    assert nobody.status_code == 401 and "operator's token" in nobody.json()["detail"]
    wrong = client.post("/finetune", json={"steps": 1}, headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 403
    operator = {"Authorization": f"Bearer {TOKEN}"}
    too_long = client.post("/finetune", json={"steps": 100000, "method": "full"}, headers=operator)
    assert too_long.status_code == 422 and "at most 50" in too_long.json()["detail"]

    with finetune_module.FINETUNE_TURN:  # queued behind another fine-tune
        job = client.post("/finetune", json={"steps": 50}, headers=operator).json()
        assert client.delete(f"/finetune/{job['job_id']}").status_code == 401
        cancelled = client.delete(f"/finetune/{job['job_id']}", headers=operator)
        assert cancelled.status_code == 200
    ended = _wait_job(client, job["job_id"])
    assert ended["state"] == "failed" and "cancelled by DELETE" in ended["message"] and ended["version"] is None
    assert client.delete("/finetune/nope", headers=operator).status_code == 404

    folders = []
    for _ in range(3):  # the server keeps the newest two versions
        job = client.post("/finetune", json={"steps": 1}, headers=operator).json()
        done = _wait_job(client, job["job_id"])
        assert done["state"] == "done", done
        folders.append(Path(done["version"]))
    assert [f.is_dir() for f in folders] == [False, True, True]
    assert sorted(p.name for p in folders[0].parent.iterdir()) == [folders[1].name, folders[2].name]


def test_a_finetune_stops_at_the_time_limit(tiny_pipe, tmp_path):
    app = sdlab.app.create_app(tiny_pipe, face_restorer=None, feedback_dir=tmp_path / "feedback",
                               finetune_limits=FinetuneLimits(max_minutes=1e-5))
    with TestClient(app) as client:
        _liked(client)
        job = client.post("/finetune", json={"steps": 50}).json()  # on loopback without a token
        ended = _wait_job(client, job["job_id"])
    assert ended["state"] == "failed" and "time limit" in ended["message"], ended


def test_limits_that_make_no_sense_are_refused():
    with pytest.raises(SdlabInputError, match="max_steps"):
        FinetuneLimits(max_steps=True).checked()
    with pytest.raises(SdlabInputError, match="keep_versions"):
        FinetuneLimits(keep_versions=0).checked()


def test_the_token_is_needed_only_off_this_machine(monkeypatch):
    from sdlab.app.server import operator_token

    monkeypatch.delenv("SDLAB_OPERATOR_TOKEN", raising=False)
    assert operator_token("127.0.0.1", share=False) is None
    assert len(operator_token("0.0.0.0", share=False)) >= 20
    assert operator_token("127.0.0.1", share=True) is not None
    monkeypatch.setenv("SDLAB_OPERATOR_TOKEN", "from-env")
    assert operator_token("0.0.0.0", share=False) == "from-env"
    assert operator_token("0.0.0.0", share=False, token="given") == "given"


def test_the_server_still_answers_after_all_of_it(client):
    assert client.get("/health").json()["status"] == "ok"
    assert client.post("/text2img", json={"prompt": PROMPT, "steps": 1}).status_code == 200
    assert_store_whole(client)


# ---- PNGs that lie to regenerate ---------------------------------------------------------

def _png_saying(tmp_path, text: str, zip: bool = False) -> Path:
    info = PngInfo()
    info.add_text("parameters", text, zip=zip)
    path = tmp_path / "lie.png"
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    return path


GOOD = "Steps: 2, Sampler: PNDM, CFG scale: 7.5, Seed: 1, Size: 64x64, Model: tiny-random"


@pytest.mark.parametrize("settings, words", [
    (GOOD.replace("Steps: 2", "Steps: abc"), ["Steps is 'abc'", "a whole number"]),
    (GOOD.replace("Size: 64x64", "Size: 64"), ["Size is '64'", "width x height"]),
    (GOOD.replace("Size: 64x64", "Size: 60x64"), ["width 60", "multiple of 8"]),
    (GOOD.replace("CFG scale: 7.5", "CFG scale: nan"), ["CFG scale is 'nan'", "finite"]),
    (GOOD + ", Batch size: 2, Batch pos: 5", ["Batch pos is 5", "0–1"]),
    (GOOD + ", Batch size: 2, Batch pos: -1", ["Batch pos is -1"]),
    (GOOD.replace("Steps: 2", "Steps: 500").replace("64x64", "2048x2048") + ", Batch size: 64, Batch pos: 0",
     ["64 image(s) × 500 steps at 2048×2048", "--force"]),
    (GOOD.replace("Model: tiny-random", "Model: /tmp/somewhere/model"), ["/tmp/somewhere/model", "--trust-model"]),
])
def test_regenerate_refuses_lying_metadata_naming_the_field(tmp_path, capsys, settings, words):
    png = _png_saying(tmp_path, f"{PROMPT}\n{settings}")
    assert cli.main(["regenerate", str(png), "--out", str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert "Traceback" not in err and not (tmp_path / "out.png").exists()


def test_regenerate_refuses_a_text_chunk_bomb(tmp_path, capsys):
    png = _png_saying(tmp_path, "Steps: 1, " * 400_000, zip=True)  # 4 MB of text, a few KB stored
    assert png.stat().st_size < 100_000
    assert cli.main(["regenerate", str(png), "--out", str(tmp_path / "out.png")]) == 2
    assert "not an image PIL can read" in capsys.readouterr().err


def test_regenerate_loads_a_named_folder_only_when_trusted_and_says_why_it_fails(tmp_path, capsys):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", '
                                             '"UNet2DConditionModel"]}')
    (broken / "unet").mkdir()
    (broken / "unet" / "config.json").write_text("{ not json")
    png = _png_saying(tmp_path, f"{PROMPT}\n" + GOOD.replace("Model: tiny-random", f"Model: {broken}"))
    assert cli.main(["regenerate", str(png), "--out", str(tmp_path / "out.png")]) == 2
    assert "--trust-model" in capsys.readouterr().err
    assert cli.main(["regenerate", str(png), "--out", str(tmp_path / "out.png"), "--trust-model"]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "Traceback" not in err
    # --model: the image is made with the model given (it differs from the blank PNG: exit 1, said so)
    with pytest.raises(SystemExit) as different:
        cli.main(["regenerate", str(png), "--out", str(tmp_path / "out.png"), "--model", "tiny-random"])
    assert different.value.code == 1
    assert "DIFFERENT" in capsys.readouterr().out and (tmp_path / "out.png").is_file()


def test_regenerate_runs_a_job_above_the_limit_only_when_forced(tiny_pipe, tmp_path, monkeypatch):
    import sdlab.metadata

    made = sdlab.generate(tiny_pipe, PROMPT, seed=4, num_inference_steps=3)[0]
    path = save_png(made, tmp_path / "made.png")
    assert regenerate(path, tiny_pipe).params == made.params  # within the limit: runs unasked
    monkeypatch.setattr(sdlab.metadata, "MAX_WORK", 2)
    with pytest.raises(SdlabInputError, match="1 image\\(s\\) × 3 steps .* 3 image-steps .*force=True"):
        regenerate(path, tiny_pipe)
    again = regenerate(path, tiny_pipe, force=True)
    assert again.params == made.params and np.array_equal(np.asarray(again.image), np.asarray(made.image))
