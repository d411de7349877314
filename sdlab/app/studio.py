"""The one pipeline that the web UI and the REST API share, and the PNGs they hand out.

A GPU runs one batch at a time, and one call at a time keeps a request's time its own. So every
request takes its turn: one
generation at a time, at most `max_queue` requests in line (the running one included), and
the rest are told to come back in a moment. Gradio's queue does the same for the UI and
shows each person their place in the line. With a feedback store, `record()` keeps every
image made, so that it can be rated (see `sdlab.app.feedback`).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import gradio as gr
from PIL import Image

from ..errors import SdlabInputError, warnings_of_this_thread
from ..generation import GeneratedImage, Generation, generate
from ..metadata import PARAMETERS_KEY, format_parameters
from ..pipelines import model_name


class BusyError(RuntimeError):
    """More requests are in line than the server accepts; the client should retry later."""


@contextmanager
def as_gradio_error():
    """Show sdlab's teaching messages in the browser (as a Gradio error box)."""
    try:
        yield
    except (SdlabInputError, BusyError) as err:
        raise gr.Error(str(err), print_exception=False) from None


class Studio:
    """A pipeline behind a bounded line: `studio.generate(...)` is `sdlab.generate(pipe, ...)`
    run in turn, returning the result and the warnings it raised (e.g. a truncated prompt)."""

    def __init__(self, pipe, max_queue: int = 16, store=None):
        self.pipe = pipe
        self.store = store  # a sdlab.feedback.FeedbackStore that keeps every image made (None: none is kept)
        self.model = model_name(pipe)
        self.max_queue = max_queue
        self.in_line = 0  # requests running or waiting
        self._counter = threading.Lock()
        self._turn = threading.Lock()

    @contextmanager
    def turn(self):
        """Wait for this request's turn with the pipeline (BusyError if the line is full)."""
        with self._counter:
            if self.in_line >= self.max_queue:
                raise BusyError(f"the server is busy: {self.in_line} requests are in line (at most "
                                f"{self.max_queue}); try again in a few seconds")
            self.in_line += 1
        try:
            with self._turn:
                yield self.pipe
        finally:
            with self._counter:
                self.in_line -= 1

    def generate(self, prompt, **kwargs) -> tuple[Generation, list[str]]:
        """`sdlab.generate(pipe, prompt, **kwargs)` in turn, and the messages of its warnings."""
        with self.turn() as pipe, warnings_of_this_thread() as caught:  # not those of requests beside it
            result = generate(pipe, prompt, **kwargs)
        return result, caught

    def record(self, result: Generation, user: str = "") -> list[int | None]:
        """Keep a result's images in the feedback store; their image ids (all None without a store)."""
        if self.store is None:
            return [None] * len(result)
        return self.store.add_generations(result, user=user)


def with_parameters(item: GeneratedImage) -> Image.Image:
    """A copy of the image that carries its parameters text; Gradio keeps it when it saves a PNG."""
    image = item.image.copy()
    image.info[PARAMETERS_KEY] = format_parameters(item.params)
    return image
