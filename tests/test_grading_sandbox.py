"""What a notebook may start inside the grading sandbox: a headless Chromium (notebook 07 takes
pictures of its web app with one) loading a page that a server inside the same sandbox serves on its
own loopback.

Run as a submission's kernel is: `Sandbox("require").command` (bubblewrap, the limits, a cgroup where
one can be made) with `kernel_env`'s environment. Like the other sandbox tests, it needs bubblewrap
(`sandbox="require"` refuses without it) and, like the browser tests, Chromium and its driver: where
one is missing the test fails and says what to install (`.ci/run` installs all three).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sdlab.app.screenshot import missing_browser
from sdlab.grading.notebook import kernel_env
from sdlab.grading.sandbox import Cgroup, Sandbox

BLUE = (0, 128, 255)
PAGE = f"<html><body style='background: rgb{BLUE}'><button>go</button></body></html>"
# inside the sandbox: a server on the sandbox's loopback, and a picture of its page
SERVE_AND_SHOOT = """
import functools, http.server, json, sys, threading
from pathlib import Path
from sdlab.app.screenshot import screenshot

root = Path(sys.argv[1])
(root / "index.html").write_text(sys.argv[2])
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
page = screenshot(f"http://127.0.0.1:{server.server_address[1]}/index.html", width=640, height=480, timeout=60)
print("picture", json.dumps(None if page is None else [page.size, page.getpixel((200, 100))]))
"""


@pytest.fixture
def copy():
    """A submission's folder, made where and as grading makes it: Chromium's socket lies in its tmp/,
    and a Unix socket's path has at most 107 bytes, which a folder under pytest's tmp_path (named
    after the test) would leave too few of."""
    with tempfile.TemporaryDirectory(prefix="sdlab-grade-", ignore_cleanup_errors=True) as tmp:
        folder = Path(tmp)
        for made in (folder / "site", folder / "home", folder / "tmp"):
            made.mkdir()
        yield folder


def test_headless_chromium_starts_in_the_sandbox_and_loads_a_page_served_on_its_loopback(copy):
    lacking = missing_browser()
    if lacking:
        pytest.fail(f"{lacking} not found: this test needs Chromium and its driver; install the Debian packages "
                    f"with `sudo apt-get install -y chromium chromium-driver`")
    sandbox = Sandbox("require")  # SdlabInputError, saying what to install, without bubblewrap
    cgroup = Cgroup.make(sandbox.limits.processes)
    command = sandbox.command([sys.executable, "-c", SERVE_AND_SHOOT, str(copy / "site"), PAGE], copy, copy,
                              [], 300, cgroup)
    try:
        ran = subprocess.run(command, env=kernel_env(dict(os.environ), copy), capture_output=True, text=True,
                             timeout=240)
    finally:
        if cgroup is not None:
            cgroup.close()
    assert ran.returncode == 0, ran.stderr[-3000:]
    picture = json.loads(next(line for line in ran.stdout.splitlines() if line.startswith("picture "))[8:])
    assert picture is not None, ran.stdout  # None: screenshot found no browser
    size, pixel = picture
    assert size[0] == 640 and size[1] > 200
    assert all(abs(a - b) <= 8 for a, b in zip(pixel, BLUE, strict=True)), pixel  # the page itself, not an error page
