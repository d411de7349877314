"""The one error type sdlab raises for bad input: a `ValueError` that teaches the fix."""
import os
from pathlib import Path


class SdlabInputError(ValueError):
    """Raised before any work when an argument is wrong; the message says what to change."""


def check(condition: bool, message: str) -> None:
    """Raise `SdlabInputError(message)` unless `condition` holds."""
    if not condition:
        raise SdlabInputError(message)


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
