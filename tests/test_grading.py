"""Grading a class: every kind of submission gets the right score and reason, the batch always
completes, parallel grading writes the same CSV as serial, and no submission touches the repo.

Two fixture classes are made at test time: submissions of the real 00_setup (from solutions/ and
notebooks/), and of a small arithmetic course built here (three exercises, no torch, so the
timeouts and partial scores cost seconds)."""
import csv
import hashlib
import json
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

from sdlab import grading
from sdlab.errors import SdlabInputError
from sdlab.grading import batch, course, judge_server
from sdlab.grading import outputs as grading_outputs

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 5  # seconds a cell may run in the arithmetic class; its cells take milliseconds


def _code(source, **sdlab):
    cell = nbformat.v4.new_code_cell(source)
    if sdlab.pop("parameters", False):
        cell.metadata["tags"] = ["parameters"]
    if sdlab:
        cell.metadata["sdlab"] = sdlab
    return cell


def _solution(code):
    return f"{course.BEGIN_SOLUTION}\n{code}\n{course.END_SOLUTION}"


def _hidden(code):
    return f"{course.BEGIN_HIDDEN}\n{code}\n{course.END_HIDDEN}"


def _arithmetic_course(root: Path) -> Path:
    """root/solutions/00_arith.ipynb (3 exercises, 4 points), its blank, and root/images/."""
    (root / "images").mkdir(parents=True)
    (root / "images" / "hello.txt").write_text("hello")
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 00 · Arithmetic"),
        _code("n = 3", parameters=True),
        _code(_solution("doubled = 2 * n"), exercise="double", hint="2 * n"),
        _code("print(doubled)"),
        _code(_hidden('assert ask("doubled") == 2 * ask("n")'), grade="double", points=1),
        _code(_solution("squares = [i * i for i in range(n)]"), exercise="squares", hint="i * i"),
        _code("assert len(squares) == n, f'squares has {len(squares)} items, n is {n}'"),
        _code(_hidden('assert ask("squares") == [i * i for i in range(ask("n"))]'), grade="squares", points=2),
        # the markers as nbgrader also reads them: any comment line that holds BEGIN SOLUTION, …
        _code('#BEGIN SOLUTION\ngreeting = open("../images/hello.txt").read()\n# END SOLUTION',
              exercise="greeting", hint="read it"),
        _code("## BEGIN HIDDEN TESTS\nassert ask('greeting') == 'hello'\n## END HIDDEN TESTS", grade="greeting",
              points=1),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (root / "solutions").mkdir()
    nbformat.write(nb, root / "solutions" / "00_arith.ipynb")
    course.build(root / "solutions", root / "notebooks")
    return root / "solutions"


def _submit(folder: Path, student: str, source: Path, answers: dict[str, str] | None = None,
            extra: list[tuple[int, str]] = (), cells: list[tuple[int, nbformat.NotebookNode]] = ()) -> Path:
    """folder/student/<source name>: `source` with some exercise cells replaced by `answers`
    and `extra` code cells (position, code) or other `cells` (position, cell) inserted."""
    nb = nbformat.read(source, as_version=4)
    for cell in nb.cells:
        name = cell.metadata.get("sdlab", {}).get("exercise")
        if name in (answers or {}):
            cell.source = answers[name]
    for position, code in extra:
        nb.cells.insert(position, nbformat.v4.new_code_cell(code))
    for position, cell in cells:
        nb.cells.insert(position, cell)
    path = folder / student / source.name
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _answers(solution: Path) -> dict[str, str]:
    """exercise → the solution's exercise cell, in the notebook's order."""
    return {c.metadata["sdlab"]["exercise"]: c.source for c in nbformat.read(solution, as_version=4).cells
            if "exercise" in c.metadata.get("sdlab", {})}


def _rows(out: Path) -> dict[tuple[str, str], dict]:
    with open(out / "grades.csv", newline="") as f:
        return {(r["student"], r["exercise"]): r for r in csv.DictReader(f)}


def _fingerprint(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


VANDAL = """import pathlib, shutil
shutil.rmtree('../solutions', ignore_errors=True)
shutil.rmtree('../images', ignore_errors=True)
for p in pathlib.Path('..').rglob('*.ipynb'):
    p.unlink()
pathlib.Path('../../escaped.txt').write_text('out')
pathlib.Path('../solutions').mkdir(exist_ok=True)
for name in ('00_arith', '00_setup'):
    pathlib.Path(f'../solutions/{name}.ipynb').write_text('{}')"""


CHATTY = """doubled = 2 * n
for i in range(100_000):
    print(f"line {i}: " + "x" * 40)
'y' * 1_000_000"""


@pytest.fixture(scope="module")
def arithmetic_class(tmp_path_factory):
    """The arithmetic course and one submission of each kind, graded serially and with 2 jobs."""
    tmp = tmp_path_factory.mktemp("arith")
    solutions = _arithmetic_course(tmp / "course")
    solution, blank, subs = solutions / "00_arith.ipynb", tmp / "course" / "notebooks" / "00_arith.ipynb", tmp / "subs"
    stuck = "import time\nwhile True:\n    try:\n        time.sleep(0.05)\n    except KeyboardInterrupt:\n        pass"
    _submit(subs, "perfect", solution)
    _submit(subs, "blank", blank)
    _submit(subs, "partial", blank, {"double": "doubled = n + n"})
    _submit(subs, "raising", solution, {"double": "doubled = 2 * m"})
    _submit(subs, "wrong", solution, {"squares": "squares = [i * i for i in range(1, n)]"})
    _submit(subs, "looping", solution, {"double": "while True:\n    pass"})
    _submit(subs, "stuck", solution, {"double": stuck})
    _submit(subs, "vandal", solution, extra=[(2, VANDAL)])
    _submit(subs, "exiting", solution, {"squares": "import os\nos._exit(1)"})
    # grading metadata of a student's own: a bonus cell, points as text, "sdlab" as a string
    _submit(subs, "cheat", solution, cells=[
        (len(nbformat.read(solution, as_version=4).cells), _code("pass", grade="bonus", points=100)),
        (4, _code("pass", grade="double", points="1")),
        (0, nbformat.v4.new_markdown_cell("hi", metadata={"sdlab": "grade"})),
        (1, nbformat.v4.new_markdown_cell("<script>document.body.innerHTML = 'all passed'</script>"))])
    # right answers followed by an error, or by sys.exit(0), in the exercise cell: the tests decide
    _submit(subs, "late", solution, {"double": "doubled = 2 * n\nundefined_debug_name",
                                     "squares": "squares = [i * i for i in range(n)]\nimport sys\nsys.exit(0)"})
    _submit(subs, "chatty", solution, {"double": CHATTY})
    odd = nbformat.v4.new_notebook(cells=[_code("pass")])
    odd.cells[0].source, odd.cells[0].metadata = 5, []  # JSON, but no notebook: grading it raises
    (subs / "odd").mkdir()
    (subs / "odd" / "00_arith.ipynb").write_text(json.dumps(odd))
    (subs / "corrupted").mkdir()
    (subs / "corrupted" / "00_arith.ipynb").write_text('{"cells": [ this is not JSON')
    (subs / "stray").mkdir()
    (subs / "stray" / "99_other.ipynb").write_text("{}")
    repo, course_files = _fingerprint(*(ROOT / d for d in ("solutions", "notebooks", "images"))), _fingerprint(tmp)
    kwargs = dict(timeout=TIMEOUT, parameters={"n": 4, "model": "tiny-random"}, progress=False)
    # both gradings at once (as two instructors sharing a machine would): most of their time is spent waiting on the
    # looping and stuck students' timeouts
    with ThreadPoolExecutor(1) as other:
        parallel = other.submit(grading.grade, [subs], solutions, tmp / "parallel", jobs=2, **kwargs)
        serial = grading.grade([subs], solutions, tmp / "serial", jobs=1, **kwargs)
        return tmp, serial, parallel.result(), (repo, course_files)


def test_each_kind_of_submission_gets_its_score_and_reason(arithmetic_class):
    tmp, serial, _, _ = arithmetic_class
    rows = _rows(tmp / "serial")

    def grade(student, exercise):
        r = rows[(student, exercise)]
        return int(r["points"]), int(r["max"]), r["status"], r["message"]

    assert [grade("perfect", e)[:3] for e in ("double", "squares", "greeting")] == \
        [(1, 1, "passed"), (2, 2, "passed"), (1, 1, "passed")]  # greeting reads ../images/ in its copy
    for e in ("double", "squares", "greeting"):
        assert grade("blank", e)[2] == "unfinished" and grade("blank", e)[0] == 0
        assert f"NotImplementedError: Exercise '{e}'" in grade("blank", e)[3]
        assert grade("corrupted", e)[:3] == (0, grade("perfect", e)[1], "invalid")
        assert "not a valid notebook" in grade("corrupted", e)[3]
    assert [grade("partial", e)[2] for e in ("double", "squares", "greeting")] == \
        ["passed", "unfinished", "unfinished"]
    # an error stops nothing: the later exercises are still graded in the same kernel
    assert grade("raising", "double")[2:] == ("error", "NameError: name 'm' is not defined")
    assert grade("raising", "squares")[2] == grade("raising", "greeting")[2] == "passed"
    status, message = grade("wrong", "squares")[2:]
    # the message says what failed, not the hidden test's line (the CSV goes to students)
    assert status == "failed" and message.startswith("a hidden test failed: AssertionError")
    assert "range(n)" not in message and "assert" not in message
    assert "the self-check said: AssertionError: squares has 3 items, n is 4" in message  # n injected
    assert grade("looping", "double")[2] == "timeout" and f"after {TIMEOUT} s" in grade("looping", "double")[3]
    assert grade("looping", "squares")[2] == "passed"  # the interrupt stopped the loop
    assert grade("stuck", "double")[2] == "timeout"
    assert grade("stuck", "squares")[2:] == ("not run", f"In [3] ran past {TIMEOUT} s and would not stop")
    assert grade("exiting", "double")[2] == "passed"
    assert grade("exiting", "squares")[2:] == \
        ("not run", "the kernel died in In [5] (did it exit, or run out of memory?)")  # hidden tests take no In [N]
    assert rows[("stray", "")]["status"] == "unmatched"
    # a student's own grading metadata scores nothing and breaks nothing
    assert {e: grade("cheat", e)[:3] for e in ("double", "squares", "greeting")} == \
        {"double": (1, 1, "passed"), "squares": (2, 2, "passed"), "greeting": (1, 1, "passed")}
    assert sorted(e for s, e in rows if s == "cheat") == ["double", "greeting", "squares"]
    page = (tmp / "serial" / "cheat" / "00_arith.html").read_text()
    assert "<script>document.body" not in page and "&lt;script&gt;document.body" in page  # shown, not run
    assert "<table" in page and "points</h2>" in page  # the grader's own summary is kept as HTML
    # an error (or sys.exit) after a right answer: the hidden tests passed, so the points count
    assert [grade("late", e)[:3] for e in ("double", "squares")] == [(1, 1, "passed"), (2, 2, "passed")]
    assert grade("chatty", "double")[:3] == (1, 1, "passed")
    assert [grade("odd", e)[2] for e in ("double", "squares", "greeting")] == ["invalid"] * 3
    assert "not a valid notebook" in grade("odd", "double")[3]
    assert serial.graded == 15 and sum(r.points for r in serial.rows) == 4 + 1 + 3 + 2 + 3 + 3 + 1 + 4 + 4 + 4
    assert "graded 15 notebook(s)" in serial.line() and "1 unmatched" in serial.line()


def test_parallel_grading_writes_the_same_csv_and_report(arithmetic_class):
    tmp, _, parallel, _ = arithmetic_class
    assert (tmp / "parallel" / "grades.csv").read_text() == (tmp / "serial" / "grades.csv").read_text()
    assert parallel.graded == 15


def test_report_pages_and_parameters(arithmetic_class):
    tmp, serial, _, _ = arithmetic_class
    out = tmp / "serial"
    index = (out / "index.html").read_text()
    assert "href='wrong/index.html'" in index and "href='wrong/00_arith.html'" in index
    page = (out / "wrong" / "00_arith.html").read_text()
    assert "wrong · 00_arith: 2/4 points" in page and "squares has 3 items" in page
    executed = nbformat.read(out / "wrong" / "00_arith.ipynb", as_version=4)
    injected = [c.source for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "n = 4" in injected[0] and "model" not in injected[0]
    # each hidden test runs right after its exercise's self-check, as in the solution
    sources = [c.source for c in executed.cells if c.cell_type == "code"]
    at = sources.index("# hidden tests of 'squares' (2 points)\n"
                       'assert ask("squares") == [i * i for i in range(ask("n"))]')
    assert sources[at - 1].startswith("assert len(squares) == n")
    # it ran in the judge: the kernel never saw it, and the page says how it went
    test = executed.cells[[c.source for c in executed.cells].index(sources[at])]
    assert test.execution_count is None and [o.get("ename") for o in test.outputs] == ["AssertionError"]
    assert json.loads((out / "corrupted" / "00_arith.grade.json").read_text())["grades"][0]["status"] == "invalid"
    # with no submissions, the report is rebuilt from what the folder holds
    (out / "grades.csv").unlink()
    again = grading.grade([], tmp / "course" / "solutions", out, progress=False)
    assert again.graded == 0 and (out / "grades.csv").read_text() == (tmp / "parallel" / "grades.csv").read_text()


def test_each_cells_outputs_are_cut_to_size(arithmetic_class):
    tmp, _, _, _ = arithmetic_class
    out = tmp / "serial"
    executed = nbformat.read(out / "chatty" / "00_arith.ipynb", as_version=4)
    cell = next(c for c in executed.cells if c.metadata.get("sdlab", {}).get("exercise") == "double")
    streams = [o for o in cell.outputs if o.output_type == "stream"]
    assert [o.name for o in streams] == ["stdout"]  # 5 MB printed: the first 10,000 characters kept, one note
    text = streams[0].text
    assert text.startswith("line 0: xxxx") and text.count(grading_outputs.CUT) == 1
    assert len(text) < grading_outputs.MAX_CHARS + 200 and text.count("\n") <= grading_outputs.MAX_LINES + 2
    result = next(o for o in cell.outputs if o.output_type == "execute_result").data["text/plain"]
    assert result.startswith("'yyyy") and grading_outputs.CUT in result
    assert len(result) < grading_outputs.MAX_CHARS + 100
    assert (out / "chatty" / "00_arith.ipynb").stat().st_size < 60_000
    assert (out / "chatty" / "00_arith.html").stat().st_size < \
        (out / "perfect" / "00_arith.html").stat().st_size + 60_000


def test_students_whose_report_folders_would_be_one_are_refused(arithmetic_class, tmp_path):
    tmp, _, _, _ = arithmetic_class
    solutions = tmp / "course" / "solutions"
    for student in ("kim lee", "kim_lee"):
        _submit(tmp_path / "subs", student, solutions / "00_arith.ipynb")
    with pytest.raises(SdlabInputError, match=r"students 'kim lee' \(.*kim lee/00_arith.ipynb\) and 'kim_lee' "
                                              r"\(.*\) would share the report folder .*kim_lee: rename one"):
        grading.grade([tmp_path / "subs"], solutions, tmp_path / "report", progress=False)
    assert not (tmp_path / "report").exists()  # refused before any grading
    # a report that already holds the grades of a student in that folder (another run, a cluster job)
    _submit(tmp_path / "later", "Perfect", solutions / "00_arith.ipynb")
    before = _fingerprint(tmp / "serial")
    with pytest.raises(SdlabInputError, match=r"students 'Perfect' .* and 'perfect' \(the grades in .*perfect"):
        grading.grade([tmp_path / "later"], solutions, tmp / "serial", progress=False)
    assert _fingerprint(tmp / "serial") == before


def test_the_kernels_temporary_files_go_with_its_folder(tmp_path, monkeypatch):
    solutions = tmp_path / "course" / "solutions"
    solutions.mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[
        _code(_solution("import tempfile\nscratch = tempfile.mkdtemp()\n"
                        "open(scratch + '/big.bin', 'wb').write(bytes(1000))"), exercise="scratch"),
        _code("print(scratch)"),
        _code(_hidden("import os\nfrom sdlab.grading.values import ask, inside_copy\n\n"
                      "assert os.path.getsize(inside_copy(ask('scratch')) / 'big.bin') == 1000"), grade="scratch"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, solutions / "00_tmp.ipynb")
    _submit(tmp_path / "subs", "tess", solutions / "00_tmp.ipynb")
    parent = tmp_path / "tmp"
    parent.mkdir()
    monkeypatch.setenv("TMPDIR", str(parent))  # where the kernel's files would go, left to itself
    monkeypatch.setattr(tempfile, "tempdir", str(parent))  # and the grader's own folders
    monkeypatch.setattr(judge_server, "_servers", {})  # this grading's server only: the others are kept
    monkeypatch.setattr(batch, "_batches", 1)  # as a process's second grading: it starts a judges' server
    report = grading.grade([tmp_path / "subs"], solutions, tmp_path / "report", timeout=60, progress=False)
    assert [(r.points, r.status) for r in report.rows] == [(1, "passed")]
    executed = nbformat.read(tmp_path / "report" / "tess" / "00_tmp.ipynb", as_version=4)
    scratch = next(c for c in executed.cells if c.source == "print(scratch)").outputs[0].text.strip()
    assert Path(scratch).parent.parent.parent == parent and Path(scratch).parent.name == "tmp"
    # the kernel's folder went with the submission's folder; the judges' server (kept for the next
    # grading) holds its own, removed when it ends
    assert [p.name[:13] for p in parent.iterdir()] == ["sdlab-judges-"]
    judge_server.close_servers()
    assert list(parent.iterdir()) == []


def test_course_markers_are_read_as_nbgrader_reads_them(tmp_path):
    solutions, blanks = tmp_path / "solutions", tmp_path / "notebooks"
    solutions.mkdir()
    nb = nbformat.v4.new_notebook(cells=[
        _code("x = 1\n# BEGIN SOLUTION\nsecret = 42\n# END SOLUTION", exercise="answer", hint="the answer"),
        _code("#BEGIN HIDDEN TESTS\nassert secret == 42\n  ##  END HIDDEN TESTS", grade="answer", points=2),
    ])
    nbformat.write(nb, solutions / "00_m.ipynb")
    assert course.build(solutions, blanks) == [solutions / "00_m.ipynb", blanks / "00_m.ipynb"]  # + nbgrader metadata
    blank = nbformat.read(blanks / "00_m.ipynb", as_version=4)
    assert [c.source for c in blank.cells] == [
        "x = 1\n# YOUR CODE HERE\nraise NotImplementedError(\"Exercise 'answer': the answer\")"]
    assert course.check(solutions, blanks) == []
    assert [(t.exercise, t.points, t.source) for t in grading.hidden_tests(nb)] == \
        [("answer", 2, "assert secret == 42")]
    # an exercise cell with no solution region: build writes nothing, check says so
    nb.cells[0].source = "secret = 42"
    nbformat.write(nb, solutions / "00_m.ipynb")
    (blanks / "00_m.ipynb").unlink()
    with pytest.raises(SdlabInputError, match=r"00_m.ipynb: the cell of exercise 'answer' has no ### BEGIN SOLUTION"):
        course.build(solutions, blanks)
    assert not (blanks / "00_m.ipynb").exists()
    assert [p for p in course.check(solutions, blanks) if "exercise 'answer' has no" in p]
    with pytest.raises(SdlabInputError, match="END SOLUTION marker has no ### BEGIN SOLUTION before it"):
        course.blank_source("x = 1\n# END SOLUTION")


def test_a_vandal_touches_only_its_own_copy(arithmetic_class):
    tmp, serial, _, (repo, course_files) = arithmetic_class
    rows = {r.exercise: r for r in serial.rows if r.student == "vandal"}
    assert rows["double"].status == rows["squares"].status == "passed"
    assert (rows["greeting"].status, rows["greeting"].message) == \
        ("error", "FileNotFoundError: [Errno 2] No such file or directory: '../images/hello.txt'")
    # the repo: every file still there and not vandalised (others may edit it meanwhile), images the same
    now = _fingerprint(*(ROOT / d for d in ("solutions", "notebooks", "images")))
    assert set(repo) <= set(now) and all(Path(f).read_text(errors="replace") != "{}" for f in repo)
    assert {k: v for k, v in now.items() if "/images/" in k} == {k: v for k, v in repo.items() if "/images/" in k}
    assert _fingerprint(tmp / "course", tmp / "subs") == course_files  # the solutions graded against, too
    assert not [p for p in (ROOT, ROOT.parent, tmp, tmp.parent) if (p / "escaped.txt").exists()]


def test_real_notebook_blank_and_half_done(tmp_path):
    """00_setup's blank and a half-done one (its solution scores full points in tests/test_notebooks.py)."""
    subs = tmp_path / "subs"
    solution, blank = ROOT / "solutions" / "00_setup.ipynb", ROOT / "notebooks" / "00_setup.ipynb"
    answers = _answers(solution)
    # the blank, with a grading cell of the student's own that claims 100 points: ignored
    _submit(subs, "bob", blank, cells=[(0, _code("pass", grade="bonus", points=100))])
    # one exercise answered, one answered and followed by an error in its cell (the tests decide), one left
    _submit(subs, "erin", blank, {"precision_rule": answers["precision_rule"],
                                  "count_parameters": answers["count_parameters"] + "\nundefined_debug_name"})
    report = grading.grade([subs], ROOT / "solutions", tmp_path / "report", timeout=300,
                           parameters={"model": "tiny-random"}, progress=False)
    exercises = {"precision_rule", "token_from_environment", "count_parameters"}
    rows = {(r.student, r.exercise): r for r in report.rows}
    assert len(report.rows) == 6 and {r.exercise for r in report.rows} == exercises
    for exercise in exercises:
        assert (rows["bob", exercise].points, rows["bob", exercise].status) == (0, "unfinished")
        assert f"Exercise '{exercise}'" in rows["bob", exercise].message
        half_done = (0, "unfinished") if exercise == "token_from_environment" else (1, "passed")
        assert (rows["erin", exercise].points, rows["erin", exercise].status) == half_done
    assert "erin · 00_setup: 2/3 points" in (tmp_path / "report" / "erin" / "00_setup.html").read_text()


def test_each_exercise_of_01_loading_is_graded_on_its_own(tmp_path):
    solution, blank = ROOT / "solutions" / "01_loading.ipynb", ROOT / "notebooks" / "01_loading.ipynb"
    answers = _answers(solution)
    for exercise in answers:
        _submit(tmp_path / "subs", f"only_{exercise}", blank, {exercise: answers[exercise]})
    report = grading.grade([tmp_path / "subs"], ROOT / "solutions", tmp_path / "report", timeout=300,
                           parameters={"model": "tiny-random", "num_inference_steps": 2}, progress=False)
    got = {(r.student, r.exercise): (r.points, r.max, r.status) for r in report.rows}
    maxima = {"loop_of_three": 1, "batch_of_three": 2, "my_strip": 1}
    assert set(answers) == set(maxima)
    assert got == {(f"only_{done}", exercise): (maxima[exercise] if exercise == done else 0, maxima[exercise],
                                                "passed" if exercise == done else "unfinished")
                   for done in maxima for exercise in maxima}


def test_submissions_are_matched_by_file_or_folder_name(tmp_path):
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    for name in ("00_setup", "01_loading"):
        (solutions / f"{name}.ipynb").write_text("{}")
    for path in ("a/alice/01_loading.ipynb", "a/00_setup/bob.ipynb", "a/carol_01_loading.ipynb",
                 "a/dave/notes.ipynb", "a/alice/.ipynb_checkpoints/01_loading-checkpoint.ipynb",
                 "a/lara/Copy of 00_setup.ipynb", "a/mia/Copy of 00_setup.ipynb"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("{}")
    found = {(s.student, s.notebook) for s in grading.find_submissions([tmp_path / "a"], solutions)}
    # in a student's folder, a file is that student's, whatever its name starts with
    assert found == {("alice", "01_loading"), ("bob", "00_setup"), ("carol", "01_loading"), ("dave", "notes"),
                     ("lara", "00_setup"), ("mia", "00_setup")}
    shutil.copy(tmp_path / "a/lara/Copy of 00_setup.ipynb", tmp_path / "a/lara/00_setup.ipynb")
    with pytest.raises(SdlabInputError, match="two submissions for lara's 00_setup: .*Copy of 00_setup.ipynb"):
        grading.find_submissions([tmp_path / "a"], solutions)
    (tmp_path / "a/lara/00_setup.ipynb").unlink()
    shutil.copy(tmp_path / "a/alice/01_loading.ipynb", tmp_path / "a/alice_01_loading.ipynb")
    with pytest.raises(SdlabInputError, match="two submissions for alice's 01_loading"):
        grading.find_submissions([tmp_path / "a"], solutions)
    with pytest.raises(SdlabInputError, match="not found"):
        grading.find_submissions([tmp_path / "missing"], solutions)


def test_a_report_folder_that_cannot_be_written_is_refused_before_grading(tmp_path, monkeypatch):
    (tmp_path / "alice").mkdir()
    shutil.copy(ROOT / "notebooks" / "01_loading.ipynb", tmp_path / "alice" / "01_loading.ipynb")
    (tmp_path / "report.txt").write_text("")
    graded = []
    monkeypatch.setattr("sdlab.grading.batch._grade_and_save", lambda *task: graded.append(task))
    with pytest.raises(SdlabInputError, match="--out .*report.txt is a file, not a folder: choose another --out"):
        grading.grade(tmp_path / "alice", ROOT / "solutions", tmp_path / "report.txt")
    assert graded == []  # no notebook ran only for its grade to be lost


def test_hidden_tests_go_back_after_their_exercise_and_self_check():
    solution = nbformat.read(ROOT / "solutions" / "01_loading.ipynb", as_version=4)
    tests = grading.hidden_tests(solution)
    assert [(t.exercise, t.points) for t in tests] == [("loop_of_three", 1), ("batch_of_three", 2), ("my_strip", 1)]
    assert course.BEGIN_HIDDEN not in tests[1].source and "len(batch_images)" in tests[1].source
    blank = nbformat.read(ROOT / "notebooks" / "01_loading.ipynb", as_version=4)
    nb = grading.with_hidden_tests(blank, tests)
    at = next(i for i, c in enumerate(nb.cells) if c.metadata.get("sdlab", {}).get("grade") == "batch_of_three")
    assert nb.cells[at - 1].source.startswith("import numpy as np\n\nchecks.images_list(batch_images")
    assert nb.cells[at - 2].metadata["sdlab"]["exercise"] == "batch_of_three"
    # a submitted copy of the solution keeps its hidden tests only once
    again = grading.with_hidden_tests(nbformat.read(ROOT / "solutions" / "01_loading.ipynb", as_version=4), tests)
    assert sum(course.BEGIN_HIDDEN in c.source or "grade" in c.metadata.get("sdlab", {}) for c in again.cells) == 3
