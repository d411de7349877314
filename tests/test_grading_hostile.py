"""A class that cheats: each student answers one exercise honestly and attacks the grader for the
rest. Each must score exactly what its honest work earns, and no file outside its own copy may
change (the solutions, the report, other students' submissions), no process may outlive grading,
and nothing may leave over the network.

Graded with `sandbox="require"`: bubblewrap must be installed (Debian: apt install bubblewrap;
`.ci/run` installs it).
"""
from __future__ import annotations

import base64
import io
import os
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

import nbformat
import numpy as np
import pytest

from sdlab import grading
from sdlab.errors import SdlabInputError
from sdlab.grading import sandbox as sandbox_module
from sdlab.grading.values import decode, encode

sys.path.insert(0, str(Path(__file__).parent))
from test_grading import _arithmetic_course, _fingerprint, _rows, _submit  # noqa: E402

HONEST = {"double": "doubled = 2 * n"}  # every hostile student's own work: 1 point of 4


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def hostile_class(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    solutions = _arithmetic_course(tmp / "course")
    blank, subs, out = tmp / "course" / "notebooks" / "00_arith.ipynb", tmp / "subs", tmp / "report"
    marker = f"{time.time() % 1000:.6f}"  # the argument the leftover processes would show: sleep <marker>
    heard: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def listen():
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
                heard.append(connection.recv(100) or b"(connected)")
                connection.close()
            except OSError:
                pass

    stop = threading.Event()
    threading.Thread(target=listen, daemon=True).start()
    grade_files = out / "honest" / "00_arith.grade.json"
    cheats = {
        # the checks and numpy all say yes; the answers are placeholders
        "patcher": ("import builtins, numpy\nfrom sdlab import checks\nnumpy.array_equal = lambda *a, **k: True\n"
                    "for name in dir(checks):\n    if callable(getattr(checks, name)):\n"
                    "        setattr(checks, name, lambda *a, **k: True)\n"
                    "builtins.AssertionError = type('AssertionError', (Exception,), {})",
                    {"squares": "squares = None"}),
        # every later cell that is not the student's own becomes `pass`
        "transformer": ("get_ipython().input_transformers_cleanup.append(\n"
                        "    lambda lines: ['pass\\n'] if any(w in ''.join(lines)"
                        " for w in ('assert', 'grading', 'ask')) else lines)\n"
                        "get_ipython().ast_transformers.clear()", {"squares": "squares = None"}),
        # the kernel's replies all say ok
        "replier": ("kernel = get_ipython().kernel\nkernel._orig_send = kernel.session.send\n"
                    "def send(stream, msg, *a, **k):\n"
                    "    if isinstance(msg, dict) and msg.get('content', {}).get('status') == 'error':\n"
                    "        msg['content'] = {'status': 'ok', 'execution_count': 1, 'payload': [], "
                    "'user_expressions': {}}\n"
                    "    return kernel._orig_send(stream, msg, *a, **k)\nkernel.session.send = send", {}),
        # what /proc shows of the grader, and the solutions and report it names
        "reader": (f"import glob, os\nfound = []\nfor p in glob.glob('/proc/[0-9]*/cmdline'):\n"
                   f"    try:\n        found.append(open(p, 'rb').read().replace(b'\\0', b' ').decode())\n"
                   f"    except OSError:\n        pass\nprint('\\n'.join(found))\n"
                   f"for path in [{str(solutions / '00_arith.ipynb')!r}, {str(out)!r}, {str(subs)!r}]:\n"
                   f"    print(path, os.path.exists(path))\n"
                   f"    try:\n        print(open(path).read())\n    except OSError as err:\n        print(err)", {}),
        # writes into the solutions, the report and another student's submission
        "writer": ("import pathlib\n"
                   f"for path in [{str(solutions / 'extra.txt')!r}, {str(solutions / '00_arith.ipynb')!r}, "
                   f"{str(grade_files)!r}, {str(subs / 'honest' / '00_arith.ipynb')!r}]:\n"
                   f"    try:\n        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)\n"
                   f"        pathlib.Path(path).write_text('{{}}')\n"
                   f"    except OSError as err:\n        print(err)", {}),
        # a process in a session of its own, to rewrite the report once grading is over
        "detached": ("import subprocess\n"
                     f"subprocess.Popen(['/bin/sh', '-c', 'sleep {marker}; echo {{}} > {grade_files}'], "
                     "start_new_session=True)", {}),
        "network": (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)"
                    f".sendall(b'hidden tests')\nexcept OSError as err:\n    print(err)", {}),
        "forker": ("import os\nborn = 0\nfor _ in range(5000):\n    try:\n        pid = os.fork()\n"
                   "    except OSError:\n        break\n    if pid == 0:\n"
                   f"        os.execv('/bin/sleep', ['sleep', '{marker}'])\n    born += 1\nprint(born, 'processes')",
                   {}),
        "hog": ("hoard = []\ntry:\n    for _ in range(48):\n        hoard.append(bytearray(2**28))\n"
                "except MemoryError:\n    print('stopped at', len(hoard) / 4, 'GiB')\nhoard = None", {}),
    }
    for student, (cell, answers) in cheats.items():
        _submit(subs, student, blank, {**HONEST, **answers}, extra=[(2, cell)])
    _submit(subs, "honest", solutions / "00_arith.ipynb")
    before = _fingerprint(tmp / "course", subs)
    limits = grading.Limits(memory=3 * 2**30, processes=64)
    report = grading.grade([subs], solutions, out, timeout=20, jobs=2, progress=False,
                           sandbox=grading.Sandbox("require", limits))
    time.sleep(2)  # a process that outlived grading would write now
    stop.set()
    return tmp, report, before, heard, marker, out


def test_each_cheat_scores_only_its_honest_work(hostile_class):
    tmp, report, _, _, _, out = hostile_class
    rows = _rows(out)
    students = {r.student for r in report.rows}
    assert len(students) == 10
    for student in students - {"honest"}:
        got = {e: (rows[student, e]["points"], rows[student, e]["status"]) for e in ("double", "squares", "greeting")}
        assert got["double"] == ("1", "passed"), (student, got)
        assert got["squares"][0] == got["greeting"][0] == "0", (student, got)
    assert {rows["honest", e]["points"] for e in ("double", "squares", "greeting")} == {"1", "2"}
    assert sum(float(r["points"]) for k, r in rows.items() if k[0] == "honest") == 4


def test_the_hidden_tests_never_reach_the_students_kernel(hostile_class):
    tmp, _, _, _, _, out = hostile_class
    reader = nbformat.read(out / "reader" / "00_arith.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in reader.cells if c.cell_type == "code" for o in c.outputs)
    assert "00_arith.ipynb False" in printed and "No such file" in printed
    assert "--against" not in printed and "solutions" not in printed.replace(str(tmp / "course" / "solutions"), "")
    assert "BEGIN HIDDEN" not in printed and "ask(" not in printed


def test_no_file_outside_a_copy_changes_and_nothing_outlives_grading(hostile_class):
    tmp, _, before, heard, marker, out = hostile_class
    assert _fingerprint(tmp / "course", tmp / "subs") == before
    assert not (tmp / "course" / "solutions" / "extra.txt").exists()
    assert _rows(out)["honest", "double"]["points"] == "1"  # the report says what the grader wrote
    assert not _processes_with(f"sleep {marker}")
    assert heard == []


def test_the_sandbox_bounds_processes_and_memory(hostile_class):
    _, _, _, _, _, out = hostile_class
    forker = nbformat.read(out / "forker" / "00_arith.ipynb", as_version=4)
    born = next(int(o.text.split()[0]) for c in forker.cells for o in c.get("outputs", []) if "processes" in
                o.get("text", ""))
    assert 0 < born < 64
    hog = nbformat.read(out / "hog" / "00_arith.ipynb", as_version=4)
    stopped = next(float(o.text.split()[2]) for c in hog.cells for o in c.get("outputs", []) if "stopped at" in
                   o.get("text", ""))
    assert stopped < 3


def test_without_bubblewrap_grading_warns_or_refuses(tmp_path, monkeypatch):
    solutions = _arithmetic_course(tmp_path / "course")
    subs = tmp_path / "subs"
    _submit(subs, "ann", solutions / "00_arith.ipynb")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no bwrap on this PATH
    sandbox_module.bubblewrap.cache_clear()
    try:
        with pytest.raises(SdlabInputError, match="bubblewrap is not installed"):
            grading.grade([subs], solutions, tmp_path / "out", sandbox="require", progress=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = grading.grade([subs], solutions, tmp_path / "out", timeout=20, progress=False)
        assert any("read any file the grader can read" in str(w.message) for w in caught)
        assert sum(r.points for r in report.rows) == 4  # graded all the same
    finally:
        sandbox_module.bubblewrap.cache_clear()


def test_a_hidden_test_that_never_asks_is_refused(tmp_path):
    solutions = _arithmetic_course(tmp_path / "course")
    nb = nbformat.read(solutions / "00_arith.ipynb", as_version=4)
    for cell in nb.cells:
        cell.source = cell.source.replace('assert ask("doubled") == 2 * ask("n")', "assert doubled == 2 * n")
    nbformat.write(nb, solutions / "00_arith.ipynb")
    with pytest.raises(SdlabInputError, match="'double' never call ask"):
        grading.grade([solutions / "00_arith.ipynb"], solutions, tmp_path / "out", progress=False)


def test_values_cross_as_data_only():
    assert decode(encode({"a": (1, 2.5), 3: [None, b"x"]})) == {"a": (1, 2.5), 3: [None, b"x"]}
    pickled = encode([1])  # an .npy holding pickled objects is refused, never loaded
    buffer = io.BytesIO()
    np.save(buffer, np.array([os.system], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a value"):
        decode('{"$array": "%s"}' % base64.b64encode(buffer.getvalue()).decode())
    assert decode(pickled) == [1]
    with pytest.raises(TypeError, match="cannot be sent"):
        encode(object())
