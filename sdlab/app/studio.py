"""The one pipeline that the web UI and the REST API share, and the PNGs they hand out.

A GPU runs one batch at a time, and one call at a time keeps a request's time its own. So every
request takes its turn in a `Line`: one generation at a time, at most `max_queue` requests in
line (the running one included), and the rest are told to come back in a moment (503 with
Retry-After). The line is fair: when the pipeline is free, the client served longest ago goes
next, so one student's ten requests do not hold back another's one. Work nobody waits for is
dropped: a request whose client went away leaves the line, or stops between two denoising steps.
A request may ask for at most `max_work` image-steps at the model's own size (see `work_of`).
With a feedback store, `record()` keeps every image made, so that it can be rated.
"""
from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import gradio as gr
from PIL import Image

from ..errors import SdlabInputError, check, warnings_of_this_thread
from ..generation import (
    MAX_WORK,
    GeneratedImage,
    Generation,
    GenerationCancelled,
    generate,
    model_defaults,
    work_of,
)
from ..metadata import PARAMETERS_KEY, format_parameters
from ..pipelines import model_name
from ..seeds import MAX_SIZE, SIZE_MULTIPLE, default_size

SIZE_FACTOR = 8  # the largest side served, in multiples of the model's own (--max-side sets it)


class BusyError(RuntimeError):
    """More requests are in line than the server accepts; the client should retry later."""


class ClientGone(RuntimeError):
    """The client that asked for the work went away, so nobody waits for it."""


@contextmanager
def as_gradio_error():
    """Show sdlab's teaching messages in the browser (as a Gradio error box)."""
    try:
        yield
    except (SdlabInputError, BusyError) as err:
        raise gr.Error(str(err), print_exception=False) from None


def never() -> bool:
    return False


@dataclass(eq=False)
class _Ticket:
    client: str
    number: int
    gone: Callable[[], bool]


class Line:
    """One turn at a time, at most `size` requests in line (the running one included); the next
    turn goes to the waiting client that was served longest ago (first come among its requests);
    a waiting request whose `gone()` turns true leaves the line (`ClientGone`)."""

    def __init__(self, size: int):
        self.size = size
        self._cond = threading.Condition()
        self._waiting: list[_Ticket] = []
        self._running: _Ticket | None = None
        self._served: dict[str, int] = {}  # client: when its last turn began
        self._numbers = itertools.count()

    def __len__(self) -> int:
        with self._cond:
            return len(self._waiting) + (self._running is not None)

    def _next(self) -> _Ticket | None:
        alive = [t for t in self._waiting if not t.gone()]
        return min(alive, key=lambda t: (self._served.get(t.client, -1), t.number)) if alive else None

    @contextmanager
    def turn(self, client: str = "", gone: Callable[[], bool] = never, poll: float = 0.2):
        with self._cond:
            self._waiting = [t for t in self._waiting if not t.gone()]  # dead requests do not fill the line
            if len(self._waiting) + (self._running is not None) >= self.size:
                raise BusyError(f"the server is busy: {self.size} requests are in line (at most {self.size}); "
                                f"try again in a few seconds")
            ticket = _Ticket(client, next(self._numbers), gone)
            self._waiting.append(ticket)
            while self._running is not None or self._next() is not ticket:
                if gone():
                    if ticket in self._waiting:  # another request may have cleared it away already
                        self._waiting.remove(ticket)
                    self._cond.notify_all()
                    raise ClientGone("the client went away while waiting in line")
                self._cond.wait(poll)
            self._waiting.remove(ticket)
            self._running = ticket
            self._served[client] = ticket.number
        try:
            yield
        finally:
            with self._cond:
                self._running = None
                self._cond.notify_all()


class Studio:
    """A pipeline behind a fair, bounded line: `studio.generate(...)` is `sdlab.generate(pipe, ...)`
    run in turn, returning the result and the warnings it raised (e.g. a truncated prompt)."""

    def __init__(self, pipe, max_queue: int = 16, store=None, max_work: float = MAX_WORK,
                 max_side: int | None = None):
        self.pipe = pipe
        self.max_side = max_side  # the largest width or height served (None: 8 × the model's own size)
        self.store = store  # a sdlab.feedback.FeedbackStore that keeps every image made (None: none is kept)
        self.model = model_name(pipe)
        self.max_work = max_work
        self.line = Line(max_queue)
        self.progress = (0, 0)  # denoising steps done and to do in the running generation

    def switch(self, pipe, name: str | None = None) -> None:
        """Serve `pipe` from now on: it takes over between two generations (its turn in line)."""
        with self.line.turn("operator"):
            self.pipe, self.model = pipe, name or model_name(pipe)

    @property
    def max_queue(self) -> int:
        """How many requests may be in line (the running one included)."""
        return self.line.size

    @max_queue.setter
    def max_queue(self, size: int) -> None:
        self.line.size = size

    @property
    def largest_side(self) -> int:
        """The largest width or height this server serves for its model."""
        return self.max_side or min(MAX_SIZE, SIZE_FACTOR * default_size(self.pipe))

    @property
    def in_line(self) -> int:
        """Requests running or waiting."""
        return len(self.line)

    def _job(self, prompt, kwargs: dict) -> tuple[int, int, int, int]:
        """A request's images, steps, height and width as generate() will take them (an image to
        redraw gives its size when none is asked for); values generate() refuses count as defaults."""
        size, image = default_size(self.pipe), kwargs.get("image")
        count = kwargs.get("num_images_per_prompt", 1)
        images = (len(prompt) if isinstance(prompt, list) else 1) * (count if isinstance(count, int) else 1)
        steps = kwargs.get("num_inference_steps")
        steps = steps if isinstance(steps, int) else model_defaults(self.pipe)[0]
        sides = []
        for name in ("height", "width"):
            value = kwargs.get(name)
            if value is None and image is not None and hasattr(image, name):
                value = getattr(image, name) // SIZE_MULTIPLE * SIZE_MULTIPLE
            sides.append(value if isinstance(value, int) and value > 0 else size)
        return images, steps, *sides

    def check_work(self, images: int, steps: int, height: int, width: int) -> None:
        """Refuse, before it waits in line, a side above `largest_side` or more than `max_work` image-steps."""
        size, largest = default_size(self.pipe), self.largest_side
        for name, value in (("width", width), ("height", height)):  # above MAX_SIZE: generate() says so
            check(value <= largest or value > MAX_SIZE,
                  f"{name} is {value}; this server serves sides up to {largest} for {self.model} (its own size is "
                  f"{size}×{size}): ask for a smaller size")
        work = work_of(self.pipe, images, steps, height, width)
        check(work <= self.max_work,
              f"{images} image(s) × {steps} steps at {width}×{height} is {work:g} image-steps at "
              f"the model's own {size}×{size}; this server allows {self.max_work:g} per request: ask for fewer "
              f"images or steps, or a smaller size")

    def _size_warning(self, height: int, width: int) -> list[str]:
        """Far above the model's own size, objects repeat or break: said beside the images."""
        size = default_size(self.pipe)
        if max(height, width) <= 2 * size:
            return []
        return [f"{width}×{height} is more than twice {self.model}'s own {size}×{size}, the size it learned: "
                f"expect repeated or broken objects; {size}×{size} draws them whole"]

    def generate(self, prompt, client: str = "", gone: Callable[[], bool] = never,
                 **kwargs) -> tuple[Generation, list[str]]:
        """`sdlab.generate(pipe, prompt, **kwargs)` in turn, and the messages of its warnings.
        `gone()`: whether the client went away; then its work stops (`ClientGone`)."""
        images, steps, height, width = self._job(prompt, kwargs)
        self.check_work(images, steps, height, width)
        big = self._size_warning(height, width)
        if kwargs.get("image") is not None:  # image to image runs the last `strength` of the steps
            steps = max(1, int(steps * kwargs.get("strength", 0.8)))

        def step_done() -> bool:
            self.progress = (self.progress[0] + 1, steps)
            return gone()

        with self.line.turn(client, gone), warnings_of_this_thread() as caught:  # not those of requests beside it
            self.progress = (0, steps)
            try:
                result = generate(self.pipe, prompt, should_stop=step_done, **kwargs)
            except GenerationCancelled:
                raise ClientGone("the client went away during its generation") from None
            finally:
                self.progress = (0, 0)
        return result, big + caught

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
