"""The feedback store: rows and image files always agree, many writers lose nothing, a killed
writer leaves a consistent store, and bad feedback gets a teaching error."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from sdlab.errors import SdlabInputError
from sdlab.feedback import MAX_COMMENT_CHARS, SCHEMA_VERSION, FeedbackStore, captioned_grid, rating_widget
from sdlab.generation import GeneratedImage, GenerationParams
from sdlab.metadata import read_params

ROOT = Path(__file__).resolve().parent.parent


def fake(prompt: str, seed: int, colour=(30, 70, 230), model: str = "tiny-random") -> GeneratedImage:
    """A GeneratedImage without running a model (a flat image whose pixels depend on the seed)."""
    params = GenerationParams(prompt=prompt, seed=seed, num_inference_steps=2, guidance_scale=7.5, height=64,
                              width=64, scheduler="DDIM", model=model, negative_prompt="blurry")
    image = Image.new("RGB", (64, 64), colour)
    image.putpixel((seed % 64, seed // 64 % 64), (seed % 256, 0, 0))
    return GeneratedImage(image, params, 0.01)


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "fb") as s:
        yield s


def test_generations_round_trip_with_files_named_by_content(store, tiny_pipe):
    import sdlab

    result = sdlab.generate(tiny_pipe, "a red circle on a white background", seed=3, num_images_per_prompt=2)
    ids = store.add_generations(result, user="ana")
    item = store.get(ids[1])
    assert item.params == result[1].params and item.user == "ana" and item.ratings == 0
    assert item.path.name.startswith(item.path.parent.name) and len(item.path.stem) == 64  # sha256 named
    assert read_params(item.path) == result[1].params  # the file keeps its parameters (A1111 text)
    assert item.image.tobytes() == result[1].image.tobytes()
    assert store.add_generation(result[0]) != ids[0]  # same image again: a new row, the same file
    assert store.verify() | {"rows": 3} == {"integrity": "ok", "fts": "ok", "rows": 3, "files": 2,
                                            "missing_files": [], "orphan_files": []}
    with sqlite3.connect(store.db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_search_by_words_rating_model_and_date(store):
    a = store.add_generation(fake("a red circle on a white background", 1))
    b = store.add_generation(fake("two blue squares", 2, model="sdlab-tiny"))
    c = store.add_generation(fake("a green circle", 3))
    store.add_feedback(a, 5, "lovely", "ana")
    store.add_feedback(a, "down", user="ben")  # thumbs down counts as 1: mean 3
    store.add_feedback(c, "up")
    ids = lambda items: [i.id for i in items]  # noqa: E731
    assert ids(store.search("circles")) == [c, a]  # stemmed: "circles" finds "circle"; newest first
    assert ids(store.search("squ")) == [b]  # the last word may be a prefix (search as you type)
    assert ids(store.search("circle", min_rating=4)) == [c]
    assert ids(store.search(model="sdlab-tiny")) == [b]
    assert ids(store.search(rated=False)) == [b]
    assert ids(store.search(order="rating")) == [c, a, b]
    assert ids(store.liked()) == [c]
    tomorrow = datetime.now(timezone.utc) + timedelta(days=1)
    assert store.search(since=tomorrow) == [] and len(store.search(until=tomorrow.date())) == 3
    assert store.get(a).mean_rating == 3 and [f.rating for f in store.feedback(a)] == [5, 1]
    assert store.stats() | {"mean_rating": None} == {"images": 3, "ratings": 3, "mean_rating": None, "liked": 1,
                                                     "models": ["sdlab-tiny", "tiny-random"]}
    with pytest.raises(SdlabInputError, match="no words"):
        store.search("***")
    with pytest.raises(SdlabInputError, match="not a date"):
        store.search(since="last tuesday")


@pytest.mark.parametrize("args, message", [
    ((999, 5), "no image with id 999 in this feedback store .it holds image ids 1–1."),
    ((1, 0), "rating must be a whole number from 1 .bad. to 5 .great."),
    ((1, 6), "rating must be"),
    ((1, True), "rating must be"),
    ((1, "meh"), "or 'up'/'down' for thumbs"),
    (("1", 5), "image_id must be the whole number that add_generation returned"),
    ((1, 5, "x" * (MAX_COMMENT_CHARS + 1)), f"comment is {MAX_COMMENT_CHARS + 1} characters; the limit is"),
    ((1, 5, "", "u" * 101), "user is 101 characters; the limit is 100"),
    ((1, 5, "nice \ud800"), "comment is not valid Unicode: character 5 is a lone surrogate"),
    ((1, 5, "", "\udfff"), "user is not valid Unicode"),
    ((2**64, 5), "no image with id 18446744073709551616 in this feedback store"),  # past SQLite's integers
])
def test_malformed_feedback_is_a_teaching_error(store, args, message):
    store.add_generation(fake("a circle", 1))
    with pytest.raises(SdlabInputError, match=message):
        store.add_feedback(*args)
    assert store.feedback() == []


def test_seeds_and_ids_past_sqlites_integers(store):
    biggest = 2**64 - 1  # a seed torch takes, but not a 64-bit signed SQLite integer
    image_id = store.add_generation(fake("a circle", biggest))
    assert store.get(image_id).params.seed == biggest  # kept whole, in the parameters
    with sqlite3.connect(store.db_path) as conn:
        assert conn.execute("SELECT seed FROM generations").fetchone() == (None,)
    with pytest.raises(SdlabInputError, match=f"no image with id {2**63}"):
        store.get(2**63)
    assert store.feedback(2**70) == []
    with pytest.raises(SdlabInputError, match=r"offset must be a whole number from 0 to 9223372036854775807"):
        store.search(offset=2**63)
    with pytest.raises(SdlabInputError, match="0001-01-01T00:00:00.01:00 is out of the range of dates"):
        store.search(since="0001-01-01T00:00+01:00")
    assert [item.id for item in store.search(offset=0, until="9999-12-30")] == [image_id]


def test_a_failed_insert_leaves_no_file_and_keeps_shared_files(store, monkeypatch):
    kept = store.add_generation(fake("a circle", 1))

    def broken_insert(*args):
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    monkeypatch.setattr(FeedbackStore, "_insert_generation", broken_insert)
    with pytest.raises(sqlite3.OperationalError):
        store.add_generations([fake("a circle", 2), fake("a circle", 3)])
    with pytest.raises(sqlite3.OperationalError):
        store.add_generation(fake("a circle", 1))  # the same image as the stored one: its file must stay
    check = store.verify()
    assert (check["rows"], check["files"], check["orphan_files"], check["missing_files"]) == (1, 1, [], [])
    assert store.get(kept).path.is_file()


def test_schema_is_versioned_and_a_newer_database_is_refused(tmp_path):
    FeedbackStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "feedback.sqlite3") as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SdlabInputError, match="newer than this sdlab knows"):
        FeedbackStore(tmp_path)


def test_a_file_that_is_no_store_is_refused_and_left_as_it_is(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(SdlabInputError, match="notes.txt is a file; a feedback store is a folder"):
        FeedbackStore(tmp_path / "notes.txt")
    other = b"SQLite is not what this is; " * 40  # e.g. a file copied over the database by mistake
    (tmp_path / "feedback.sqlite3").write_bytes(other)
    with pytest.raises(SdlabInputError, match="feedback.sqlite3 is not a feedback store .*left as it is"):
        FeedbackStore(tmp_path)
    assert (tmp_path / "feedback.sqlite3").read_bytes() == other  # nothing lost or overwritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feedback.sqlite3", "notes.txt"]


WRITER = """
import sys
from sdlab.feedback import FeedbackStore
folder, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = FeedbackStore(folder)
for k in range(count):
    store.add_feedback(1 + k % 4, 1 + k % 5, f"{worker}:{k}", user=f"worker-{worker}")
"""


def test_eight_writer_processes_lose_no_feedback(tmp_path):
    store = FeedbackStore(tmp_path)
    store.add_generations([fake("a circle", k) for k in range(4)])
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    workers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(w), "500"], env=env)
               for w in range(8)]
    assert [p.wait(timeout=120) for p in workers] == [0] * 8
    seconds = time.perf_counter() - start
    comments = {f.comment for f in store.feedback()}
    assert len(comments) == 8 * 500 and comments == {f"{w}:{k}" for w in range(8) for k in range(500)}
    assert store.verify()["integrity"] == "ok"
    print(f"8 processes × 500 feedback rows: {8 * 500 / seconds:.0f} rows/s (process start included)")


def test_eight_writer_threads_lose_no_feedback(store):
    ids = store.add_generations([fake("a circle", k) for k in range(4)])
    errors = []

    def write(worker):
        try:
            for k in range(500):
                store.add_feedback(ids[k % 4], "up" if k % 2 else 2, f"{worker}:{k}")
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(store.feedback()) == 4000


def _kill_mid_write(folder):
    """Store one image, then die (SIGKILL) after writing the next image's file, before its row commits."""
    store = FeedbackStore(folder)
    store.add_generation(fake("kept", 1))
    FeedbackStore._insert_generation = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    store.add_generation(fake("lost", 2))


def _busy_writer(folder):
    store = FeedbackStore(folder)
    for k in range(10**6):
        image_id = store.add_generation(fake(f"shape {k}", k))
        store.add_feedback(image_id, 1 + k % 5, "busy")


def test_a_writer_killed_mid_write_leaves_a_consistent_store(tmp_path):
    import multiprocessing

    fork = multiprocessing.get_context("fork")  # a child process with sdlab already imported: starts at once
    # killed between writing an image file and committing its row: an orphan file, removed on open
    child = fork.Process(target=_kill_mid_write, args=(tmp_path / "a",))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert len(list((tmp_path / "a" / "images").rglob("*.png"))) == 2
    with FeedbackStore(tmp_path / "a") as store:
        check = store.verify()
        assert (check["integrity"], check["rows"], check["files"], check["orphan_files"]) == ("ok", 1, 1, [])
        assert [i.prompt for i in store.search()] == ["kept"]

    # killed at a random moment of a busy write loop
    busy = fork.Process(target=_busy_writer, args=(tmp_path / "b",))
    busy.start()
    deadline = time.time() + 60
    while time.time() < deadline and _rows(tmp_path / "b") < 30:
        time.sleep(0.05)
    os.kill(busy.pid, signal.SIGKILL)
    busy.join()
    with FeedbackStore(tmp_path / "b") as store:
        check = store.verify()
        assert check["integrity"] == "ok" and check["fts"] == "ok" and check["rows"] >= 30
        assert check["missing_files"] == [] and check["orphan_files"] == [] and check["files"] == check["rows"]
        store.add_feedback(check["rows"], 5)  # and it takes writes again


def _rows(folder: Path) -> int:
    try:
        with sqlite3.connect(folder / "feedback.sqlite3", timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM generations").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_export_is_a_hugging_face_imagefolder(store, tmp_path):
    ids = store.add_generations([fake("a blue circle", 1), fake("a red square", 2)])
    with pytest.raises(SdlabInputError, match="rate some images"):
        store.export_imagefolder(tmp_path / "empty")
    store.add_feedback(ids[0], 5)
    store.add_feedback(ids[1], 2)
    out = store.export_imagefolder(tmp_path / "liked")
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [(r["text"], r["seed"], r["image_id"], r["mean_rating"]) for r in rows] == [("a blue circle", 1, ids[0], 5)]
    assert sorted(p.name for p in out.iterdir()) == sorted(["metadata.jsonl", rows[0]["file_name"]])
    assert rows[0]["negative_prompt"] == "blurry" and rows[0]["model"] == "tiny-random"
    with pytest.raises(SdlabInputError, match="not empty"):
        store.export_imagefolder(out)


def test_rating_widget_saves_feedback_and_grid_shows_ratings(store):
    ids = store.add_generations([fake("a circle", 1), fake("a square", 2)])
    panel = rating_widget(store, ids, user="ana")
    card = panel.children[0]
    stars, comment, (save, note) = card.children[2], card.children[3], card.children[4].children
    save.click()
    assert "pick a rating first" in note.value and store.feedback() == []
    stars.value, comment.value = 4, "nice"
    save.click()
    assert [(f.image_id, f.rating, f.comment, f.user) for f in store.feedback()] == [(ids[0], 4, "nice", "ana")]
    grid = captioned_grid(store.search(order="oldest"), cell=64)
    assert grid.size == (64 * 2 + 2, 64 + 16)
