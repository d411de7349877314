"""What a graded notebook keeps of each cell's outputs, as nbgrader's LimitOutput does: a student
who prints 40 MB must not make a 40 MB report page, nor a grader that holds a gigabyte.

A cell keeps the first MAX_CHARS characters and MAX_LINES lines of its stdout and of its stderr,
MAX_OUTPUTS other outputs (images, results) up to MAX_DATA characters in all, and errors cut to
size; a note says where anything was cut.
"""
from __future__ import annotations

import nbformat

MAX_CHARS, MAX_LINES, MAX_OUTPUTS, MAX_DATA = 10_000, 1_000, 100, 20_000_000
CUT = "[sdlab grade cut this output here"


def _clip(text: str, chars: int = MAX_CHARS, lines: int = MAX_LINES) -> int | None:
    """Where to cut `text` to keep at most `chars` characters and `lines` lines (None: keep it all)."""
    end, at = max(0, chars), -1
    if lines <= 0:
        end = 0
    elif text.count("\n", 0, end) >= lines:
        for _ in range(lines):
            at = text.find("\n", at + 1)
        end = at + 1
    return end if end < len(text) else None


def clip_error(content: dict) -> dict:
    """An error output (or execute reply) with its message and traceback cut to size."""
    evalue, traceback = str(content.get("evalue", "")), list(content.get("traceback", []))
    if _clip(evalue) is not None:
        content["evalue"] = evalue[: _clip(evalue)] + f" {CUT}]"
    if sum(map(len, traceback)) > 10 * MAX_CHARS:
        content["traceback"] = [t[:MAX_CHARS] for t in traceback[:2]] + [f"{CUT}]"] + \
            [t[:MAX_CHARS] for t in traceback[-5:]]
    return content


def limit_outputs(outs: list) -> None:
    """Keep a cell's outputs within the limits above, as each one arrives (`outs[-1]`): stdout
    and stderr are joined to the stream before them and cut past MAX_CHARS or MAX_LINES; other
    outputs past MAX_OUTPUTS or MAX_DATA are dropped; long results and errors are cut."""
    out = outs[-1]
    if out.output_type == "stream":
        kept = [o.text for o in outs[:-1] if o.output_type == "stream" and o.name == out.name]
        if any(CUT in text for text in kept):
            outs.pop()
            return
        if len(outs) > 1 and outs[-2].output_type == "stream" and outs[-2].name == out.name:
            outs.pop()
            outs[-1].text, out = outs[-1].text + out.text, outs[-1]
            kept = kept[:-1]
        cut = _clip(out.text, MAX_CHARS - sum(map(len, kept)), MAX_LINES - sum(t.count("\n") for t in kept))
        if cut is not None:
            out.text = out.text[:cut] + (
                f"\n{CUT}: a cell keeps {MAX_CHARS:,} characters and {MAX_LINES:,} lines of {out.name}]\n")
    elif out.output_type == "error":
        clip_error(out)
    else:
        text = out.get("data", {}).get("text/plain")
        if isinstance(text, str) and _clip(text) is not None:
            out.data["text/plain"] = text[: _clip(text)] + f"\n{CUT}]"
        shown = [o for o in outs if o.output_type in ("display_data", "execute_result")]
        size = sum(len(v) for o in shown for v in o.get("data", {}).values() if isinstance(v, str))
        if len(shown) > MAX_OUTPUTS or size > MAX_DATA:
            outs.pop()
            if not any(o.output_type == "stream" and CUT in o.text for o in outs):
                note = f"{CUT}: a cell keeps {MAX_OUTPUTS} displays, {MAX_DATA:,} characters in all]\n"
                outs.append(nbformat.v4.new_output("stream", name="stderr", text=note))
