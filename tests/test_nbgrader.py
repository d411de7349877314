"""nbgrader and sdlab read one course: `sdlab course build` keeps nbgrader's cell metadata in the
solutions, real `nbgrader generate_assignment` and `autograde` give each student the points
`sdlab grade` gives, and `sdlab grade` grades what nbgrader released. And publishing from a copy:
`sdlab course build --repo OWNER/NAME[@BRANCH]` points every Colab badge and install cell there.

The class is graded on a small course made here (hidden tests that `ask` the kernel, an exercise
with two test cells) and on a copy of the real 00_setup, on the random-weight model."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from sdlab import cli, grading
from sdlab.errors import SdlabInputError
from sdlab.grading import course
from sdlab.grading import nbgrader as nbg

sys.path.insert(0, str(Path(__file__).parent))
from test_grading import _code, _hidden, _solution  # noqa: E402  the small course's cell makers

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENT = "ps1"


def _quiz() -> nbformat.NotebookNode:
    """Two exercises, 4 points; the hidden tests ask the kernel for values. `n` changes after the
    first test, so a test run anywhere but right after its exercise fails."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 01 · Quiz"),
        _code("n = 3", parameters=True),
        _code(_solution("doubled = 2 * n"), exercise="double", hint="two times n"),
        _code('assert isinstance(doubled, int), "doubled should be a whole number"'),
        _code(_hidden('assert ask("doubled") == 2 * ask("n")'), grade="double", points=1),
        nbformat.v4.new_markdown_cell("Now a function."),
        _code("n = 5"),
        _code('def squares(k):\n    """The squares of 0 to k - 1."""\n    '
              + _solution("return [i * i for i in range(k)]").replace("\n", "\n    "),
              exercise="squares", hint="a list comprehension"),
        _code(_hidden('assert ask("squares(4)") == [0, 1, 4, 9]'), grade="squares", points=2),
        _code(_hidden('assert ask("squares(n)") == [i * i for i in range(5)]'), grade="squares", points=1),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _answers(path: Path) -> dict[str, str]:
    return {c.metadata["sdlab"]["exercise"]: c.source for c in nbformat.read(path, as_version=4).cells
            if "exercise" in c.metadata.get("sdlab", {})}


# 1. nbgrader's metadata, beside sdlab's

def test_build_writes_nbgrader_metadata_beside_sdlabs_and_keeps_it_in_sync(tmp_path):
    solutions, blanks = tmp_path / "solutions", tmp_path / "notebooks"
    solutions.mkdir()
    quiz = _quiz()
    quiz.cells[1].metadata["nbgrader"] = {"grade": False, "locked": True, "solution": True, "grade_id": "stale",
                                          "schema_version": 3}  # a cell that is no exercise any more
    nbformat.write(quiz, solutions / "01_quiz.ipynb")
    assert course.check(solutions, blanks)[0].endswith("has nbgrader metadata out of date with its sdlab metadata: "
                                                       "run `sdlab course build`")
    assert course.build(solutions, blanks) == [solutions / "01_quiz.ipynb", blanks / "01_quiz.ipynb"]
    solution = nbformat.read(solutions / "01_quiz.ipynb", as_version=4)
    meta = {i: c.metadata.get("nbgrader") for i, c in enumerate(solution.cells) if c.metadata.get("nbgrader")}
    exercise = {"grade": False, "locked": False, "solution": True, "schema_version": 3}
    test = {"grade": True, "locked": True, "solution": False, "schema_version": 3}
    assert meta == {2: {**exercise, "grade_id": "double"}, 4: {**test, "grade_id": "test_double", "points": 1},
                    7: {**exercise, "grade_id": "squares"}, 8: {**test, "grade_id": "test_squares", "points": 2},
                    9: {**test, "grade_id": "test_squares_2", "points": 1}}
    # a hidden test that asks the kernel imports ask, outside its hidden region (sdlab's grader brings its own)
    assert solution.cells[4].source == f"{nbg.ASK_IMPORT}\n" + _hidden('assert ask("doubled") == 2 * ask("n")')
    assert [t.source for t in grading.hidden_tests(solution)] == [
        'assert ask("doubled") == 2 * ask("n")', 'assert ask("squares(4)") == [0, 1, 4, 9]',
        'assert ask("squares(n)") == [i * i for i in range(5)]']
    # the blank has neither nbgrader's metadata nor the import: what it was before
    blank = nbformat.read(blanks / "01_quiz.ipynb", as_version=4)
    assert not any("nbgrader" in c.metadata or "ask" in c.source for c in blank.cells)
    assert blank == course.blank_notebook(quiz)
    # in sync: nothing is written, and a solution saved in another layout keeps its bytes
    assert course.build(solutions, blanks) == [] and course.check(solutions, blanks) == []
    (solutions / "01_quiz.ipynb").write_text(nbformat.writes(solution, indent=2), encoding="utf-8")
    before = (solutions / "01_quiz.ipynb").read_bytes()
    assert course.build(solutions, blanks) == [] and (solutions / "01_quiz.ipynb").read_bytes() == before
    # sdlab's metadata changes: check says so, build follows; a test that stops asking loses the import
    solution.cells[9].metadata["sdlab"]["points"] = 3
    solution.cells[4].source = solution.cells[4].source.replace('ask("doubled")', "doubled").replace('ask("n")', "n")
    nbformat.write(solution, solutions / "01_quiz.ipynb")
    assert [p for p in course.check(solutions, blanks) if "nbgrader metadata out of date" in p]
    course.build(solutions, blanks)
    solution = nbformat.read(solutions / "01_quiz.ipynb", as_version=4)
    assert solution.cells[9].metadata["nbgrader"]["points"] == 3
    assert solution.cells[4].source == _hidden("assert doubled == 2 * n")
    assert course.check(solutions, blanks) == []


@pytest.mark.parametrize("change, message", [
    (lambda nb: nb.cells[2].metadata["sdlab"].update(exercise="double it"), "'double it' cannot be an nbgrader"),
    (lambda nb: nb.cells[7].metadata["sdlab"].update(exercise="double"), "are both nbgrader's 'double'"),
    (lambda nb: nb.cells[8].metadata["sdlab"].update(points=True), "points True: give a number"),
    (lambda nb: nb.cells[8].metadata["sdlab"].update(points=-1), "points -1: give a number"),
])
def test_what_nbgrader_cannot_take_is_refused_before_anything_is_written(tmp_path, change, message):
    quiz = _quiz()
    change(quiz)
    (tmp_path / "solutions").mkdir()
    nbformat.write(quiz, tmp_path / "solutions" / "01_quiz.ipynb")
    before = (tmp_path / "solutions" / "01_quiz.ipynb").read_bytes()
    with pytest.raises(SdlabInputError, match=message):
        course.build(tmp_path / "solutions", tmp_path / "notebooks")
    assert (tmp_path / "solutions" / "01_quiz.ipynb").read_bytes() == before
    assert not (tmp_path / "notebooks" / "01_quiz.ipynb").exists()
    assert any(message.split(":")[0] in p for p in course.check(tmp_path / "solutions", tmp_path / "notebooks"))


def test_the_import_of_ask_follows_what_the_hidden_tests_call():
    plain, asking = _hidden("assert x == 1"), _hidden("assert ask('x') == 1")
    assert nbg.with_ask_import(plain) == plain
    assert nbg.with_ask_import(asking) == f"{nbg.ASK_IMPORT}\n{asking}"
    assert nbg.with_ask_import(nbg.with_ask_import(asking)) == f"{nbg.ASK_IMPORT}\n{asking}"
    # only a call of ask itself, and only in the hidden region
    for source in (_hidden("assert task('x') and q.ask('y')"), "print(ask('x'))\n" + plain):
        assert nbg.with_ask_import(source) == source


def test_an_exercise_cell_is_known_by_sdlabs_metadata_or_else_nbgraders():
    solution = nbformat.v4.new_code_cell("x = 1", metadata={"nbgrader": {"solution": True, "grade": False,
                                                                         "grade_id": "answer"}})
    assert nbg.exercise_of(solution) == "answer"
    solution.metadata["sdlab"] = {"exercise": "own"}
    assert nbg.exercise_of(solution) == "own"
    test = nbformat.v4.new_code_cell("", metadata={"nbgrader": {"solution": False, "grade": True,
                                                                "grade_id": "test_answer"}})
    text = nbformat.v4.new_markdown_cell("x", metadata={"nbgrader": {"solution": True, "grade_id": "essay"}})
    assert nbg.exercise_of(test) is None and nbg.exercise_of(text) is None


# 2. One class, graded by nbgrader and by sdlab

def _nbgrader(folder: Path, *args: str) -> None:
    """Run the nbgrader command line in its course folder (it starts `alembic` from this environment's bin/)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args, "--force"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _submit(student: str, source: Path, answers: dict[str, str], nbgrader_folder: Path, sdlab_folder: Path,
            keep_sdlab_metadata: bool = True) -> None:
    """The same notebook handed to both graders: submitted/<student>/ps1/ for nbgrader, <student>/ for sdlab."""
    nb = nbformat.read(source, as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("sdlab", {}).get("exercise") in answers:
            cell.source = answers[cell.metadata["sdlab"]["exercise"]]
        if not keep_sdlab_metadata:
            cell.metadata.pop("sdlab", None)
    for folder in (nbgrader_folder / "submitted" / student / ASSIGNMENT, sdlab_folder / student):
        path = folder / source.name
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)


def _nbgrader_points(folder: Path, solutions: Path, submissions) -> dict[tuple[str, str, str], tuple[float, float]]:
    """(points, max) of each (student, notebook, exercise) in nbgrader's gradebook: its test cells added up."""
    from nbgrader.api import Gradebook  # heavy: only this test reads nbgrader's gradebook

    found = {}
    with Gradebook(f"sqlite:///{folder / 'gradebook.db'}") as gradebook:
        for student, notebook in submissions:
            exercise_of = {c.metadata["nbgrader"]["grade_id"]: c.metadata["sdlab"]["grade"]  # test_x_2 → x
                           for c in nbformat.read(solutions / f"{notebook}.ipynb", as_version=4).cells
                           if c.metadata.get("nbgrader", {}).get("grade")}
            for grade in gradebook.find_submission_notebook(notebook, ASSIGNMENT, student).grades:
                key = (student, notebook, exercise_of[grade.name])
                points, most = found.get(key, (0, 0))
                found[key] = (points + grade.score, most + grade.max_score)
    return found


def test_nbgrader_and_sdlab_grade_one_class_alike(tmp_path, monkeypatch):
    # the kernels import this checkout's sdlab, whatever the environment has installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    solutions, blanks = tmp_path / "course" / "solutions", tmp_path / "course" / "notebooks"
    solutions.mkdir(parents=True)
    nbformat.write(_quiz(), solutions / "01_quiz.ipynb")
    setup = nbformat.read(ROOT / "solutions" / "00_setup.ipynb", as_version=4)
    params = next(c for c in setup.cells if "parameters" in c.metadata.get("tags", []))
    params.source = params.source.replace("model = None", 'model = "tiny-random"')
    nbformat.write(setup, solutions / "00_setup.ipynb")
    course.build(solutions, blanks)
    # nbgrader's course: the solutions copied as they are into source/ps1/, released
    folder = tmp_path / "nbgrader"
    (folder / "source" / ASSIGNMENT).mkdir(parents=True)
    (folder / "nbgrader_config.py").write_text("c = get_config()\nc.Execute.timeout = 300\n")
    for path in solutions.glob("*.ipynb"):
        shutil.copyfile(path, folder / "source" / ASSIGNMENT / path.name)
    _nbgrader(folder, "generate_assignment", ASSIGNMENT)
    release = folder / "release" / ASSIGNMENT
    released = nbformat.read(release / "01_quiz.ipynb", as_version=4)
    assert [c.source for c in released.cells if c.metadata.get("nbgrader", {}).get("grade")] == [nbg.ASK_IMPORT] * 3
    subs = tmp_path / "subs"
    # the real 00_setup half done: its first exercise passes in both graders, and the others are nbgrader's own
    # blanks; the quiz also perfect and blank
    for name in ("00_setup.ipynb", "01_quiz.ipynb"):
        first = next(iter(_answers(solutions / name)))
        _submit("half", release / name, {first: _answers(solutions / name)[first]}, folder, subs)
    _submit("perfect", solutions / "01_quiz.ipynb", {}, folder, subs)
    _submit("blank", release / "01_quiz.ipynb", {}, folder, subs)
    # what nbgrader released, with nbgrader's metadata only: sdlab finds the exercise cells by it
    _submit("bare", release / "01_quiz.ipynb", {"double": _answers(solutions / "01_quiz.ipynb")["double"]},
            folder, subs, keep_sdlab_metadata=False)
    _nbgrader(folder, "autograde", ASSIGNMENT)
    report = grading.grade([subs], solutions, tmp_path / "report", timeout=300,
                           parameters={"model": "tiny-random"}, progress=False)

    sdlab_points = {(r.student, r.notebook, r.exercise): (r.points, r.max) for r in report.rows}
    nbgrader_points = _nbgrader_points(folder, solutions, {(s, n) for s, n, _ in sdlab_points})
    assert nbgrader_points == sdlab_points
    totals = {(s, n): sum(p for (s2, n2, _), (p, _) in sdlab_points.items() if (s2, n2) == (s, n))
              for s, n, _ in sdlab_points}
    assert totals == {("perfect", "01_quiz"): 4, ("blank", "01_quiz"): 0, ("half", "00_setup"): 1,
                      ("half", "01_quiz"): 1, ("bare", "01_quiz"): 1}
    statuses = {(r.student, r.notebook, r.exercise): r.status for r in report.rows}
    assert [statuses["bare", "01_quiz", e] for e in ("double", "squares")] == ["passed", "failed"]
    assert [statuses["half", "01_quiz", e] for e in ("double", "squares")] == ["passed", "failed"]
    assert {statuses["perfect", n, e] for (s, n, e) in statuses if s == "perfect"} == {"passed"}


# 3. Publishing from a copy

def _copy_course(tmp_path: Path) -> Path:
    """The course's notebooks in a folder of their own, with a pyproject.toml that names no repository."""
    root = tmp_path / "course"
    for folder in ("solutions", "notebooks"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("*.md", "*.cfg"))
    (root / "pyproject.toml").write_text('[project]\nname = "sdlab"\n')
    return root


def _course_cli(root: Path, *args: str) -> int:
    return cli.main(["course", *args, "--solutions", str(root / "solutions"), "--notebooks", str(root / "notebooks")])


def test_build_with_repo_points_every_notebook_at_the_copy_and_remembers_it(tmp_path, capsys):
    root = _copy_course(tmp_path)
    pyproject = (root / "pyproject.toml").read_text()
    assert _course_cli(root, "build", "--repo", "you/my-sdlab@fall-2026") == 0
    assert (root / "pyproject.toml").read_text().startswith(pyproject)
    assert course.read_repo(root) == course.Repo("you", "my-sdlab", "fall-2026")
    for path in sorted(root.glob("*/[0-9][0-9]_*.ipynb")):
        text = "".join(c.source for c in nbformat.read(path, as_version=4).cells)
        assert f"https://colab.research.google.com/github/you/my-sdlab/blob/fall-2026/notebooks/{path.name}" in text
        assert "@ git+https://github.com/you/my-sdlab@fall-2026\"" in text
        assert "sdlab-course" not in text
    install = nbformat.read(root / "notebooks" / "06_face_repair.ipynb", as_version=4).cells[1].source
    assert '"sdlab[course,faces] @ git+https://github.com/you/my-sdlab@fall-2026"' in install  # its extras kept
    # remembered: a later build writes nothing, check agrees, and a notebook pointing elsewhere is flagged
    capsys.readouterr()
    assert _course_cli(root, "build") == 0 and capsys.readouterr().out == ""
    assert course.check(root / "solutions", root / "notebooks") == []
    blank = root / "notebooks" / "03_steps.ipynb"
    blank.write_text(blank.read_text().replace("you/my-sdlab/blob/fall-2026", "sdlab-course/sdlab/blob/main"))
    assert course.check(root / "solutions", root / "notebooks") == [
        f"{blank} is out of date with {root / 'solutions' / '03_steps.ipynb'}: run `sdlab course build`",
        f"{blank} has a Colab link or install cell that points elsewhere than you/my-sdlab@fall-2026 "
        f"(the repository in pyproject.toml): run `sdlab course build`"]
    # another repository, the default branch: one line of pyproject.toml changes
    assert _course_cli(root, "build", "--repo", "school/sd-course") == 0
    assert (root / "pyproject.toml").read_text() == pyproject + (
        "\n[tool.sdlab]\n# where the course is published: the notebooks' Colab badges and install cells point "
        "here (sdlab course build --repo)\nrepo = \"school/sd-course@main\"\n")
    assert "github/school/sd-course/blob/main/notebooks/03_steps.ipynb" in blank.read_text()
    assert course.check(root / "solutions", root / "notebooks") == []


@pytest.mark.parametrize("repo", ["you", "https://github.com/you/sdlab", "you/sdlab/extra", "-you/sdlab",
                                  "you/sdlab@", "you/sdlab@../main", "you/sdlab@-x", "you/sdlab.git", "you/ sdlab"])
def test_a_repository_not_in_owner_name_branch_form_is_refused(tmp_path, capsys, repo):
    root = _copy_course(tmp_path)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(SdlabInputError, match=r"must be OWNER/NAME or OWNER/NAME@BRANCH"):
        course.build(root / "solutions", root / "notebooks", repo=repo)
    assert _course_cli(root, "build", f"--repo={repo}") == 2
    assert "OWNER/NAME@BRANCH" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert _course_cli(root, "check", "--repo", "you/sdlab") == 2


def test_the_remembered_repository_is_one_line_of_the_sdlab_table(tmp_path):
    text = '[project]\nname = "x"\n\n[tool.sdlab]\nother = 1\n\n[tool.ruff]\nline-length = 119\n'
    (tmp_path / "pyproject.toml").write_text(text)
    assert course.read_repo(tmp_path) is None
    course.remember_repo(tmp_path, course.parse_repo("a/b@dev/x"))
    assert (tmp_path / "pyproject.toml").read_text() == text.replace("other = 1", 'repo = "a/b@dev/x"\nother = 1')
    course.remember_repo(tmp_path, course.parse_repo("c/d"))
    assert (tmp_path / "pyproject.toml").read_text() == text.replace("other = 1", 'repo = "c/d@main"\nother = 1')
    assert course.read_repo(tmp_path) == course.Repo("c", "d", "main")
    (tmp_path / "pyproject.toml").write_text(text.replace("other = 1", "repo = 'not a repo'"))
    with pytest.raises(SdlabInputError, match=r"pyproject.toml, \[tool.sdlab\] repo: the repository must be"):
        course.read_repo(tmp_path)
