"""The feedback store: generations, their image files and their ratings in one folder, an SQLite
database (WAL, one transaction per write, schema versions migrated on open) beside the images."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import threading
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

from ..errors import SdlabInputError, check, is_whole
from .records import (
    IMAGES,
    LIKED,
    MAX_COMMENT_CHARS,
    MAX_USER_CHARS,
    Feedback,
    StoredImage,
    as_time,
    check_feedback,
    now,
    write_atomically,
)

DB_NAME = "feedback.sqlite3"

# Schema versions, in order: MIGRATIONS[k] turns a version-k database into version k + 1.
MIGRATIONS = [[
    """CREATE TABLE generations (
        id INTEGER PRIMARY KEY,
        image_path TEXT NOT NULL,             -- relative to the store's folder: images/ab/<sha256>.png
        image_sha256 TEXT NOT NULL,
        prompt TEXT NOT NULL,
        negative_prompt TEXT NOT NULL DEFAULT '',
        seed INTEGER,                         -- NULL for seeds past SQLite's 2**63 - 1: params_json has them
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


SQLITE_INT_MAX = 2**63 - 1  # SQLite's integers are 64-bit, signed


def _fits(value) -> bool:
    """Whether `value` is a whole number ≥ 0 that SQLite can hold (an id, a seed, a count)."""
    return is_whole(value) and 0 <= value <= SQLITE_INT_MAX


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
        check(not self.folder.exists() or self.folder.is_dir(),
              f"{self.folder} is a file; a feedback store is a folder (made if missing): give another path")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db_path = self.folder / DB_NAME
        self.timeout = timeout
        self._local = threading.local()  # one connection per thread (and per process)
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            conn = self._conn()
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once per database file
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError):  # locked, read-only…: says what it is
                raise
            self.close()
            raise SdlabInputError(f"{self.db_path} is not a feedback store ({err}); it is left as it is: move it "
                                  f"away to start a new store there, or give another folder") from None
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
        from ..metadata import png_bytes  # needs torch; opening and reading a store does not

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
            (relative, sha, p.prompt, p.negative_prompt, p.seed if _fits(p.seed) else None, p.num_inference_steps,
             p.guidance_scale,
             p.scheduler, p.width, p.height, p.model, json.dumps(p.to_dict()), getattr(item, "seconds", None),
             user, now()))
        return cursor.lastrowid

    def add_feedback(self, image_id: int, rating: int | str, comment: str = "", user: str = "") -> int:
        """Rate an image 1–5 (or "up"/"down") with an optional comment; returns the feedback id."""
        image_id, rating, comment, user = check_feedback(image_id, rating, comment, user)
        with self._write() as conn:
            if not _fits(image_id) or conn.execute("SELECT 1 FROM generations WHERE id = ?",
                                                   (image_id,)).fetchone() is None:
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
        from ..generation import GenerationParams  # heavy: sdlab.generation loads torch and diffusers

        return StoredImage(id=row["id"], params=GenerationParams(**json.loads(row["params_json"])),
                           path=self.folder / row["image_path"], created_at=row["created_at"], user=row["user"],
                           seconds=row["seconds"], mean_rating=row["mean_rating"], ratings=row["ratings"])

    def get(self, image_id: int) -> StoredImage:
        """One stored image by its id."""
        row = self._conn().execute(f"{self._SELECT} WHERE g.id = ? GROUP BY g.id",
                                   (image_id,)).fetchone() if _fits(image_id) else None
        check(row is not None, f"no image with id {image_id!r} in this feedback store")
        return self._stored(row)

    def feedback(self, image_id: int | None = None) -> list[Feedback]:
        """The ratings of one image (or of all images), oldest first."""
        if image_id is not None and not _fits(image_id):
            return []
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
        check(limit is None or _fits(limit), f"limit must be a whole number ≥ 0, or None, got {limit!r}")
        check(_fits(offset), f"offset must be a whole number from 0 to {SQLITE_INT_MAX}, got {offset!r}")
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
