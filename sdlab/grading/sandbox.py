"""The sandbox a submission's kernel runs in (Linux): bubblewrap, resource limits, one process group.

With bubblewrap (`bwrap`, Debian's `bubblewrap`), a student's kernel runs in its own namespaces:

- no network (a network namespace of its own: only its loopback, so a server the notebook starts
  for itself still answers it), no view of other processes (a pid namespace: the grader's command
  line, and so where the solutions are, cannot be read), and no way out of the process tree (when
  the kernel's namespace ends, every process in it ends);
- a file system of its own: the system (`/usr` and a few files of `/etc`) and Python with its
  packages read-only, the models' caches read-only, and one writable folder, the submission's
  temporary course copy; the solutions, the hidden tests, the report and other students' copies
  are not there at all;
- limits per process on memory (RLIMIT_DATA: what it allocates; not its address space, which a browser
  such as headless Chromium reserves by the terabyte), file size and CPU time, and on the number of
  processes (`Limits`). The process limit is the kernel's RLIMIT_NPROC, which Linux does not apply
  to root: a grader run as root bounds processes with a cgroup (`Cgroup`) where it may make one.

The kernel is reached over Unix sockets inside the writable folder (ZeroMQ's ipc transport).
Without bubblewrap, grading still works with the limits and the process group, and a warning
says what is not protected; `sandbox="require"` refuses to grade instead.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import signal
import site
import subprocess
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import SdlabInputError

MODES = ("auto", "require", "off")
GiB = 2**30
TMPFS = 256 * 2**20  # the sandbox's own /tmp (TMPDIR is in the copy, which the file-size limit bounds)
# /etc is read-only in the sandbox, and only these: what Python, fonts and the dynamic linker read, and
# chromium.d, the flags Debian's Chromium launcher (/usr/bin/chromium, a shell script) sources from every
# file there: where the folder is missing, its `. /etc/chromium.d/*` stops the script before Chromium
# starts, and a notebook's headless browser (notebook 07's screenshots) fails with "Chrome instance exited"
ETC = ("alternatives", "chromium.d", "fonts", "group", "hosts", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
       "localtime", "mime.types", "nsswitch.conf", "passwd", "ssl/certs")
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# set inside the sandbox, before the kernel starts: the limits, then the kernel itself
LIMITS = ("import os, resource as r, sys\n"
          "for name, value in zip(('DATA', 'NPROC', 'FSIZE', 'CPU'), sys.argv[1:5]):\n"
          "    limit = getattr(r, 'RLIMIT_' + name)\n"
          "    value = min(int(value), r.getrlimit(limit)[1]) if r.getrlimit(limit)[1] != r.RLIM_INFINITY "
          "else int(value)\n"
          "    r.setrlimit(limit, (value, value))\n"
          "os.execv(sys.argv[5], sys.argv[5:])\n")
JOIN = 'echo $$ > "$0" && exec "$@"'  # a shell that puts itself in a cgroup, then becomes the kernel


@dataclass(frozen=True)
class Limits:
    """What one submission's processes may use. `memory` and `file_size` are per process (bytes),
    `processes` for the whole submission, `cpu_seconds` per process (None: from the timeout)."""

    memory: int = 8 * GiB
    processes: int = 1024  # tasks: threads count too (torch, a web server and a browser use hundreds)
    file_size: int = 2 * GiB
    cpu_seconds: int | None = None

    def checked(self) -> Limits:
        for name in ("memory", "processes", "file_size", "cpu_seconds"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise SdlabInputError(f"sandbox limit {name} must be a whole number of at least 1, got {value!r}")
        return self


@functools.cache
def bubblewrap() -> tuple[str | None, str]:
    """(bwrap's path, "") where bubblewrap can make a sandbox here, else (None, why not)."""
    if not sys.platform.startswith("linux"):
        return None, "bubblewrap sandboxes only on Linux"
    path = shutil.which("bwrap")
    if path is None:
        return None, "bubblewrap is not installed (Debian/Ubuntu: apt install bubblewrap)"
    probe = subprocess.run([path, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc",
                            "--dev", "/dev", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return None, (f"bubblewrap cannot make a sandbox here ({probe.stderr.strip()}): unprivileged user "
                      "namespaces may be off (sysctl kernel.unprivileged_userns_clone=1)")
    return path, ""


def _cgroup_root() -> Path | None:
    """A writable cgroup hierarchy with the pids controller (v2, else v1), or None."""
    unified = Path("/sys/fs/cgroup")
    if "pids" in (unified / "cgroup.controllers").read_text().split() if (unified / "cgroup.controllers").exists() \
            else False:
        return unified if os.access(unified, os.W_OK) else None
    v1 = unified / "pids"
    return v1 if (v1 / "cgroup.procs").exists() and os.access(v1, os.W_OK) else None


class Cgroup:
    """A cgroup that bounds and ends one submission's processes, where this grader may make one (as
    root, or with a delegated cgroup); `Cgroup.make` answers None elsewhere."""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def make(cls, processes: int) -> Cgroup | None:
        root = _cgroup_root()
        if root is None:
            return None
        path = root / f"sdlab-grade-{uuid.uuid4().hex[:12]}"
        try:
            path.mkdir()
            (path / "pids.max").write_text(str(processes))
        except OSError:
            shutil.rmtree(path, ignore_errors=True)
            return None
        return cls(path)

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` started inside this cgroup (with everything it starts)."""
        return ["/bin/sh", "-c", JOIN, str(self.path / "cgroup.procs"), *argv]

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def close(self) -> None:
        """Kill every process left in the cgroup, then remove it."""
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            if (self.path / "cgroup.kill").exists():
                (self.path / "cgroup.kill").write_text("1")
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.05)
        try:
            self.path.rmdir()
        except OSError:
            pass


def _readable(protected: list[Path]) -> list[Path]:
    """What the kernel reads: Python, its packages and sdlab (with the shipped model), and the models'
    caches; never a folder holding something protected (then only sdlab's own folders of it)."""
    places = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), *map(Path, site.getsitepackages())]
    places += [Path(p) for p in [site.getusersitepackages(), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
               if p and Path(p).exists()]
    for name in ("sdlab", "sdlab.models", "sdlab.images"):  # an editable install maps these to its checkout
        spec = importlib.util.find_spec(name)
        places += [Path(p) for p in (spec.submodule_search_locations or []) if spec] if spec else []
    home = Path.home()
    caches = [os.environ.get("HF_HOME", home / ".cache" / "huggingface"), os.environ.get("SDLAB_WEIGHTS", ""),
              home / ".cache" / "sdlab", os.environ.get("TORCH_HOME", home / ".cache" / "torch")]
    places += [Path(c) for c in caches if c and Path(c).exists()]
    kept = []
    for place in {p.resolve() for p in places}:
        if not any(p == place or place in p.parents for p in protected):
            kept.append(place)
    kept.sort(key=lambda p: len(p.parts))  # parents first, so a child's bind lands inside its parent's
    return [p for i, p in enumerate(kept) if not any(q in p.parents for q in kept[:i])]


def _bwrap_args(bwrap: str, folder: Path, workdir: Path, protected: list[Path]) -> list[str]:
    # JPY_PARENT_PID: ipykernel watches its parent, which in a pid namespace is pid 1, and so would
    # stop at once; the kernel ends with its namespace instead (--die-with-parent)
    args = [bwrap, "--unshare-all", "--die-with-parent", "--hostname", "sdlab-grade", "--unsetenv", "JPY_PARENT_PID",
            "--proc", "/proc", "--dev", "/dev", "--size", str(TMPFS), "--tmpfs", "/tmp"]
    for top in SYSTEM:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for name in ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for place in _readable(protected):
        args += ["--ro-bind", str(place), str(place)]
    # the root bwrap builds is a tmpfs: read-only, so that nothing but the copy takes disk or memory
    return args + ["--bind", str(folder), str(folder), "--remount-ro", "/", "--chdir", str(workdir), "--"]


@dataclass
class Sandbox:
    """How a submission's kernel is confined: `mode` is "auto" (bubblewrap where it works, else a
    warning), "require" (refuse to grade without it) or "off" (limits and process group only)."""

    mode: str = "auto"
    limits: Limits = Limits()

    def __post_init__(self):
        if self.mode not in MODES:
            raise SdlabInputError(f"sandbox must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.limits = self.limits.checked()

    def bwrap(self) -> str | None:
        """bwrap's path when this sandbox uses it (SdlabInputError when required and missing)."""
        if self.mode == "off":
            return None
        path, why = bubblewrap()
        if path is None and self.mode == "require":
            raise SdlabInputError(f"--sandbox require: {why}; install it, or grade with --sandbox auto (unprotected)")
        return path

    def unprotected(self) -> list[str]:
        """What a student's code can do here that the sandbox would stop (empty: nothing listed)."""
        missing = []
        if self.bwrap() is None:
            missing += ["read any file the grader can read (the solutions and their hidden tests included)",
                        "write outside its own copy (the report, the course, other students' copies)",
                        "use the network", "leave processes running after its grading (a new session escapes "
                                                   "the process group)"]
        if os.geteuid() == 0 and _cgroup_root() is None:
            missing.append("start processes without bound (RLIMIT_NPROC does not apply to root, and no cgroup "
                           "could be made)")
        return missing

    def warn(self) -> None:
        missing = self.unprotected()
        if missing:
            why = bubblewrap()[1] if self.mode != "off" else "--sandbox off"
            warnings.warn(f"grading without a full sandbox ({why}): a student's code can " + "; ".join(missing),
                          stacklevel=3)

    def command(self, argv: list[str], folder: Path, workdir: Path, protected: list[Path],
                cpu_seconds: int, cgroup: Cgroup | None) -> list[str]:
        """The kernel command `argv`, confined: in bubblewrap (when used) with `folder` its only
        writable place, under the limits, inside `cgroup` (when there is one)."""
        limits = self.limits
        inner = [sys.executable, "-I", "-c", LIMITS, str(limits.memory), str(limits.processes),
                 str(limits.file_size), str(limits.cpu_seconds or cpu_seconds), *argv]
        bwrap = self.bwrap()
        command = (_bwrap_args(bwrap, folder, workdir, protected) if bwrap else []) + inner
        return cgroup.wrap(command) if cgroup is not None else command


def kernel_manager(sandbox: Sandbox, kernel: str, folder: Path, workdir: Path, protected: list[Path],
                   cpu_seconds: int, cgroup: Cgroup | None):
    """A jupyter_client (async) KernelManager whose kernel starts confined (`Sandbox.command`), listens on
    Unix sockets in `folder`, and is interrupted by message: a SIGINT to its process group would
    reach bubblewrap, which would end the sandbox instead."""
    from jupyter_client import AsyncKernelManager  # heavy: zmq and jupyter_client load only to grade

    class SandboxedKernelManager(AsyncKernelManager):  # async, as nbclient needs for its timeouts
        def format_kernel_cmd(self, extra_arguments=None):
            argv = super().format_kernel_cmd(extra_arguments)
            return sandbox.command(argv, folder, workdir, protected, cpu_seconds, cgroup)

    km = SandboxedKernelManager(kernel_name=kernel, transport="ipc", ip=str(folder / "kernel"))
    km.connection_file = str(folder / "kernel.json")
    km.kernel_spec.interrupt_mode = "message"
    return km
