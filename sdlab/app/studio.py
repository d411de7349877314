"""The one pipeline that the web UI and the REST API share, and the PNGs they hand out.

Every request, from the UI or the API, takes its place in one line (`sdlab.app.batcher`): a worker
merges the text-to-image requests that arrive together, and can share a call, into one batched
pipeline call (a batch of 8 costs far less than 8 calls), serves the line fairly (the client
served longest ago goes next, image by image, so one student's ten requests, or one request for
many images, do not hold back another's one), keeps at most `max_queue` requests in line (the
rest are told to come back in a moment: 503 with Retry-After) and drops the work nobody waits
for. Each request is checked, and its seeds drawn, before it waits (`plan_generation`), so that
its images are the images it would get alone: the same seeds and parameters, the pixels within
the float rounding of a batch (a level or two; `sdlab.regenerate` says the same). A request may
ask for at most `max_work` image-steps at the model's own size (see `work_of`). With a feedback
store, `record()` keeps every image made, so that it can be rated.
"""
from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import gradio as gr
from PIL import Image

from ..errors import SdlabInputError, check, is_number, is_whole, warnings_of_this_thread
from ..generation import (
    MAX_IMAGES,
    MAX_WORK,
    GeneratedImage,
    Generation,
    GenerationCancelled,
    GenerationPlan,
    join_plans,
    plan_generation,
    run_plan,
    work_of,
)
from ..metadata import PARAMETERS_KEY, format_parameters
from ..pipelines import model_name
from ..seeds import MAX_SIZE, default_size
from .batcher import Batcher, BusyError, ClientGone, Job, Piece, never

SIZE_FACTOR = 8  # the largest side served, in multiples of the model's own (--max-side sets it)
MAX_BATCH = 8  # images in one pipeline call, at the model's own size (--max-batch sets it)
#: how long the first request waits for others to share its call (--batch-window-ms sets it);
#: measured with `sdlab bench --serve` (benchmarks/RESULTS.md)
BATCH_WINDOW = 0.015


@contextmanager
def as_gradio_error():
    """Show sdlab's teaching messages in the browser (as a Gradio error box)."""
    try:
        yield
    except (SdlabInputError, BusyError) as err:
        raise gr.Error(str(err), print_exception=False) from None


@dataclass
class ServedGeneration(Generation):
    """A request's images, and for each the number of images its pipeline call made in all (more
    than the request asked for: it shared the call with requests that came at the same time)."""

    call_sizes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Made:
    """What one call made for one image: the image, and the call's size and seconds."""

    item: GeneratedImage
    call: int  # the call's number
    call_size: int
    call_seconds: float


class Studio:
    """A pipeline behind a fair, bounded line that merges requests: `studio.generate(...)` is
    `sdlab.generate(pipe, ...)` served in turn, returning the result and the warnings it raised
    (e.g. a truncated prompt)."""

    def __init__(self, pipe, max_queue: int = 16, store=None, max_work: float = MAX_WORK,
                 max_side: int | None = None, max_batch: int = MAX_BATCH, batch_window: float = BATCH_WINDOW):
        check(is_whole(max_batch) and 1 <= max_batch <= MAX_IMAGES, f"max_batch must be a whole number from 1 to "
              f"{MAX_IMAGES}, got {max_batch!r}; 8 is usual, 1 makes one image per call")
        check(is_number(batch_window) and 0 <= batch_window <= 1,  # NaN fails both comparisons
              f"batch_window must be from 0 to 1 second, got {batch_window!r}; 0.015 is usual")
        self.pipe = pipe
        # requests are planned in their own threads while the worker runs the pipeline, whose tokenizer
        # must not be used by two threads at once: planning has a copy of its own, one request at a time
        self._planner = copy.deepcopy(pipe.tokenizer)
        self._planning = threading.Lock()
        self.max_side = max_side  # the largest width or height served (None: 8 × the model's own size)
        self.store = store  # a sdlab.feedback.FeedbackStore that keeps every image made (None: none is kept)
        self.model = model_name(pipe)
        self.max_work = max_work
        self.batcher = Batcher(self._call, size=max_queue, max_batch=max_batch, window=batch_window)
        self.progress = (0, 0)  # denoising steps done and to do in the running call

    def switch(self, pipe, name: str | None = None) -> None:
        """Serve `pipe` from now on: it takes over between two calls. Requests already in line are
        made by the model they were checked against."""
        planner = copy.deepcopy(pipe.tokenizer)
        with self.batcher.hold(), self._planning:
            self.pipe, self.model, self._planner = pipe, name or model_name(pipe), planner

    @property
    def max_queue(self) -> int:
        """How many requests may be in line (the running ones included)."""
        return self.batcher.size

    @max_queue.setter
    def max_queue(self, size: int) -> None:
        self.batcher.size = size

    @property
    def largest_side(self) -> int:
        """The largest width or height this server serves for its model."""
        return self.max_side or min(MAX_SIZE, SIZE_FACTOR * default_size(self.pipe))

    @property
    def in_line(self) -> int:
        """Requests running or waiting."""
        return len(self.batcher)

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

    def _size_warning(self, plan: GenerationPlan) -> list[str]:
        """Far above the model's own size, objects repeat or break: said beside the images."""
        size, height, width = default_size(self.pipe), plan.height, plan.width
        if max(height, width) <= 2 * size:
            return []
        return [f"{width}×{height} is more than twice {self.model}'s own {size}×{size}, the size it learned: "
                f"expect repeated or broken objects; {size}×{size} draws them whole"]

    def generate(self, prompt, client: str = "", gone: Callable[[], bool] = never,
                 **kwargs) -> tuple[ServedGeneration, list[str]]:
        """`sdlab.generate(pipe, prompt, **kwargs)` served in the line (its images perhaps made in calls
        shared with other requests), and the messages of its warnings. `client`: who asks, for the
        line's fairness. `gone()`: whether the client went away; then its work stops (`ClientGone`)."""
        with self._planning, warnings_of_this_thread() as caught:  # not the warnings of requests beside it
            pipe = self.pipe
            plan = plan_generation(pipe, prompt, tokenizer=self._planner, **kwargs)
        self.check_work(len(plan.seeds), plan.num_inference_steps, plan.height, plan.width)
        size = default_size(pipe)
        job = Job(client, self._key(pipe, plan), len(plan.seeds), payload=(pipe, plan), gone=gone,
                  cost=plan.height * plan.width / (size * size))
        made: list[_Made] = self.batcher.serve(job)
        batch = plan.rerun_batch_size()  # what the images record: the request's own batch, as if alone
        items = [GeneratedImage(m.item.image, m.item.params.replace(batch_size=batch, batch_pos=k if batch > 1 else 0),
                                m.item.seconds) for k, m in enumerate(made)]
        seconds = sum({m.call: m.call_seconds for m in made}.values())
        return ServedGeneration(items, seconds, [m.call_size for m in made]), self._size_warning(plan) + caught

    @staticmethod
    def _key(pipe, plan: GenerationPlan):
        """What a request's plan must share with another's to be made in the same call: text to
        image from the seeds' noise, on the same pipeline, with the same settings. Others are made
        in calls of their own (their pieces, if they are many images)."""
        if plan.image is not None or plan.latents is not None:
            return object()
        return id(pipe), plan.settings()

    def _call(self, pieces: list[Piece]) -> list[list[_Made]]:
        """One pipeline call for the pieces of a batch (the batcher's worker calls it)."""
        pipe = pieces[0].job.payload[0]
        parts = [piece.job.payload[1].part(piece.start, piece.stop) for piece in pieces]
        plan = join_plans(parts) if len(parts) > 1 else parts[0]
        steps = plan.num_inference_steps
        if plan.image is not None:  # image to image runs the last `strength` of the steps
            steps = max(1, int(steps * plan.strength))

        def step_done() -> bool:
            self.progress = (self.progress[0] + 1, steps)
            return all(piece.job.gone() for piece in pieces)

        self.progress = (0, steps)
        try:
            with warnings_of_this_thread():  # given already, to each request, when it was planned
                result = run_plan(pipe, plan, should_stop=step_done)
        except GenerationCancelled:
            raise ClientGone("the client went away during its generation") from None
        finally:
            self.progress = (0, 0)
        number = self.batcher.calls
        made = [_Made(item, number, len(result), result.seconds) for item in result]
        starts = [0, *itertools.accumulate(len(piece) for piece in pieces)]
        return [made[start:stop] for start, stop in itertools.pairwise(starts)]

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
