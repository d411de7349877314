"""What the feedback store keeps: a stored generation, a rating, and the checks and file
writes every record goes through."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from ..errors import SdlabInputError, check, check_text

if TYPE_CHECKING:  # sdlab.generation imports torch; records are read without it
    from ..generation import GenerationParams

IMAGES = "images"  # the store's folder of image files
MAX_COMMENT_CHARS = 2000
MAX_USER_CHARS = 100
LIKED = 4  # a rating of 4 or 5 counts as "liked"
THUMBS = {"up": 5, "down": 1, "👍": 5, "👎": 1, "thumbs up": 5, "thumbs down": 1}


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
    params: GenerationParams
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
    try:
        value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00, an hour before the first time there is
        raise SdlabInputError(f"{value.isoformat()} is out of the range of dates; give a time between "
                              f"0001-01-02 and 9999-12-30") from None
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
    comment = check_text("comment", "" if comment is None else comment, MAX_COMMENT_CHARS)
    user = check_text("user", "" if user is None else user, MAX_USER_CHARS)
    return image_id, rating, comment.strip(), user.strip()


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
