"""The line for the pipeline: a fair, bounded queue whose worker merges requests into batches.

A pipeline call for 8 images costs far less than 8 calls for one (on a GPU, about the time of one),
so requests that arrive together are served by one call. A worker thread takes what is waiting.
It starts a call at once when `max_batch` images wait. Otherwise it gives the others time to come:
`window` seconds with no new request (from the last one that came, or the end of the last call),
and at most `GATHER_WINDOWS` windows; and, right after a call, until the clients it answered are
back (as many new requests have come as it answered), for at most `GATHER_WINDOWS` windows too.
(Without that wait, the first client back would take the next call alone while the others are
still sending, and they the call after, again and again: two calls where one would do.)

It fills the call image by image in fair order: the next image goes to the client served longest
ago (among its requests, the one served longest ago; first come first), so one client's many
requests, or one request for many images, cannot hold back another's. Only requests that can
share a call are merged (equal `key`); a request for many images is served in pieces, interleaved
with the others'. An image of `cost` c (its pixels over the model's own) counts as c images
towards `max_batch`, so that a call of big images takes no longer than a call of `max_batch` at
the model's size; one image is always taken.

At most `size` requests are in line (running ones included); more are refused (`BusyError`).
A waiting request whose `gone()` turns true leaves the line (`ClientGone`); a running call is
stopped (by its `run`) only when every request in it is gone.
"""
from __future__ import annotations

import copy
import itertools
import math
import threading
import time
from collections.abc import Callable, Hashable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


class BusyError(RuntimeError):
    """More requests are in line than the server accepts; the client should retry later."""


class ClientGone(RuntimeError):
    """The client that asked for the work went away, so nobody waits for it."""


GATHER_WINDOWS = 4  # the longest a request waits for others to share its call, in windows


def never() -> bool:
    return False


@dataclass(eq=False)
class Job:
    """One request in line: `size` images that may share calls with the jobs of an equal `key`."""

    client: str
    key: Hashable
    size: int
    payload: Any = None  # what `run` needs to make the images (e.g. the request's generation plan)
    cost: float = 1.0  # one image's share of a call, in images at the model's own size
    gone: Callable[[], bool] = never
    number: int = -1  # place in arrival order
    arrived: float = 0.0
    served: int = -1  # when an image of it was last taken (-1: never)
    taken: int = 0  # images handed to calls
    running: bool = False
    outputs: dict[int, Any] = field(default_factory=dict)  # image index: what the call made for it
    error: BaseException | None = None
    finished: bool = False


@dataclass(frozen=True)
class Piece:
    """Images start to stop-1 of a job, made in one call."""

    job: Job
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


class Batcher:
    """Requests in line for one pipeline, served in merged calls by a worker thread.

    run(pieces) -> one list of outputs per piece (one output per image), called in the worker
    thread with pieces of jobs of one key; an exception it raises goes to each of those jobs.
    """

    def __init__(self, run: Callable[[list[Piece]], list[list]], size: int = 16, max_batch: int = 8,
                 window: float = 0.015):
        self.run, self.size, self.max_batch, self.window = run, size, max_batch, window
        self.calls = 0  # pipeline calls made, and the images they made
        self.images = 0
        self._cond = threading.Condition()
        self._jobs: list[Job] = []  # waiting or running, in arrival order
        self._served: dict[str, int] = {}  # client: when an image of its requests was last taken
        self._numbers = itertools.count()
        self._stamps = itertools.count()
        self._worker: threading.Thread | None = None
        self._calling = False
        self._holds = 0
        self._last_event = 0.0  # when the last request came or the last call ended
        self._ended = 0.0  # when the last call ended
        self._answered = 0  # requests the last call finished
        self._came = 0  # requests that came since the last call ended

    def __len__(self) -> int:
        with self._cond:
            return len(self._jobs)

    def serve(self, job: Job, poll: float = 0.1) -> list:
        """Put `job` in line and wait for its images' outputs, in order."""
        with self._cond:
            self._drop_gone()  # dead requests do not fill the line
            if len(self._jobs) >= self.size:
                raise BusyError(f"the server is busy: {self.size} requests are in line (at most {self.size}); "
                                f"try again in a few seconds")
            job.number, job.arrived = next(self._numbers), time.monotonic()
            self._last_event = job.arrived
            self._came += 1
            self._jobs.append(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="sdlab-batcher", daemon=True)
                self._worker.start()
            self._cond.notify_all()
            while not job.finished:
                if job.gone() and not job.running:
                    self._finish(job, ClientGone("the client went away while waiting in line"))
                    break
                self._cond.wait(poll)
        if job.error is not None:  # a copy: the jobs of one call raise it in their own threads
            raise copy.copy(job.error) from job.error
        return [job.outputs[k] for k in range(job.size)]

    @contextmanager
    def hold(self):
        """No call starts in the block; it begins once the running call (if any) has ended."""
        with self._cond:
            self._holds += 1
            while self._calling:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._holds -= 1
                self._cond.notify_all()

    # ---- the worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                pieces = self._next_call()
                if not pieces:  # nothing waits: the worker ends, the next request starts another
                    self._worker = None
                    return
                self._calling = True
                for piece in pieces:
                    piece.job.running = True
            try:
                outputs, error = self.run(pieces), None
            except Exception as err:  # noqa: BLE001 - it goes to the requests of this call
                outputs, error = None, err
            with self._cond:
                self._calling, self._came = False, 0
                self._ended = self._last_event = time.monotonic()
                self.calls += 1
                self.images += sum(len(piece) for piece in pieces)
                for k, piece in enumerate(pieces):
                    job = piece.job
                    job.running = False
                    if error is not None:
                        self._finish(job, error)
                        continue
                    job.outputs.update(zip(range(piece.start, piece.stop), outputs[k], strict=True))
                    if len(job.outputs) == job.size:
                        self._finish(job)
                self._answered = sum(piece.job.finished for piece in pieces)
                self._cond.notify_all()

    def _next_call(self) -> list[Piece]:
        """Wait until a call is due (see the module's doc), then take its pieces; [] when nothing waits."""
        while True:
            self._drop_gone()
            waiting = [job for job in self._jobs if job.taken < job.size]
            if not waiting:
                return []
            if self._holds:
                self._cond.wait(0.1)
                continue
            now, longest = time.monotonic(), GATHER_WINDOWS * self.window
            just_after = now < self._ended + longest
            back = just_after and 0 < self._answered <= self._came  # as many came as the last call answered
            if just_after and self._came < self._answered:
                due = self._ended + longest  # its clients are not all back yet
            else:
                oldest = max(self._ended, min(job.arrived for job in waiting))
                due = min(self._last_event + self.window, oldest + longest)
            if sum(job.size - job.taken for job in waiting) >= self.max_batch or back or now >= due:
                return self._take(waiting)
            self._cond.wait(due - now)

    def _order(self, job: Job) -> tuple[int, int, int]:
        """Fair order: the client served longest ago, then its request served longest ago, then first come."""
        return self._served.get(job.client, -1), job.served, job.number

    def _take(self, waiting: list[Job]) -> list[Piece]:
        """One call's pieces: the fairest request's next image first, then image by image, in fair
        order, the next images of the requests that can share its call."""
        key = min(waiting, key=self._order).key
        mates = [job for job in waiting if job.key == key]
        limit = max(1, min(self.max_batch, math.floor(self.max_batch / mates[0].cost)))
        starts: dict[Job, int] = {}
        for _ in range(limit):
            left = [job for job in mates if job.taken < job.size]
            if not left:
                break
            job = min(left, key=self._order)
            starts.setdefault(job, job.taken)
            job.taken += 1
            job.served = self._served[job.client] = next(self._stamps)
        return [Piece(job, start, job.taken) for job, start in starts.items()]

    def _drop_gone(self) -> None:
        for job in list(self._jobs):
            if not job.running and job.gone():
                self._finish(job, ClientGone("the client went away while waiting in line"))

    def _finish(self, job: Job, error: BaseException | None = None) -> None:
        job.error, job.finished = error, True
        if job in self._jobs:
            self._jobs.remove(job)
        self._cond.notify_all()
