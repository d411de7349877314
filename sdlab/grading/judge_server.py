"""Judges forked from one warm process: a submission's judge starts in milliseconds, not seconds.

A judge must be an interpreter that no student code has touched (`sdlab.grading.judge`); it need
not import torch, diffusers and transformers anew for every submission, which costs about 8 s of CPU
each. `JudgeServer` is a process that has imported them, and run nothing else. It listens on a Unix
socket in a private temporary folder (mode 0700, which no sandbox mounts); each request forks one
judge whose stdin, stdout and stderr are the pipes and log the grader passes with it (SCM_RIGHTS),
in the folder and with the environment the grader names. The forked judge runs the server's entry
(`sdlab.grading.judge:main`) and exits; the server itself never runs a test.

The server ends when the process that started it ends (its stdin is a pipe that process holds) or
after `IDLE` seconds without a request. `server_for(env, entry)` gives the server for an
environment, started on first use and kept for the next gradings of this process; where a server
cannot run (no fork, pidfd or SCM_RIGHTS), it gives None and judges start as fresh interpreters.
Its preload costs more than one judge, so a grading starts it only where it pays
(`sdlab.grading.batch`): for two submissions or more, or for a process's second grading.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

IDLE = 900  # seconds a server waits for a request before it ends
START = 120  # seconds it may take to import what judges use, on a busy machine
# what hidden tests use: imported once in the server, shared by every judge forked from it
PRELOAD = ("numpy", "PIL.Image", "torch", "diffusers", "transformers", "sdlab.pipelines", "sdlab.generation",
           "sdlab.seeds", "sdlab.loop", "sdlab.checks", "sdlab.grading.values")
PRELOAD_NAMES = (("diffusers", "StableDiffusionPipeline"), ("transformers", "CLIPTextModel"),
                 ("transformers", "CLIPTokenizer"))
# names whose value changes from one grading to the next but not what an import does: left out of a
# server's key (each judge still gets the environment of its own request)
VOLATILE = ("PYTEST_CURRENT_TEST",)
MOST = 3  # servers kept at once (each holds torch and diffusers, about 1 GB); the least recently used ends
_MESSAGE = 1 << 20


def _preload() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    for module, name in PRELOAD_NAMES:  # diffusers and transformers load their classes lazily
        getattr(importlib.import_module(module), name)


def _entry(name: str):
    """The function `module:function` names."""
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


def _become_judge(fds: list[int], request: dict, entry) -> None:
    """In the forked child: the grader's pipes as stdin, stdout and stderr, its folder and
    environment, then the judge's loop (`entry`). Never returns."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # a test's own subprocesses are waited for again
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, encoding="utf-8", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False, buffering=1)
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False, buffering=1)
        os.chdir(request["cwd"])
        sys.path[0] = request["cwd"]  # as `python -m` started there would have it
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # found again from this environment's TMPDIR, not the server's
        threads = int(request["env"].get("OMP_NUM_THREADS", "0") or 0)
        if threads:  # torch read the server's environment when it started
            sys.modules["torch"].set_num_threads(threads)
        entry()
        code = 0
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


def serve(path: str, entry: str) -> None:
    """The server's loop (`python -m sdlab.grading.judge_server SOCKET MODULE:FUNCTION`): preload,
    then fork a judge running that function for each request, until stdin closes or IDLE seconds
    pass without one."""
    main = _entry(entry)  # a name that does not load fails here, before the long preload
    _preload()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked judges are reaped as they end
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    try:
        _accept(listener, main)
    finally:  # the folder of the socket, and the server's own temporary files (torch's caches)
        shutil.rmtree(Path(path).parent, ignore_errors=True)


def _accept(listener: socket.socket, main) -> None:
    while True:
        ready, _, _ = select.select([listener, sys.stdin.fileno()], [], [], IDLE)
        if listener not in ready:
            break  # idle, or the process that started the server has ended (stdin at EOF)
        connection, _ = listener.accept()
        with connection:
            message, fds, _, _ = socket.recv_fds(connection, _MESSAGE, 3)
            if len(fds) != 3:
                for fd in fds:
                    os.close(fd)
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                connection.close()
                _become_judge(fds, json.loads(message), main)
            for fd in fds:
                os.close(fd)
            pidfd = os.pidfd_open(pid)
            try:  # the grader signals the judge through a pidfd: no pid reused by another process is hit
                socket.send_fds(connection, [json.dumps({"pid": pid}).encode()], [pidfd])
            finally:
                os.close(pidfd)


class ForkedJudge:
    """The grader's handle on a judge forked by a server: `stdin` and `stdout` as text pipes,
    `poll()`, `kill()` and `wait()` like a `subprocess.Popen`'s."""

    def __init__(self, pid: int, pidfd: int, stdin, stdout):
        self.pid, self.pidfd, self.stdin, self.stdout = pid, pidfd, stdin, stdout
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self.pidfd], [], [], 0)[0]:  # readable once it has ended
            self.returncode = 0
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self.pidfd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"judge {self.pid}", timeout)
            self.returncode = 0
        with contextlib.suppress(OSError):  # stdout is left to the thread reading it, which sees its end
            self.stdin.close()
        return self.returncode

    def __del__(self):
        with contextlib.suppress(OSError, AttributeError):
            os.close(self.pidfd)


class JudgeServer:
    """A started server: `fork(cwd, env, log)` gives a `ForkedJudge`. With an `address`, the
    handle of a server another process of this grading started (`attach`)."""

    def __init__(self, env: dict, entry: str, address: str | None = None):
        self.process = None
        if address is not None:
            self.folder, self.address = str(Path(address).parent), address
            return
        self.folder = tempfile.mkdtemp(prefix="sdlab-judges-")  # mode 0700: only this user connects
        self.address = str(Path(self.folder) / "socket")
        # its own temporary files go in its folder, and with it (judges get the grader's TMPDIR back)
        argv = [sys.executable, "-m", "sdlab.grading.judge_server", self.address, entry]
        self.process = subprocess.Popen(argv, env={**env, "TMPDIR": self.folder}, cwd=self.folder, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        ready = select.select([self.process.stdout], [], [], START)[0]
        if not ready or self.process.stdout.readline().strip() != "ready":
            self.close()
            raise OSError("the judge server did not start")

    def fork(self, cwd: Path | str, env: dict, log) -> ForkedJudge:
        to_judge, from_grader = os.pipe()
        from_judge, to_grader = os.pipe()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as connection:
                connection.settimeout(START)
                connection.connect(self.address)
                request = json.dumps({"cwd": str(cwd), "env": env}).encode()
                socket.send_fds(connection, [request], [to_judge, to_grader, log.fileno()])
                message, fds, _, _ = socket.recv_fds(connection, _MESSAGE, 1)
            if len(fds) != 1:
                raise OSError("the judge server did not fork a judge")
        except BaseException:
            for fd in (from_grader, from_judge):
                os.close(fd)
            raise
        finally:
            for fd in (to_judge, to_grader):
                os.close(fd)
        stdin = open(from_grader, "w", encoding="utf-8", buffering=1)
        stdout = open(from_judge, encoding="utf-8")
        return ForkedJudge(json.loads(message)["pid"], fds[0], stdin, stdout)

    def running(self) -> bool:
        return self.process is None or self.process.poll() is None

    def close(self) -> None:
        if self.process is None:
            return  # another process's server: that process closes it
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # the server's loop sees EOF and ends
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        shutil.rmtree(self.folder, ignore_errors=True)


_servers: dict[tuple, JudgeServer | None] = {}
_lock = threading.Lock()


def _key(env: dict, entry: str) -> tuple:
    return (entry, *sorted((k, v) for k, v in env.items() if k not in VOLATILE))


def server_for(env: dict, entry: str, start: bool = True) -> JudgeServer | None:
    """The server whose judges get `env` and run `entry` ("module:function"), started on first use
    (with `start`, else only one already running); None where none can run."""
    if not all(hasattr(m, n) for m, n in ((os, "fork"), (os, "pidfd_open"), (socket, "send_fds"),
                                          (socket, "AF_UNIX"))):
        return None
    key = _key(env, entry)
    with _lock:
        server = _servers.pop(key, False)
        if server is not False and (server is None or server.running()):
            _servers[key] = server  # the most recently used last
            return server
        if not start:
            return None
        while len(_servers) >= MOST:
            oldest = _servers.pop(next(iter(_servers)))
            if oldest is not None:
                oldest.close()
        try:
            server = JudgeServer(env, entry)
        except OSError:
            server = None  # judges start as fresh interpreters instead
        _servers[key] = server
        return server


def attach(env: dict, entry: str, address: str) -> None:
    """Use the server at `address` for judges with `env` and `entry` (a grading's worker processes
    share the server of the process that started them)."""
    with _lock:
        _servers[_key(env, entry)] = JudgeServer(env, entry, address)


@atexit.register
def close_servers() -> None:
    """End every server this process started (they also end with it)."""
    for server in _servers.values():
        if server is not None:
            server.close()
    _servers.clear()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
