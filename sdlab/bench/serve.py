"""`sdlab bench --serve`: what the class server's batching gives, measured over real HTTP.

    sdlab bench --serve                  # sdlab-tiny: 8 clients × 4 requests of one image
    sdlab bench --serve --quick          # a few seconds: 4 clients × 2 requests at 4 steps

A server on 127.0.0.1 (in this process, on a free port) gets the same requests of one image
twice: one by one, each alone in line, and from N clients at once, each client sending its next
request when its answer comes (as students clicking Generate again). The two runs alternate (one
by one, at once, at once, one by one) so that the load of a neighbour on a shared machine falls on
both. Reported: images per second, the latencies a client sees (p50, p95), the images per
pipeline call, and the ratio of the throughputs (`serve speedup`).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import numpy as np

from ..app import Server, create_app
from ..app.studio import BATCH_WINDOW, MAX_BATCH
from ..errors import SdlabInputError
from ..generation import model_defaults
from ..pipelines import load_pipeline
from ..seeds import default_size

PROMPTS = ["a small red circle on a blue background", "a big green square on a white background",
           "a yellow triangle at the top left", "a purple circle in the middle"]


@dataclass
class Run:
    """One way of sending the requests: its wall time, each request's latency, and the calls made."""

    name: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    calls: int = 0

    @property
    def images_per_second(self) -> float:
        return len(self.latencies) / self.seconds

    def latency(self, percent: float) -> float:
        return float(np.percentile(self.latencies, percent))

    def row(self) -> str:
        per_call = len(self.latencies) / self.calls if self.calls else float("nan")
        return (f"{self.name:44} {self.images_per_second:9.2f} {self.latency(50):7.3f} {self.latency(95):7.3f} "
                f"{per_call:11.1f}")


def _body(k: int, steps: int) -> dict:
    return {"prompt": PROMPTS[k % len(PROMPTS)], "seed": k, "num_inference_steps": steps}


def _send(http: httpx.Client, url: str, body: dict) -> float:
    """One request; its latency in seconds (sending, waiting in line, the call, the answer)."""
    start = time.perf_counter()
    response = http.post(url, json=body)
    response.raise_for_status()
    return time.perf_counter() - start


def _calls(http: httpx.Client, server: Server) -> int:
    return http.get(server.url + "health").json()["batching"]["calls"]


def one_by_one(server: Server, bodies: list[dict], run: Run) -> None:
    """Send `bodies` one after the other, each alone in line."""
    with httpx.Client(timeout=600) as http:
        calls = _calls(http, server)
        start = time.perf_counter()
        run.latencies += [_send(http, server.url + "text2img", body) for body in bodies]
        run.seconds += time.perf_counter() - start
        run.calls += _calls(http, server) - calls


def at_once(server: Server, bodies: list[list[dict]], run: Run) -> None:
    """Each client sends its list of bodies, the next when the answer comes; all clients at once."""
    connections = [httpx.Client(timeout=600) for _ in bodies]  # made first: they start together
    try:
        with ThreadPoolExecutor(len(bodies)) as pool:
            calls = _calls(connections[0], server)
            start = time.perf_counter()
            for latencies in pool.map(lambda http, mine: [_send(http, server.url + "text2img", body) for body in mine],
                                      connections, bodies):
                run.latencies += latencies
            run.seconds += time.perf_counter() - start
            run.calls += _calls(connections[0], server) - calls
    finally:
        for http in connections:
            http.close()


def run_serve(model: str = "sdlab-tiny", clients: int = 8, requests: int = 4, steps: int | None = None,
              max_batch: int = MAX_BATCH, batch_window: float = BATCH_WINDOW, rounds: int = 2,
              device: str = "auto", dtype: str = "auto") -> Iterator[str]:
    """Measure, yielding the report's lines as they come (the caller prints them); the last is
    `serve speedup: N.Nx`. rounds: how many times each way is timed (alternating)."""
    # 1. Check inputs, before loading anything
    for name, value, most in (("clients", clients, 64), ("requests", requests, 100), ("rounds", rounds, 10)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
            raise SdlabInputError(f"{name} must be a whole number from 1 to {most}, got {value!r}")
    # 2. The server, on a free loopback port; nothing is kept (no feedback store)
    pipe = load_pipeline(model, device=device, dtype=dtype, progress=False)
    steps = model_defaults(pipe)[0] if steps is None else steps
    app = create_app(pipe, max_queue=max(16, clients), face_restorer=None, max_batch=max_batch,
                     batch_window=batch_window)
    size = default_size(pipe)
    yield (f"model {model} · {size}×{size} · {steps} steps · {pipe.device.type} {str(pipe.unet.dtype)[6:]} · "
           f"{clients} clients × {requests} requests of one image · max batch {max_batch}, window "
           f"{batch_window * 1000:g} ms")
    with Server(app).start() as server:
        bodies = [[_body(c * requests + r, steps) for r in range(requests)] for c in range(clients)]
        flat = [body for mine in bodies for body in mine]
        # warm-up: the first call of each batch size allocates (and on a GPU, tunes) for its shapes
        one_by_one(server, flat[:1], Run("warm-up"))
        at_once(server, [mine[:1] for mine in bodies], Run("warm-up"))
        alone = Run(f"{len(flat)} requests one by one (each alone)")
        together = Run(f"{clients} clients × {requests} requests at once")
        for k in range(rounds):  # one by one, at once, at once, one by one, …
            ways = [lambda: one_by_one(server, flat, alone), lambda: at_once(server, bodies, together)]
            for way in ways if k % 2 == 0 else ways[::-1]:
                way()
    yield f"{'':44} {'images/s':>9} {'p50 s':>7} {'p95 s':>7} {'images/call':>11}"
    yield alone.row()
    yield together.row()
    yield (f"p95 latency at once: {together.latency(95) / alone.latency(95):.1f}x a lone request's "
           f"(p50: {together.latency(50) / alone.latency(50):.1f}x)")
    yield f"serve speedup: {together.images_per_second / alone.images_per_second:.1f}x"
