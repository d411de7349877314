"""The course itself: every solution notebook runs and scores full points, graded as a perfect
submission by `sdlab grade` (its cells in the sandbox, bubblewrap required, its hidden tests in the
judge, parameters injected), and the run also compares the outputs of cells marked NBVAL_CHECK_OUTPUT
with those stored in the notebook (as nbval does, through the same sanitising patterns,
solutions/nbval_sanitize.cfg). Blanks are in sync, graded as they are they score 0 with each
exercise's own message, and half-done they score the half that was done."""
import configparser
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

from sdlab import grading
from sdlab.errors import SdlabInputError
from sdlab.grading import course

sys.path.insert(0, str(Path(__file__).parent))
from test_grading import _answers, _submit  # noqa: E402  a submission made from the course's own cells

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
# smaller settings, so that the whole course runs in minutes on 2 CPU cores: every cell still runs and every
# hidden test still passes; the outputs compared with the stored ones (NBVAL_CHECK_OUTPUT) do not depend on them
SMALL = {"02_seeds_and_latents": {"num_inference_steps": 8}, "03_steps": {"max_steps": 11, "compare_steps": 4},
         "04_prompts": {"num_inference_steps": 8, "weight_prompts": 8},
         "05_guidance": {"adherence_prompts": 6, "num_inference_steps": 8},
         "07_web_app": {"num_inference_steps": 8, "image_count": 2},
         # 08 keeps its 20 steps: at 8 its rater likes no image, and the fine-tuning has nothing to learn from
         # (at 20, 7 of the first 32 images are blue)
         "08_feedback": {"image_count": 32, "test_count": 8, "finetune_steps": 30}}
# where a grading checks scores only (the blank and half-done ones), 04 measures its weights on fewer prompts, and
# 08 runs at 8 steps: its rater then likes no image, so its fine-tuning cell stops with an error, but that cell
# comes after the last exercise
SCORES_ONLY = {**SMALL, "04_prompts": {**SMALL["04_prompts"], "weight_prompts": 4},
               "08_feedback": {"num_inference_steps": 8, "image_count": 24, "test_count": 8, "finetune_steps": 20}}


def test_all_course_notebooks_exist():
    names = [p.stem for p in SOLUTIONS]
    assert names[:6] == ["00_setup", "01_loading", "02_seeds_and_latents", "03_steps", "04_prompts", "05_guidance"]


def test_blank_notebooks_are_in_sync_and_clean():
    assert course.check(ROOT / "solutions", ROOT / "notebooks") == []


def test_blank_source_replaces_solutions_and_drops_hidden_tests():
    src = "x = 1\n    ### BEGIN SOLUTION\n    y = x + 1\n    ### END SOLUTION\ncheck(y)"
    blank = course.blank_source(src, "add_one", "add one to x")
    assert "y = x + 1" not in blank
    assert "    raise NotImplementedError(\"Exercise 'add_one': add one to x\")" in blank
    assert course.blank_source("### BEGIN HIDDEN TESTS\nassert y == 2\n### END HIDDEN TESTS") == ""
    with pytest.raises(ValueError, match="no matching"):
        course.blank_source("### BEGIN SOLUTION\ny = 2")


def test_check_reports_stale_blanks_outputs_and_tokens(tmp_path):
    sol, blank = tmp_path / "solutions", tmp_path / "notebooks"
    sol.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")])
    nbformat.write(nb, sol / "00_x.ipynb")
    assert "missing" in course.check(sol, blank)[0]
    course.build(sol, blank)
    assert course.check(sol, blank) == []
    nb.cells[0].source = "### BEGIN SOLUTION\nx = 2\n### END SOLUTION\n# hf_" + "a" * 34
    nbformat.write(nb, sol / "00_x.ipynb")
    problems = course.check(sol, blank)
    assert any("out of date" in p for p in problems) and any("token" in p for p in problems)


def test_a_folder_without_course_notebooks_is_an_error_not_a_course_in_sync(tmp_path):
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "scratch.ipynb").write_text("{}")  # not numbered: not part of the course
    for action in (course.check, course.build):
        with pytest.raises(SdlabInputError, match="solutions/ holds no course notebooks"):
            action(tmp_path / "solutions", tmp_path / "notebooks")
    assert not (tmp_path / "notebooks").exists()


def _sanitizers() -> list[tuple[re.Pattern, str]]:
    config = configparser.ConfigParser()
    config.read(ROOT / "solutions" / "nbval_sanitize.cfg")
    return [(re.compile(config[name]["regex"]), config[name]["replace"]) for name in config.sections()]


def _text_of(cell, sanitizers) -> str:
    text = "".join(o.get("text", "") if o.output_type == "stream" else o.get("data", {}).get("text/plain", "")
                   for o in cell.outputs)
    for pattern, replacement in sanitizers:
        text = pattern.sub(replacement, text)
    return text


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_solution_notebook_runs_and_scores_full_points(path, tmp_path):
    from sdlab.presets import default_model

    (tmp_path / "subs" / "perfect").mkdir(parents=True)
    shutil.copy(path, tmp_path / "subs" / "perfect" / path.name)
    report = grading.grade([tmp_path / "subs"], ROOT / "solutions", tmp_path / "report", progress=False,
                           parameters={"model": default_model()} | SMALL.get(path.stem, {}), sandbox="require")
    assert len(report.rows) >= 3 and [(r.exercise, r.status, r.message) for r in report.rows
                                      if r.points != r.max] == [], "a hidden test of the solution fails"
    total, page = sum(r.max for r in report.rows), tmp_path / "report" / "perfect" / f"{path.stem}.html"
    assert f"perfect · {path.stem}: {total}/{total} points" in page.read_text()
    nb = nbformat.read(tmp_path / "report" / "perfect" / path.name, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if path.stem != "00_setup":
        assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook shows no image"
    # 07's pictures of its web app: headless Chromium, started inside the sandbox
    for cell in (c for c in nb.cells if c.cell_type == "code" and "screenshot(" in c.source):
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), f"no picture of the page: {cell.outputs}"
    sanitizers, ran = _sanitizers(), {c.source: c for c in nb.cells if c.cell_type == "code"}
    for stored in nbformat.read(path, as_version=4).cells:
        if stored.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in stored.source:
            assert _text_of(ran[stored.source], sanitizers) == _text_of(stored, sanitizers), stored.source


def _half_done(blank: Path, solution: Path, subs: Path) -> dict[str, bool]:
    """subs/half/<name>: the blank with the first half of its exercises (rounded up) answered as the
    solution answers them, as a student who stopped halfway; returns exercise → answered."""
    answers = _answers(solution)
    done = list(answers)[:(len(answers) + 1) // 2]
    _submit(subs, "half", blank, {name: answers[name] for name in done})
    return {name: name in done for name in answers}


# 00 and 01 are graded blank, half-done and one exercise at a time in tests/test_grading.py
@pytest.mark.parametrize("path", SOLUTIONS[2:], ids=lambda p: p.stem)
def test_blank_and_half_done_submissions_score_what_they_answered(path, tmp_path):
    """The blank, run as it is, stops at each exercise with the exercise's own message and scores 0;
    a student who answered the first half scores exactly that half."""
    from sdlab.presets import default_model

    (tmp_path / "subs" / "blank").mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / path.name, tmp_path / "subs" / "blank" / path.name)
    answered = _half_done(ROOT / "notebooks" / path.name, path, tmp_path / "subs")
    report = grading.grade([tmp_path / "subs"], ROOT / "solutions", tmp_path / "report", progress=False,
                           parameters={"model": default_model()} | SCORES_ONLY.get(path.stem, {}), sandbox="require")
    rows = {(r.student, r.exercise): r for r in report.rows}
    assert {exercise for _, exercise in rows} == set(answered)
    for exercise, done in answered.items():
        blank, half = rows["blank", exercise], rows["half", exercise]
        assert (blank.points, blank.status) == (0, "unfinished") and f"Exercise '{exercise}'" in blank.message
        expected = (half.max, "passed") if done else (0, "unfinished")
        assert (half.points, half.status) == expected, (exercise, half.status, half.message)


def test_checked_outputs_are_compared(tmp_path):
    stored = nbformat.read(ROOT / "solutions" / "02_seeds_and_latents.ipynb", as_version=4)
    checked = [c for c in stored.cells if c.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in c.source]
    assert checked and all(_text_of(c, _sanitizers()) for c in checked)  # outputs stored to compare with
    late = nbformat.v4.new_code_cell("print('took 12.5 s at 0x7f00')", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="took 12.5 s at 0x7f00")])
    assert _text_of(late, _sanitizers()) == "took TIME at ADDRESS"


def _solution_lines(cell) -> list[str]:
    """The code lines of an exercise cell's solutions (comments left out)."""
    lines, inside = [], False
    for line in cell.source.splitlines():
        found = course.marker(line)
        if found in (course.BEGIN_SOLUTION, course.END_SOLUTION):
            inside = found == course.BEGIN_SOLUTION
        elif inside and line.split("#")[0].strip():
            lines.append(line.split("#")[0])
    return lines


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text).replace("'", '"')


def test_every_notebook_has_three_graded_exercises_whose_answers_are_not_in_the_blank():
    total = 0
    for path in SOLUTIONS:
        solution = nbformat.read(path, as_version=4)
        blank = course.blank_notebook(solution).cells
        exercises = [c for c in solution.cells if c.cell_type == "code" and "exercise" in c.metadata.get("sdlab", {})]
        graded = {c.metadata["sdlab"]["grade"] for c in solution.cells if "grade" in c.metadata.get("sdlab", {})}
        names = [c.metadata["sdlab"]["exercise"] for c in exercises]
        assert len(names) >= 3, f"{path.name} has {len(names)} exercises"
        assert set(names) <= graded, f"{path.name}: no hidden test for {set(names) - graded}"
        total += len(names)
        for cell in exercises:
            name, hint = cell.metadata["sdlab"]["exercise"], _squeezed(cell.metadata["sdlab"].get("hint", ""))
            assert hint, f"{path.name} {name}: a hint says where to look"
            at = next(i for i, c in enumerate(blank) if c.metadata.get("sdlab", {}).get("exercise") == name)
            after = _squeezed("\n".join(c.source for c in blank[at:]))  # what came before is the lesson to reuse
            for line in _solution_lines(cell):
                # the whole line and, for an assignment, what is assigned: not in the exercise or after it
                parts = [line] + ([line.split("=", 1)[1]] if re.match(r"\s*[\w\s,.\[\]]+=[^=]", line) else [])
                for part in map(_squeezed, parts):
                    assert len(part) < 14 or part not in after, f"{path.name} {name}: {part!r} is in the blank"
                # and no 20 characters of the answer in the hint
                squeezed = _squeezed(line)
                windows = {squeezed[k:k + 20] for k in range(len(squeezed) - 19)}  # none for a shorter line
                assert not any(w in hint for w in windows), f"{path.name} {name}: the hint gives {line.strip()!r}"
    assert total >= 27
