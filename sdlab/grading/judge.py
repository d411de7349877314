"""The judge: hidden tests run here, in an interpreter that no student code has touched.

A student's code runs in its kernel and can change anything there (`numpy.array_equal`, the
checks, IPython's input transformers, the kernel's replies), so no verdict is taken there. The
grader starts one judge per submission (`Judge`), outside the sandbox, in the solutions' folder:
forked from a server that has imported what tests use and run nothing else
(`sdlab.grading.judge_server`), or else a fresh interpreter;
each hidden test runs in the judge with trusted numpy, torch, sdlab and its own pipeline, and asks
the student's kernel for what it needs with `ask(code)` (`sdlab.grading.values`): an answer is
data, so it can be wrong, never a verdict. The test's source never enters the student's kernel;
only the code of each `ask` does, as it runs.

A test's namespace holds the solution's parameters (its `parameters` cell, then the grader's
values), `ask`, `inside_copy(path)` (a path the student names, refused unless it lies in the
submission's own copy) and `pipe`, the parameters' pipeline, loaded the first time a test names it.

The protocol is JSON lines on the judge's stdin and stdout (anything the tests print goes to its
stderr, the grader's log):

    grader → judge  {"setup": {"parameters": source, "values": {...}, "copy": path}}
                    {"test": source, "exercise": name}
    judge → grader  {"ask": code}         answered by {"value": text} or {"error": "NameError: ..."}
                    {"done": reply}        the test's execute reply: status ok, or error with ename/evalue
"""
from __future__ import annotations

import ast
import contextlib
import json
import os
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from queue import Empty, Queue

from .judge_server import server_for
from .values import AskError, decode

TIMEOUT_ENAME = "TimeoutError"
ENTRY = "sdlab.grading.judge:main"  # what a judge runs, forked by a server


def _send(stream, message: dict) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def _names(source: str) -> set[str]:
    return {node.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Name)}


class _Tests:
    """The judge's side: one namespace for one submission's hidden tests."""

    def __init__(self, incoming, outgoing):
        self.incoming, self.outgoing = incoming, outgoing
        self.namespace: dict = {"__name__": "__judge__", "ask": self.ask, "inside_copy": self.inside_copy}
        self.copy: Path | None = None

    def ask(self, code: str):
        """The value of `code` (statements, then an expression) in the student's kernel."""
        if not isinstance(code, str):
            raise TypeError("ask takes the code to run in the student's kernel, as a string")
        _send(self.outgoing, {"ask": code})
        answer = json.loads(self.incoming.readline() or '{"error": "the grader stopped"}')
        if "error" in answer:
            if answer["error"].startswith(f"{TIMEOUT_ENAME}: sdlab grade"):  # scored as a timeout, not a failure
                raise TimeoutError(answer["error"].split(": ", 1)[1])
            raise AskError(answer["error"])
        return decode(answer["value"])

    def inside_copy(self, path) -> Path:
        """`path` (named by the student's code) resolved, if it lies in the submission's copy."""
        resolved = Path(path).resolve()
        if self.copy is None or not resolved.is_relative_to(self.copy):
            raise AskError(f"{path} is outside the notebook's own folder: keep its files there")
        return resolved

    def setup(self, parameters: str, values: dict, copy: str | None) -> None:
        exec(compile(parameters, "<parameters>", "exec"), self.namespace)
        self.namespace.update(values)
        self.copy = Path(copy).resolve() if copy else None

    def run(self, source: str, exercise: str) -> dict:
        try:
            if "pipe" in _names(source) and "pipe" not in self.namespace:
                from sdlab import load_pipeline  # heavy: only tests that use the model load it

                ns = self.namespace
                ns["pipe"] = load_pipeline(ns.get("model"), device=ns.get("device", "auto"), progress=False)
            exec(compile(source, f"<hidden tests of {exercise}>", "exec"), self.namespace)
            return {"status": "ok"}
        except Exception as err:  # the test failed: its reply says how, as a kernel's would
            lines = traceback.format_exception(err)
            return {"status": "error", "ename": type(err).__name__, "evalue": str(err), "traceback": lines}


def main() -> None:
    """The judge process: read messages on stdin until it closes."""
    outgoing = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # what tests and libraries print goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    tests = _Tests(sys.stdin, outgoing)
    values = sys.modules[decode.__module__]  # sdlab.grading.values: `from ... import ask` in a test gets the relay
    values.ask, values.inside_copy = tests.ask, tests.inside_copy
    for line in sys.stdin:
        message = json.loads(line)
        if "setup" in message:
            setup = message["setup"]
            try:
                tests.setup(setup["parameters"], setup["values"], setup.get("copy"))
                _send(outgoing, {"done": {"status": "ok"}})
            except Exception as err:
                _send(outgoing, {"done": {"status": "error", "ename": type(err).__name__, "evalue": str(err)}})
        elif "test" in message:
            _send(outgoing, {"done": tests.run(message["test"], message.get("exercise", ""))})


class Judge:
    """The grader's side: a judge process for one submission. `run(test, exercise, relay)` runs a
    hidden test there, answering its asks with `relay(code) -> (value text | None, error | None)`,
    and returns the test's execute reply."""

    def __init__(self, cwd: Path, env: dict, log):
        # in the solutions' folder (so course_file finds the course's own images, not the student's
        # copy of them): forked by the server for `env`, which has imported what tests use, or else
        # a fresh interpreter (-m)
        server, self.process = server_for(env, ENTRY, start=False), None  # started by the batch, if it pays
        if server is not None:
            with contextlib.suppress(OSError):
                self.process = server.fork(cwd, env, log)
        if self.process is None:
            self.process = subprocess.Popen([sys.executable, "-m", "sdlab.grading.judge"], cwd=cwd, env=env,
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                            encoding="utf-8", bufsize=1)
        self.lines: Queue = Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _call(self, message: dict, relay, timeout: float) -> dict:
        try:
            _send(self.process.stdin, message)
        except (BrokenPipeError, OSError):
            return {"status": "error", "ename": "JudgeError", "evalue": "the judge process has stopped"}
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except Empty:
                self.close()
                return {"status": "error", "ename": "TimeoutError",
                        "evalue": f"sdlab grade interrupted the hidden tests after {timeout:g} s"}
            if line is None:
                return {"status": "error", "ename": "JudgeError", "evalue": "the judge process stopped"}
            answer = json.loads(line)
            if "done" in answer:
                return answer["done"]
            value, error = relay(answer["ask"])
            _send(self.process.stdin, {"error": error} if error is not None else {"value": value})

    def setup(self, parameters: str, values: dict, copy: Path | None, timeout: float) -> dict:
        return self._call({"setup": {"parameters": parameters, "values": values,
                                     "copy": str(copy) if copy else None}}, None, timeout)

    def run(self, source: str, exercise: str, relay, timeout: float) -> dict:
        return self._call({"test": source, "exercise": exercise}, relay, timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


if __name__ == "__main__":
    main()
