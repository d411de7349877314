"""The one error type sdlab raises for bad input, a `ValueError` that teaches the fix, and the
warnings it gives of a call's input or result."""
import numbers
import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path


class SdlabInputError(ValueError):
    """Raised before any work when an argument is wrong; the message says what to change."""


class SdlabWarning(UserWarning):
    """What sdlab warns of in one call (a prompt cut short, no face found): shown each time it
    happens, where Python shows other warnings once per line of code."""


def _always_show_sdlab_warnings() -> None:
    if not any(category is SdlabWarning for _, _, category, _, _ in warnings.filters):
        warnings.filterwarnings("always", category=SdlabWarning, append=True)  # after the user's own filters


_always_show_sdlab_warnings()
_this_thread = threading.local()
_installing = threading.Lock()


def _show_or_keep(message, category, filename, lineno, file=None, line=None):
    kept = getattr(_this_thread, "kept", None)
    if kept is None:
        _show_or_keep.shown_by(message, category, filename, lineno, file, line)
    else:
        kept.append(str(message))


@contextmanager
def warnings_of_this_thread():
    """The messages of the warnings this thread gives in the block, kept instead of shown.

    `warnings.catch_warnings` swaps what the whole process does with warnings, so in a server
    one request's block would also keep the warnings of requests running beside it."""
    with _installing:  # again if a `catch_warnings` block around the import took them away
        _always_show_sdlab_warnings()
        if warnings.showwarning is not _show_or_keep:
            _show_or_keep.shown_by = warnings.showwarning
            warnings.showwarning = _show_or_keep
    outer = getattr(_this_thread, "kept", None)
    _this_thread.kept = kept = []
    try:
        yield kept
    finally:
        _this_thread.kept = outer


def is_number(value) -> bool:
    """A real number (numpy's too) but not a bool: True would quietly count as 1."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_whole(value) -> bool:
    """An int but not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check(condition: bool, message: str) -> None:
    """Raise `SdlabInputError(message)` unless `condition` holds."""
    if not condition:
        raise SdlabInputError(message)


def check_text(name: str, value, max_chars: int) -> str:
    """Text a person typed (a prompt, a comment, a name): a string of at most `max_chars` characters
    of valid Unicode. A lone surrogate ("\\ud800", which JSON can carry) cannot be written to a PNG,
    a database or a page, so it is refused here, before any work."""
    check(isinstance(value, str), f"{name} must be text, got {type(value).__name__}")
    check(len(value) <= max_chars, f"{name} is {len(value)} characters; the limit is {max_chars}: say it in "
                                   f"fewer words")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise SdlabInputError(f"{name} is not valid Unicode: character {err.start} is a lone surrogate "
                              f"({value[err.start]!r}); send the text as UTF-8") from None
    return value


def writable_folder(path, name: str = "--out"):
    """`path` as a folder, made if missing, checked before any work is written there; the error
    names the option (`name`) to change."""
    folder = Path(path)
    check(not folder.exists() or folder.is_dir(), f"{name} {folder} is a file, not a folder: choose another {name}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SdlabInputError(f"cannot make the folder {folder} ({err.strerror or err}): "
                              f"choose another {name}") from None
    check(os.access(folder, os.W_OK), f"cannot write to {folder}: choose another {name}")
    return folder


def suggest_multiple(value: int, multiple: int) -> str:
    """'try 496 or 504' for a value that is not a multiple of `multiple`."""
    below = max(multiple, value // multiple * multiple)
    return f"try {below} or {below + multiple}"
