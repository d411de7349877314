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

Where things live: `records` (what is kept, and its checks), `store` (the database and files),
`display` (a captioned grid and a rating widget for notebooks).
"""
from __future__ import annotations

from .display import captioned_grid, rating_widget
from .records import (
                      LIKED,
                      MAX_COMMENT_CHARS,
                      MAX_USER_CHARS,
                      THUMBS,
                      Feedback,
                      StoredImage,
                      as_time,
                      check_feedback,
                      check_rating,
                      now,
                      write_atomically,
)
from .store import DB_NAME, IMAGES, MIGRATIONS, SCHEMA_VERSION, FeedbackStore

__all__ = ["captioned_grid", "rating_widget", "LIKED", "MAX_COMMENT_CHARS", "MAX_USER_CHARS", "THUMBS", "Feedback",
           "StoredImage", "as_time", "check_feedback", "check_rating", "now", "write_atomically",
           "DB_NAME", "IMAGES", "MIGRATIONS", "SCHEMA_VERSION", "FeedbackStore"]
