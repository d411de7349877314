"""Running the app: `serve()` from a terminal, `launch()` from a notebook; both on 127.0.0.1.

The app is an ordinary ASGI app (FastAPI with the Gradio UI mounted on it) that uvicorn
serves from a background thread; `Server` is the handle: its URLs and `close()`. A public
link is opt-in (`share=True`) and goes through Gradio's share servers, as
`gr.Blocks.launch(share=True)` does.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn
from gradio import networking, tunneling

from ..errors import SdlabInputError
from ..pipelines import load_pipeline
from ..presets import default_model
from .factory import create_app
from .feedback import FINETUNE_LIMITS, FinetuneLimits
from .studio import BATCH_WINDOW, MAX_BATCH, MAX_WORK

LOOPBACK = ("127.0.0.1", "localhost", "::1")

SHARE_WARNING = """\
WARNING: share=True opens a PUBLIC link to this app through Gradio's share servers (*.gradio.live).
Anyone who has the link, with no password, can until you stop the server (links expire after ~1 week):
  - use the whole UI and every REST endpoint (/text2img, /img2img, /inpainting, /docs, …),
  - run generations on this machine's CPU/GPU and upload images to it,
  - see the images they make and the model's name and settings,
  - with a feedback store (`sdlab serve` keeps one): see every stored image (/gallery), rate them, and
    start fine-tunes (/finetune) on this machine.
Share the link only with your class, and stop the server (Ctrl-C, or server.close()) when you are done."""


class Server:
    """A running app: `url` (the UI), `docs_url` (the REST API's docs), `share_url`, `close()`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.app, self.host, self.port = app, host, port
        self.share_url: str | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tunnels: list = []

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}/"

    @property
    def docs_url(self) -> str:
        return self.url + "docs"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 60.0) -> "Server":
        """Listen on host:port (port 0: a free port) and serve from a background thread."""
        sock = _listening_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(sock),),
                                        name=f"sdlab-app-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the app did not start on {self.url} (see the log above)")
            time.sleep(0.02)
        return self

    async def _serve(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        await self._uvicorn.serve(sockets=[sock])

    def open_share_link(self) -> str | None:
        """Open a public *.gradio.live link to this server (needs the internet); None if it fails."""
        if self.share_url:
            return self.share_url
        print(SHARE_WARNING, file=sys.stderr)
        before = list(tunneling.CURRENT_TUNNELS)
        try:
            self.share_url = networking.setup_tunnel(self.host, self.port, secrets.token_urlsafe(32), None, None)
        except Exception as err:  # no internet, blocked, the share server is down …
            print(f"could not open a share link ({err}); the app stays local at {self.url}", file=sys.stderr)
        self._tunnels = [t for t in tunneling.CURRENT_TUNNELS if t not in before]
        return self.share_url

    def close(self) -> None:
        """Stop serving (and close the share link); the port is free again when this returns."""
        for tunnel in self._tunnels:
            tunnel.kill()
        self._tunnels, self.share_url = [], None
        # Gradio's streams (the browser's heartbeat) stay open until its stop event is set
        streams = getattr(getattr(self.app.state, "gradio_app", None), "stop_event", None)
        if streams is not None and self._loop is not None and self.running:
            self._loop.call_soon_threadsafe(streams.set)
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if streams is not None and not self.running:
            streams.clear()  # the same app may be served again

    def wait(self) -> None:
        """Block until Ctrl-C (or until the server stops), then close."""
        try:
            while self.running:
                time.sleep(0.2)
        except KeyboardInterrupt:
            print("stopping …", file=sys.stderr)
        finally:
            self.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "closed"
        share = f", public link {self.share_url}" if self.share_url else ""
        return f"<sdlab app {state} at {self.url} (REST docs: {self.docs_url}{share})>"


def _check_port(port) -> None:
    if not (isinstance(port, int) and 0 <= port <= 65535):
        raise SdlabInputError(f"port must be a whole number from 0 to 65535, got {port!r}; 7860 is the usual "
                              f"one, 0 picks any free one")


def _listening_socket(host: str, port: int) -> socket.socket:
    _check_port(port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio then turns Nagle's algorithm off on each connection
    # (TCP_NODELAY); with proto 0 every response would wait ~40 ms for a delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise SdlabInputError(f"cannot listen on {host}:{port} ({err.strerror}); another server may be using "
                              f"the port: pick another (--port {port + 1 if port else 7861}) or port 0 for any "
                              f"free one") from None
    return sock


TOKEN_VARIABLE = "SDLAB_OPERATOR_TOKEN"


def operator_token(host: str, share: bool, token: str | None = None) -> str | None:
    """The token that fine-tuning needs: `token`, else $SDLAB_OPERATOR_TOKEN, else a new random one;
    None (no token needed) when the server is reachable from this machine only."""
    token = token or os.environ.get(TOKEN_VARIABLE) or None
    if token is None and (share or host not in LOOPBACK):
        token = secrets.token_urlsafe(18)
    return token


def _network_warning(host: str) -> None:
    if host not in LOOPBACK:
        print(f"WARNING: listening on {host}, not 127.0.0.1: every machine that can reach this one on the "
              f"network can use the app and its REST API, with no password.", file=sys.stderr)


def _pipeline(model):
    """A loaded pipeline: `model` itself, or the preset/folder/hub id it names (None: the default)."""
    if model is not None and not isinstance(model, str):
        return model
    return load_pipeline(model or default_model())


def launch(pipe=None, *, host: str = "127.0.0.1", port: int = 0, share: bool = False, inline: bool | None = None,
           height: int = 760, max_queue: int = 16, face_restorer="auto", feedback_dir: str | Path | None = None,
           models_dir: str | Path | None = None, max_work: float = MAX_WORK, max_side: int | None = None,
           finetune_limits: FinetuneLimits = FINETUNE_LIMITS, token: str | None = None, max_batch: int = MAX_BATCH,
           batch_window: float = BATCH_WINDOW) -> Server:
    """Start the app in the background and show it in the notebook; `server.close()` stops it.

    pipe: a loaded pipeline or a model name (None: `sdlab.presets.default_model()`).
    port: 0 picks a free port. inline: show the UI in the output cell (default: in a notebook).
    feedback_dir: where to keep every image made, for ratings and fine-tuning (None: nowhere; a
    notebook passes a folder of its own, e.g. "feedback").
    max_queue, face_restorer, models_dir, max_work, max_side, finetune_limits, max_batch, batch_window:
    as for `create_app`.
    token: the operator token /finetune needs when the server is reachable from other machines (a
    host other than 127.0.0.1, or share): given, $SDLAB_OPERATOR_TOKEN, or a new one (printed).
    """
    _check_port(port)  # before loading a model
    _network_warning(host)
    token = operator_token(host, share, token)
    app = create_app(_pipeline(pipe), max_queue=max_queue, face_restorer=face_restorer, feedback_dir=feedback_dir,
                     models_dir=models_dir, max_work=max_work, max_side=max_side, finetune_limits=finetune_limits,
                     operator_token=token, max_batch=max_batch, batch_window=batch_window)
    server = Server(app, host, port).start()
    _print_token(token)
    if share:
        server.open_share_link()
    if inline is None:
        inline = _in_notebook()
    if inline:
        show_inline(server, height)
    return server


def serve(model=None, host: str = "127.0.0.1", port: int = 7860, share: bool = False, max_queue: int = 16,
          face_restorer="auto", feedback_dir: str | Path | None = "feedback",
          models_dir: str | Path | None = None, max_work: float = MAX_WORK, max_side: int | None = None,
          finetune_limits: FinetuneLimits = FINETUNE_LIMITS, token: str | None = None, max_batch: int = MAX_BATCH,
          batch_window: float = BATCH_WINDOW) -> None:
    """Serve the app until Ctrl-C (what `sdlab serve` runs): the UI at /, the REST API's docs at /docs.

    model: a loaded pipeline, or a preset, fine-tuned version's name, folder or hub id to load (None:
    the default model).
    feedback_dir: the feedback store, kept from one run to the next: ./feedback (where `sdlab
    finetune` looks), its fine-tuned versions in ./feedback/models (or the first folder $SDLAB_MODELS
    lists: `sdlab.presets`). None: no store.
    max_work, max_side, finetune_limits, token, max_batch, batch_window: as for `launch`.
    """
    _check_port(port)  # before loading a model
    _network_warning(host)
    token = operator_token(host, share, token)
    app = create_app(_pipeline(model), max_queue=max_queue, face_restorer=face_restorer, feedback_dir=feedback_dir,
                     models_dir=models_dir, max_work=max_work, max_side=max_side, finetune_limits=finetune_limits,
                     operator_token=token, max_batch=max_batch, batch_window=batch_window)
    server = Server(app, host, port).start()
    _print_token(token)
    print(f"sdlab app: {server.url}  (REST API docs: {server.docs_url}); Ctrl-C stops it", file=sys.stderr)
    if feedback_dir is not None:
        print(f"every image is kept, to be rated and searched, in {Path(feedback_dir).resolve()}", file=sys.stderr)
    if share and server.open_share_link():
        print(f"public link: {server.share_url}", file=sys.stderr)
    server.wait()


def _print_token(token: str | None) -> None:
    if token is not None:
        print(f"operator token (POST and DELETE /finetune need the header 'Authorization: Bearer <token>'): "
              f"{token}", file=sys.stderr)


# ---- showing it in a notebook -------------------------------------------------------------

def _in_notebook() -> bool:
    try:
        from IPython import get_ipython  # notebooks only: IPython may be missing
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ != "TerminalInteractiveShell"


def show_inline(server: Server, height: int = 760) -> None:
    """Show the running UI in the output cell (Colab reaches it through its port proxy)."""
    if "google.colab" in sys.modules and not server.share_url:
        from google.colab import output  # type: ignore[import-not-found]  # Colab only

        output.serve_kernel_port_as_iframe(server.port, height=height)
        return
    from IPython.display import IFrame, display  # notebooks only (IPython)

    display(IFrame(server.share_url or server.url, width="100%", height=height))
