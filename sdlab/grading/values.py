"""Values a hidden test asks of a student's kernel, sent as data and never as code.

A hidden test runs in the grader's own interpreter (`sdlab.grading.judge`), which the student's
code never touches; what it needs from the student's work it asks for:

    assert ask('precision_for("cpu")') == torch.float32
    checks.made_with(pipe, ask("again"), ask("prompt"), seed=ask("lucky_seed"))

`ask(code)` runs `code` in the student's kernel (statements, then a last expression, as a cell)
and answers that expression's value. The value travels as JSON with tagged arrays (`encode`,
`decode`): numbers, strings, lists, tuples, dicts, sets, bytes, paths, numpy arrays, torch
tensors, dtypes and devices, and PIL images. Nothing else is sent (no pickle: the grader decodes
what a student's kernel wrote, so decoding must not run code), so a student's patched module or
forged object can change what a value is, never how it is judged.

A hidden test imports its `ask` from here (`from sdlab.grading.values import ask`). In the judge
that name is the judge's relay to the kernel; where a test runs in the student's own kernel (the
solutions executed as notebooks, or nbgrader's autograde) it evaluates in that kernel and
round-trips the value the same way, so one test source serves all three.
"""
from __future__ import annotations

import ast
import base64
import io
import json
from pathlib import Path, PurePath

import numpy as np

MIME = "application/vnd.sdlab.value+json"
MAX_BYTES = 64_000_000  # what one answer may weigh (a 2048² RGB image is 12 MB, 16 MB in base64)
MAX_DEPTH = 32


class AskError(Exception):
    """The student's kernel could not answer: the code raised, or its value cannot be sent."""


def _array(a: np.ndarray) -> str:
    if a.dtype.hasobject:
        raise TypeError("an array of Python objects cannot be sent to the grader: make it numbers")
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(a), allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _load(text: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(text, validate=True)), allow_pickle=False)


def _tree(value, depth: int = 0):
    """`value` as JSON-able data with tags ("$image", "$array", …) for what JSON lacks."""
    if depth > MAX_DEPTH:
        raise TypeError(f"the value is nested more than {MAX_DEPTH} deep")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value if type(value) in (int, float) else (int(value) if isinstance(value, int) else float(value))
    if isinstance(value, np.generic):
        return value.item() if value.dtype.kind in "biuf" else _tree(np.asarray(value), depth)
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        items = list(value.items()) if isinstance(value, dict) else list(value)
        if isinstance(value, dict):
            return {"$dict": [[_tree(k, depth + 1), _tree(v, depth + 1)] for k, v in items]}
        tree = [_tree(v, depth + 1) for v in items]
        return tree if isinstance(value, list) else {"$tuple" if isinstance(value, tuple) else "$set": tree}
    if isinstance(value, np.ndarray):
        return {"$array": _array(value)}
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, PurePath):
        return {"$path": str(value)}
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if kind == "torch.Tensor" or (type(value).__module__.startswith("torch") and hasattr(value, "detach")):
        tensor = value.detach().cpu()
        dtype = str(tensor.dtype).removeprefix("torch.")
        return {"$tensor": _array(tensor.float().numpy() if dtype == "bfloat16" else tensor.numpy()), "dtype": dtype}
    if kind == "torch.dtype":
        return {"$dtype": str(value).removeprefix("torch.")}
    if kind == "torch.device":
        return {"$device": str(value)}
    if hasattr(value, "getbands") and hasattr(value, "mode") and hasattr(value, "tobytes"):  # a PIL image
        image = value if value.mode in ("L", "RGB", "RGBA") else value.convert("RGBA" if "A" in value.mode else "RGB")
        return {"$image": _array(np.asarray(image))}
    raise TypeError(f"a {kind} cannot be sent to the grader: ask for numbers, text, arrays or images "
                    "(for example an image's .image, a result's .images)")


def encode(value) -> str:
    """`value` as the JSON text a kernel sends (TypeError for what cannot be sent)."""
    text = json.dumps(_tree(value), separators=(",", ":"))
    if len(text) > MAX_BYTES:
        raise TypeError(f"the value is {len(text):,} bytes as sent; answers are limited to {MAX_BYTES:,}")
    return text


def _torch():
    import torch  # heavy: only answers that hold tensors or dtypes need it

    return torch


def _untag(obj):
    if not isinstance(obj, dict) or len(obj) not in (1, 2):
        raise ValueError("not an sdlab value")
    tag, body = next(iter(obj.items()))
    if tag == "$dict":
        return {k if not isinstance(k, list) else tuple(k): v for k, v in body}
    if tag == "$tuple":
        return tuple(body)
    if tag == "$set":
        return set(body)
    if tag == "$array":
        return _load(body)
    if tag == "$bytes":
        return base64.b64decode(body, validate=True)
    if tag == "$path":
        return Path(body)
    if tag == "$image":
        from PIL import Image  # PIL is always there with sdlab; imported here to keep this module light

        return Image.fromarray(_load(body))
    if tag == "$tensor":
        torch = _torch()
        tensor = torch.from_numpy(_load(body).copy())
        return tensor.to(getattr(torch, obj["dtype"])) if obj.get("dtype") == "bfloat16" else tensor
    if tag == "$dtype":
        dtype = getattr(_torch(), body, None)
        if not isinstance(dtype, _torch().dtype):
            raise ValueError(f"no torch dtype {body!r}")
        return dtype
    if tag == "$device":
        return _torch().device(body)
    raise ValueError(f"unknown tag {tag!r}")


def decode(text: str | bytes):
    """The value `encode` wrote. Raises ValueError for anything else (text from a student's
    kernel is data: at worst a wrong value, never code run here)."""
    if len(text) > MAX_BYTES:
        raise ValueError(f"an answer of {len(text):,} bytes is over the limit of {MAX_BYTES:,}")

    def hook(obj):
        return _untag(obj) if len(obj) in (1, 2) and next(iter(obj)).startswith("$") else obj

    try:
        return json.loads(text, object_hook=hook)
    except Exception as err:  # whatever malformed text raises in json, numpy or PIL, it is not a value
        raise ValueError(f"the kernel's answer is not a value: {type(err).__name__}: {err}") from None


def evaluate(code: str, namespace: dict):
    """Run `code` as a cell would (its statements, then its last expression) in `namespace`;
    the last expression's value (None when the code ends in a statement)."""
    tree = ast.parse(code, "<hidden test>", "exec")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<hidden test>", "exec"), namespace)
    return eval(compile(ast.Expression(last.value), "<hidden test>", "eval"), namespace) if last else None


class Answer:
    """An encoded value, shown to the kernel's display formatter as the grader's MIME type."""

    def __init__(self, text: str):
        self.text = text

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {MIME: self.text, "text/plain": "(a value for the grader)"}


def answer(code: str, namespace: dict) -> Answer:
    """In the student's kernel: `code` evaluated in `namespace`, encoded."""
    return Answer(encode(evaluate(code, namespace)))


def expression(code: str) -> str:
    """The user expression the grader sends to ask `code` of a student's kernel. A user expression
    is evaluated as it is: IPython's input and AST transformers, and cell hooks, never see it."""
    return f"__import__('sdlab.grading.values', fromlist=['answer']).answer({code!r}, globals())"


def ask(code: str):
    """Under nbgrader (the tests in the student's own kernel): evaluate `code` there, and answer its
    value as the grader's judge would get it (sent through `encode` and `decode`)."""
    from IPython import get_ipython  # only inside a kernel

    shell = get_ipython()
    namespace = shell.user_ns if shell is not None else {}
    return decode(encode(evaluate(code, namespace)))


def inside_copy(path) -> Path:
    """In the student's own kernel, a path the notebook names, resolved. (In the judge, the same
    name also refuses a path outside the submission's folder.)"""
    return Path(path).resolve()
