"""The one error type sdlab raises for bad input: a `ValueError` that teaches the fix."""


class SdlabInputError(ValueError):
    """Raised before any work when an argument is wrong; the message says what to change."""


def check(condition: bool, message: str) -> None:
    """Raise `SdlabInputError(message)` unless `condition` holds."""
    if not condition:
        raise SdlabInputError(message)


def suggest_multiple(value: int, multiple: int) -> str:
    """'try 496 or 504' for a value that is not a multiple of `multiple`."""
    below = max(multiple, value // multiple * multiple)
    return f"try {below} or {below + multiple}"
