"""Judges forked from a warm server: the same verdicts as a fresh interpreter, nothing carried from
one submission's judge to the next, none outliving its grading, and a server that ends with the
grader."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sdlab.grading import judge_server
from sdlab.grading.judge import ENTRY, Judge

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # a server imports torch, diffusers and transformers once


def _env(**extra) -> dict:
    return {**os.environ, "SDLAB_PROGRESS": "0", "HF_HUB_OFFLINE": "1", **extra}


def _forked(folder: Path, env: dict, log) -> Judge:
    """A judge forked by the server for `env` (started if none runs)."""
    assert judge_server.server_for(env, ENTRY) is not None
    judge = Judge(folder, env, log)
    assert isinstance(judge.process, judge_server.ForkedJudge)
    return judge


def _no_asks(code):
    raise AssertionError(f"this test asks nothing, got {code!r}")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")  # a zombie has ended too
    return status.exists() and "State:\tZ" in status.read_text()


def _wait_gone(pid: int, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_forked_judge_runs_where_and_as_a_fresh_one_would(tmp_path, monkeypatch):
    # a server started for one value of a volatile name forks the judge of another, with that value
    monkeypatch.setattr(judge_server, "VOLATILE", (*judge_server.VOLATILE, "SDLAB_JUDGE_TEST"))
    assert judge_server.server_for(_env(SDLAB_JUDGE_TEST="the server's"), ENTRY) is not None
    env = _env(SDLAB_JUDGE_TEST="seen")
    log = open(tmp_path / "log", "w")
    judges = {"forked": Judge(tmp_path, env, log)}
    assert isinstance(judges["forked"].process, judge_server.ForkedJudge)  # the server above, for this env too
    monkeypatch.setattr("sdlab.grading.judge.server_for", lambda *_, **__: None)  # as where no server can run
    judges["fresh"] = Judge(tmp_path, env, log)
    assert isinstance(judges["fresh"].process, subprocess.Popen)
    probe = textwrap.dedent("""
        import os, sys, torch
        import sdlab.checks
        print("PROBE", os.getcwd(), sys.path[0], os.environ.get("SDLAB_JUDGE_TEST"), torch.get_num_threads(),
              limit, "pytest" in sys.modules, "__judge__" == __name__)
    """)
    for name, judge in judges.items():
        assert judge.setup("limit = 1", {"limit": 3}, tmp_path, 60) == {"status": "ok"}, name
        assert judge.run(probe, "probe", _no_asks, 60) == {"status": "ok"}, name
        failed = judge.run("assert limit == 4, 'limit is 3'", "fails", _no_asks, 60)
        assert (failed["status"], failed["ename"], failed["evalue"]) == ("error", "AssertionError", "limit is 3")
        judge.close()
    log.close()
    probes = [line.split()[1:] for line in (tmp_path / "log").read_text().splitlines() if line.startswith("PROBE")]
    assert len(probes) == 2 and probes[0] == probes[1], probes
    cwd, path, seen, threads, limit, pytest_loaded, named = probes[0]
    assert (cwd, path, seen, limit) == (str(tmp_path), str(tmp_path), "seen", "3")
    assert (pytest_loaded, named) == ("False", "True")
    assert threads == os.environ.get("OMP_NUM_THREADS", threads)


def test_nothing_one_judge_does_reaches_the_next(tmp_path):
    """A test that patches numpy, the checks or a builtin in its judge leaves the next judge untouched."""
    env, log = _env(), open(tmp_path / "log", "w")
    first = _forked(tmp_path, env, log)
    first.setup("", {}, None, 60)
    patch = "import builtins, numpy, sdlab.checks\nnumpy.array_equal = lambda *a: True\nbuiltins.PATCHED = 1\n" \
            "sdlab.checks.PATCHED = 1"
    assert first.run(patch, "patch", _no_asks, 60) == {"status": "ok"}
    second = _forked(tmp_path, env, log)
    second.setup("", {}, None, 60)
    untouched = "import builtins, numpy, sdlab.checks\nassert not numpy.array_equal([1], [2])\n" \
                "assert not hasattr(builtins, 'PATCHED') and not hasattr(sdlab.checks, 'PATCHED')"
    assert second.run(untouched, "untouched", _no_asks, 60) == {"status": "ok"}
    for judge in (first, second):
        judge.close()


def test_a_judge_past_its_time_is_killed_and_gone(tmp_path):
    judge = _forked(tmp_path, _env(), open(tmp_path / "log", "w"))
    judge.setup("", {}, None, 60)
    reply = judge.run("import os\nprint('PID', os.getpid(), flush=True)\nwhile True: pass", "spins", _no_asks, 2)
    assert reply["ename"] == "TimeoutError"
    pid = int(next(line for line in (tmp_path / "log").read_text().splitlines() if line.startswith("PID")).split()[1])
    assert judge.process.pid == pid and _wait_gone(pid, 10)
    judge.close()  # twice is harmless


def test_the_server_ends_with_the_grader_and_a_failed_one_falls_back(tmp_path):
    grader = textwrap.dedent(f"""
        import json, os, sys
        from sdlab.grading import judge_server
        server = judge_server.server_for(dict(os.environ), {ENTRY!r})
        print(json.dumps({{"server": server.process.pid, "none": judge_server.server_for({{}}, "nowhere:main")}}),
              flush=True)
        os._exit(0)  # no atexit: the server must notice the grader has gone
    """)
    out = subprocess.run([sys.executable, "-c", grader], capture_output=True, text=True, timeout=240, env=_env(),
                         cwd=tmp_path)
    started = json.loads(out.stdout.splitlines()[-1])
    assert started["none"] is None, "a server whose entry cannot load is refused, so judges start fresh"
    assert _wait_gone(started["server"]), "the server outlived the grader"
