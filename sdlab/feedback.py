"""Feedback (notebook 08): every generation stored with its parameters, rated, searched, exported.

    store = FeedbackStore("feedback")                    # a folder: feedback.sqlite3 + images/
    image_id = store.add_generation(result[0])           # the PNG on disk, named by its hash, + one row
    store.add_feedback(image_id, 5, "just the blue I wanted", user="ana")   # 1–5, or "up"/"down"
    store.search("circle", min_rating=4)                 # words in the prompt (SQLite FTS5) + filters
    store.export_imagefolder("liked")                    # a Hugging Face `imagefolder` of the liked images

How it stays consistent: SQLite in WAL mode (readers never wait, one writer at a time, safe across
processes and threads); every write is one transaction that takes the write lock first (BEGIN
IMMEDIATE); the schema is numbered with PRAGMA user_version and migrated on open. An image file is
written (temp file, then rename) while its writer holds that lock and before its row commits; if the
insert fails, the file it wrote is removed. A writer killed between the two leaves a file without a
row, and the next open removes it. So rows and files always agree.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .errors import SdlabInputError, check

DB_NAME = "feedback.sqlite3"
IMAGES = "images"
MAX_COMMENT_CHARS = 2000
MAX_USER_CHARS = 100
LIKED = 4  # a rating of 4 or 5 counts as "liked"
THUMBS = {"up": 5, "down": 1, "👍": 5, "👎": 1, "thumbs up": 5, "thumbs down": 1}

# Schema versions, in order: MIGRATIONS[k] turns a version-k database into version k + 1.
MIGRATIONS = [[
    """CREATE TABLE generations (
        id INTEGER PRIMARY KEY,
        image_path TEXT NOT NULL,             -- relative to the store's folder: images/ab/<sha256>.png
        image_sha256 TEXT NOT NULL,
        prompt TEXT NOT NULL,
        negative_prompt TEXT NOT NULL DEFAULT '',
        seed INTEGER,
        num_inference_steps INTEGER NOT NULL,
        guidance_scale REAL NOT NULL,
        scheduler TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        model TEXT NOT NULL,
        params_json TEXT NOT NULL,            -- every GenerationParams field, for an exact round trip
        seconds REAL,
        user TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL              -- UTC, ISO 8601: sorts as text
    )""",
    "CREATE INDEX generations_created ON generations(created_at)",
    "CREATE INDEX generations_model ON generations(model)",
    "CREATE INDEX generations_sha ON generations(image_sha256)",
    f"""CREATE TABLE feedback (
        id INTEGER PRIMARY KEY,
        generation_id INTEGER NOT NULL REFERENCES generations(id) ON DELETE CASCADE,
        rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 5),
        comment TEXT NOT NULL DEFAULT '' CHECK (length(comment) <= {MAX_COMMENT_CHARS}),
        user TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL
    )""",
    "CREATE INDEX feedback_generation ON feedback(generation_id)",
    """CREATE VIRTUAL TABLE prompts USING fts5(prompt, content='generations', content_rowid='id',
                                               tokenize='porter unicode61')""",
    "CREATE TRIGGER generations_ai AFTER INSERT ON generations BEGIN "
    "INSERT INTO prompts(rowid, prompt) VALUES (new.id, new.prompt); END",
    "CREATE TRIGGER generations_ad AFTER DELETE ON generations BEGIN "
    "INSERT INTO prompts(prompts, rowid, prompt) VALUES ('delete', old.id, old.prompt); END",
]]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class Feedback:
    """One rating of one image."""

    id: int
    image_id: int
    rating: int
    comment: str
    user: str
    created_at: str


@dataclass(frozen=True)
class StoredImage:
    """A stored generation: its parameters, its file, and its ratings so far."""

    id: int
    params: "GenerationParams"  # noqa: F821 (sdlab.generation, imported lazily: no torch needed here)
    path: Path
    created_at: str
    user: str
    seconds: float | None
    mean_rating: float | None
    ratings: int

    @property
    def prompt(self) -> str:
        return self.params.prompt

    @property
    def image(self) -> Image.Image:
        """The image, read from its file."""
        with Image.open(self.path) as image:
            image.load()
            return image

    def to_dict(self) -> dict:
        """JSON-ready: what a gallery or an API shows (the file relative to the store)."""
        return {"image_id": self.id, "file": f"{IMAGES}/{self.path.parent.name}/{self.path.name}",
                "parameters": self.params.to_dict(), "created_at": self.created_at, "user": self.user,
                "seconds": self.seconds, "mean_rating": self.mean_rating, "ratings": self.ratings}

    def _repr_png_(self):
        return self.image._repr_png_()


def now() -> str:
    """The current UTC time as the store writes it (ISO 8601, sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def as_time(value: str | date | datetime) -> str:
    """A date, datetime or ISO text as the store's time text (naive times count as UTC)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise SdlabInputError(f"{value!r} is not a date; write it like '2026-11-25' or "
                                  f"'2026-11-25T14:30'") from None
    if not isinstance(value, datetime):
        check(isinstance(value, date), f"expected a date, got {value!r}")
        value = datetime(value.year, value.month, value.day)
    value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return value.isoformat(timespec="microseconds")


def check_rating(rating) -> int:
    """A rating as 1–5: a whole number 1–5, or thumbs ("up" → 5, "down" → 1)."""
    if isinstance(rating, str) and rating.strip().lower() in THUMBS:
        return THUMBS[rating.strip().lower()]
    check(isinstance(rating, int) and not isinstance(rating, bool) and 1 <= rating <= 5,
          f"rating must be a whole number from 1 (bad) to 5 (great), or 'up'/'down' for thumbs, got {rating!r}")
    return rating


def check_feedback(image_id, rating, comment, user) -> tuple[int, int, str, str]:
    """Validate one piece of feedback before touching the database; teach the fix."""
    check(isinstance(image_id, int) and not isinstance(image_id, bool),
          f"image_id must be the whole number that add_generation returned (the app's image_id), got {image_id!r}")
    rating = check_rating(rating)
    comment = "" if comment is None else comment
    check(isinstance(comment, str), f"comment must be text, got {type(comment).__name__}")
    check(len(comment) <= MAX_COMMENT_CHARS,
          f"comment is {len(comment)} characters; the limit is {MAX_COMMENT_CHARS}: say it in fewer words")
    user = "" if user is None else user
    check(isinstance(user, str) and len(user) <= MAX_USER_CHARS,
          f"user must be a name of at most {MAX_USER_CHARS} characters, got {user!r:.60}")
    return image_id, rating, comment.strip(), user.strip()


def png_bytes(item) -> bytes:
    """A GeneratedImage as PNG bytes with its parameters inside (what `sdlab.save_png` writes)."""
    from .metadata import PARAMETERS_KEY, format_parameters

    info = PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(item.params))
    buffer = io.BytesIO()
    item.image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def write_atomically(path: Path, data: bytes) -> bool:
    """Write `data` to `path` via a temp file + fsync + rename; False if the file was already there."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: the file is either absent or complete
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _fts_query(text: str) -> str:
    """Words of a search box as an FTS5 query: every word must appear, the last may be a prefix."""
    words = re.findall(r"\w+", text.lower())
    check(bool(words), f"search text {text!r} has no words to look for; try e.g. 'circle' or 'red square'")
    return " ".join(f'"{w}"' for w in words) + "*"


class FeedbackStore:
    """Generations, their image files and their ratings, in one folder (safe for many writers).

    folder: where `feedback.sqlite3` and `images/` live (made if missing).
    timeout: seconds a writer waits for another writer's turn before giving up.
    """

    def __init__(self, folder: str | Path, *, timeout: float = 60.0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db_path = self.folder / DB_NAME
        self.timeout = timeout
        self._local = threading.local()  # one connection per thread (and per process)
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once per database file
        self._migrate()
        self.remove_orphan_files()

    # ---- connections and transactions ----------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # new thread, or a forked child
            conn = sqlite3.connect(self.db_path, timeout=self.timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: safe against crashes, fast commits
            local.conn, local.pid = conn, os.getpid()
            with self._lock:
                self._connections.append(conn)
        return local.conn

    @contextmanager
    def _write(self):
        """One write transaction holding the database's write lock; rolled back on any error."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> "FeedbackStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _migrate(self) -> None:
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            check(version <= SCHEMA_VERSION,
                  f"{self.db_path} has schema version {version}, newer than this sdlab knows "
                  f"({SCHEMA_VERSION}); upgrade sdlab to open it")
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")

    # ---- writing -------------------------------------------------------------------------
    def add_generation(self, item, *, user: str = "") -> int:
        """Store one GeneratedImage (its PNG, with parameters, and a row); returns its image_id."""
        return self.add_generations([item], user=user)[0]

    def add_generations(self, items, *, user: str = "") -> list[int]:
        """Store every image of a Generation (or a list of GeneratedImage) in one transaction."""
        items = list(items)
        check(all(hasattr(i, "image") and hasattr(i, "params") for i in items),
              "add_generation(s) takes results of sdlab.generate(): a Generation or GeneratedImage items")
        check(isinstance(user, str) and len(user) <= MAX_USER_CHARS, f"user must be a short name, got {user!r:.60}")
        encoded = [(item, png_bytes(item)) for item in items]  # the slow part, before taking the lock
        written: list[Path] = []
        try:
            with self._write() as conn:
                ids = []
                for item, png in encoded:
                    sha = hashlib.sha256(png).hexdigest()
                    relative = f"{IMAGES}/{sha[:2]}/{sha}.png"
                    if write_atomically(self.folder / relative, png):
                        written.append(self.folder / relative)
                    ids.append(self._insert_generation(conn, item, relative, sha, user))
            return ids
        except BaseException:
            # we held the write lock since before writing them, so no committed row names these files
            for path in written:
                path.unlink(missing_ok=True)
            raise

    def _insert_generation(self, conn, item, relative: str, sha: str, user: str) -> int:
        p = item.params
        cursor = conn.execute(
            "INSERT INTO generations (image_path, image_sha256, prompt, negative_prompt, seed, num_inference_steps,"
            " guidance_scale, scheduler, width, height, model, params_json, seconds, user, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (relative, sha, p.prompt, p.negative_prompt, p.seed, p.num_inference_steps, p.guidance_scale,
             p.scheduler, p.width, p.height, p.model, json.dumps(p.to_dict()), getattr(item, "seconds", None),
             user, now()))
        return cursor.lastrowid

    def add_feedback(self, image_id: int, rating: int | str, comment: str = "", user: str = "") -> int:
        """Rate an image 1–5 (or "up"/"down") with an optional comment; returns the feedback id."""
        image_id, rating, comment, user = check_feedback(image_id, rating, comment, user)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM generations WHERE id = ?", (image_id,)).fetchone() is None:
                low, high = conn.execute("SELECT min(id), max(id) FROM generations").fetchone()
                held = f"it holds image ids {low}–{high}" if low is not None else "it holds no images yet"
                raise SdlabInputError(f"no image with id {image_id} in this feedback store ({held}); rate an id "
                                      f"that add_generation returned (the app sends it as image_id)")
            cursor = conn.execute("INSERT INTO feedback (generation_id, rating, comment, user, created_at)"
                                  " VALUES (?, ?, ?, ?, ?)", (image_id, rating, comment, user, now()))
            return cursor.lastrowid

    # ---- reading -------------------------------------------------------------------------
    _SELECT = ("SELECT g.*, avg(f.rating) AS mean_rating, count(f.id) AS ratings FROM generations g "
               "LEFT JOIN feedback f ON f.generation_id = g.id")

    def _stored(self, row) -> StoredImage:
        from .generation import GenerationParams

        return StoredImage(id=row["id"], params=GenerationParams(**json.loads(row["params_json"])),
                           path=self.folder / row["image_path"], created_at=row["created_at"], user=row["user"],
                           seconds=row["seconds"], mean_rating=row["mean_rating"], ratings=row["ratings"])

    def get(self, image_id: int) -> StoredImage:
        """One stored image by its id."""
        row = self._conn().execute(f"{self._SELECT} WHERE g.id = ? GROUP BY g.id", (image_id,)).fetchone()
        check(row is not None, f"no image with id {image_id!r} in this feedback store")
        return self._stored(row)

    def feedback(self, image_id: int | None = None) -> list[Feedback]:
        """The ratings of one image (or of all images), oldest first."""
        where, args = ("WHERE generation_id = ?", (image_id,)) if image_id is not None else ("", ())
        rows = self._conn().execute(f"SELECT * FROM feedback {where} ORDER BY id", args).fetchall()
        return [Feedback(r["id"], r["generation_id"], r["rating"], r["comment"], r["user"], r["created_at"])
                for r in rows]

    def search(self, q: str | None = None, *, min_rating: float | None = None, model: str | None = None,
               since: str | date | datetime | None = None, until: str | date | datetime | None = None,
               rated: bool | None = None, order: str = "newest", limit: int | None = 50,
               offset: int = 0) -> list[StoredImage]:
        """Stored images whose prompt has the words of `q` ("circles" finds "circle"), filtered.

        min_rating: mean rating at least this (unrated images drop out); model: exact model name;
        since/until: creation time from/before (a date, datetime or ISO text); rated: only images
        with (True) or without (False) feedback; order: "newest", "oldest" or "rating".
        """
        where, args = [], []
        if q is not None and q.strip():
            where.append("g.id IN (SELECT rowid FROM prompts WHERE prompts MATCH ?)")
            args.append(_fts_query(q))
        if model is not None:
            where.append("g.model = ?")
            args.append(model)
        if since is not None:
            where.append("g.created_at >= ?")
            args.append(as_time(since))
        if until is not None:
            where.append("g.created_at < ?")
            args.append(as_time(until))
        having = []
        if min_rating is not None:
            check(isinstance(min_rating, (int, float)) and 1 <= min_rating <= 5,
                  f"min_rating must be between 1 and 5, got {min_rating!r}")
            having.append("avg(f.rating) >= ?")
            args.append(float(min_rating))
        if rated is not None:
            having.append("count(f.id) > 0" if rated else "count(f.id) = 0")
        orders = {"newest": "g.created_at DESC, g.id DESC", "oldest": "g.created_at, g.id",
                  "rating": "mean_rating DESC NULLS LAST, g.id DESC"}
        check(order in orders, f"order must be one of {', '.join(orders)}, got {order!r}")
        check(limit is None or (isinstance(limit, int) and limit >= 0), f"limit must be ≥ 0 or None, got {limit!r}")
        sql = (self._SELECT + (" WHERE " + " AND ".join(where) if where else "") + " GROUP BY g.id"
               + (" HAVING " + " AND ".join(having) if having else "") + f" ORDER BY {orders[order]}"
               + " LIMIT ? OFFSET ?")
        rows = self._conn().execute(sql, [*args, -1 if limit is None else limit, offset]).fetchall()
        return [self._stored(row) for row in rows]

    def liked(self, min_rating: float = LIKED, **filters) -> list[StoredImage]:
        """Every image whose mean rating is at least `min_rating` (4: the 4s and 5s), oldest first."""
        return self.search(min_rating=min_rating, order="oldest", limit=None, **filters)

    def stats(self) -> dict:
        """How many images, ratings, liked images and models the store holds."""
        conn = self._conn()
        images, = conn.execute("SELECT count(*) FROM generations").fetchone()
        ratings, mean = conn.execute("SELECT count(*), avg(rating) FROM feedback").fetchone()
        liked, = conn.execute("SELECT count(*) FROM (SELECT 1 FROM feedback GROUP BY generation_id "
                              "HAVING avg(rating) >= ?)", (LIKED,)).fetchone()
        models = [r[0] for r in conn.execute("SELECT DISTINCT model FROM generations ORDER BY model")]
        return {"images": images, "ratings": ratings, "mean_rating": mean, "liked": liked, "models": models}

    # ---- export --------------------------------------------------------------------------
    def export_imagefolder(self, out_dir: str | Path, *, min_rating: float = LIKED, overwrite: bool = False,
                           **filters) -> Path:
        """The liked images as a Hugging Face `imagefolder` dataset: the PNGs + `metadata.jsonl`
        (file_name, text = the prompt, and every parameter). Load it with
        `datasets.load_dataset("imagefolder", data_dir=out_dir)`."""
        items = self.liked(min_rating, **filters)
        check(bool(items), f"no images have a mean rating of {min_rating:g} or more yet, so there is nothing to "
                           f"export; rate some images (store.add_feedback(image_id, 5)) or lower min_rating")
        out = Path(out_dir)
        check(overwrite or not out.exists() or not any(out.iterdir()),
              f"{out} is not empty; choose a new folder or pass overwrite=True")
        if overwrite and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        lines = []
        for item in items:
            name = f"{item.id:06d}.png"
            shutil.copyfile(item.path, out / name)
            lines.append(json.dumps({"file_name": name, "text": item.prompt, **item.params.to_dict(),
                                     "image_id": item.id, "mean_rating": item.mean_rating, "ratings": item.ratings}))
        tmp = out / ".metadata.jsonl.tmp"
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(out / "metadata.jsonl")  # written last: a half export has no metadata.jsonl
        return out

    # ---- consistency ---------------------------------------------------------------------
    def _files(self) -> list[Path]:
        return [p for p in (self.folder / IMAGES).rglob("*") if p.is_file()] if (self.folder / IMAGES).exists() else []

    def remove_orphan_files(self) -> list[Path]:
        """Delete image files (and temp files) that no row names: what a writer killed between
        writing its file and committing its row leaves. Runs on open; returns what it removed."""
        with self._write() as conn:  # no writer is between file and commit while we hold the lock
            named = {r[0] for r in conn.execute("SELECT image_path FROM generations")}
            orphans = [p for p in self._files() if p.relative_to(self.folder).as_posix() not in named]
            for path in orphans:
                path.unlink(missing_ok=True)
        return orphans

    def verify(self) -> dict:
        """PRAGMA integrity_check, and whether rows and files agree (for tests and the curious)."""
        conn = self._conn()
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        try:  # FTS5's own check that the search index matches the table
            conn.execute("INSERT INTO prompts(prompts, rank) VALUES ('integrity-check', 1)")
            fts = "ok"
        except sqlite3.DatabaseError as err:
            fts = str(err)
        named = {r[0] for r in conn.execute("SELECT image_path FROM generations")}
        files = {p.relative_to(self.folder).as_posix() for p in self._files()}
        return {"integrity": integrity, "fts": fts, "rows": len(named), "files": len(files),
                "missing_files": sorted(named - files), "orphan_files": sorted(files - named)}


# ---- display (notebooks) ------------------------------------------------------------------

def captioned_grid(items: list[StoredImage], cols: int = 8, cell: int = 96) -> Image.Image:
    """Stored images in a grid, each captioned with its id and mean rating (a PIL image)."""
    from PIL import ImageDraw

    from .grids import _font, image_grid

    check(bool(items), "no images to show; search with fewer filters")
    font, band = _font(12), 16
    cards = []
    for item in items:
        card = Image.new("RGB", (cell, cell + band), "white")
        card.paste(item.image.convert("RGB").resize((cell, cell), Image.NEAREST))
        rating = f"{item.mean_rating:.1f}/5" if item.mean_rating is not None else "unrated"
        ImageDraw.Draw(card).text((2, cell + 1), f"#{item.id} {rating}", fill="black", font=font)
        cards.append(card)
    return image_grid(cards, cols=min(cols, len(cards)))


def rating_widget(store: FeedbackStore, image_ids: list[int], *, user: str = "", scale: int | None = None):
    """ipywidgets: each image with 1–5 star buttons, thumbs, a comment box and Save (writes to `store`)."""
    import ipywidgets as w

    from .grids import display_scale

    cards = []
    for image_id in image_ids:
        item = store.get(image_id)
        image = item.image
        k = scale or display_scale(image, 128)
        buffer = io.BytesIO()
        image.resize((image.width * k, image.height * k), Image.NEAREST).save(buffer, format="PNG")
        stars = w.ToggleButtons(options=[("👎", 1), ("2", 2), ("3", 3), ("4", 4), ("👍 5", 5)], value=None,
                                style={"button_width": "34px"})
        comment = w.Text(placeholder="comment (optional)", layout=w.Layout(width=f"{image.width * k}px"))
        save, note = w.Button(description="Save", button_style="primary", layout=w.Layout(width="70px")), w.HTML()

        def on_save(_, image_id=image_id, stars=stars, comment=comment, note=note):
            try:
                check(stars.value is not None, "pick a rating first")
                store.add_feedback(image_id, stars.value, comment.value, user)
                note.value = f"<span style='color:#080'>saved ★{stars.value}</span>"
            except SdlabInputError as err:
                note.value = f"<b style='color:#b00'>{err}</b>"

        save.on_click(on_save)
        cards.append(w.VBox([w.HTML(f"<small>#{image_id}: {item.prompt}</small>"), w.Image(value=buffer.getvalue()),
                             stars, comment, w.HBox([save, note])]))
    return w.GridBox(cards, layout=w.Layout(grid_template_columns="repeat(auto-fill, minmax(280px, 1fr))"))


__all__ = ["FeedbackStore", "StoredImage", "Feedback", "captioned_grid", "rating_widget", "check_feedback",
           "check_rating", "png_bytes"]
