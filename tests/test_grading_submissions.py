"""Submissions as instructors get them (named by student alone, Canvas, Moodle, GitHub Classroom), the
per-student totals for a gradebook, and feedback pages that students can be given: no hidden test in them.

Matching needs no grading: it runs on copies of the course's blank notebooks, against solutions/. One
small class of the arithmetic course (tests/test_grading.py) is graded with real kernels."""
import csv
import html
import re
import shutil

import nbformat
import pytest
from test_grading import ROOT, TIMEOUT, _arithmetic_course, _code, _hidden, _solution, _submit

from sdlab import cli, grading
from sdlab.errors import SdlabInputError
from sdlab.grading import course
from sdlab.grading.pages import WITHHELD, without_quotes
from sdlab.grading.totals import totals

BLANKS = ROOT / "notebooks"


def _copy(source, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, path)
    return path


def _found(paths, against=ROOT / "solutions"):
    return {(s.student, s.notebook) for s in grading.find_submissions(paths, against)}


def test_a_notebook_named_by_its_student_alone_is_matched_by_its_exercises(tmp_path):
    subs = tmp_path / "subs"
    alice = _copy(BLANKS / "02_seeds_and_latents.ipynb", subs / "alice.ipynb")
    bob = _copy(BLANKS / "01_loading.ipynb", subs / "bob (1).ipynb")
    expected = {("alice", "02_seeds_and_latents"), ("bob", "01_loading")}
    assert _found([alice, bob]) == _found([subs]) == expected  # `sdlab grade subs/*.ipynb`, or the folder
    # nbgrader's grade_id names an exercise too (a notebook released by nbgrader carries no sdlab metadata)
    nb = nbformat.read(BLANKS / "03_steps.ipynb", as_version=4)
    for cell in nb.cells:
        exercise = cell.metadata.pop("sdlab", {}).get("exercise")
        if exercise:
            cell.metadata["nbgrader"] = {"grade_id": exercise, "solution": True}
    nbformat.write(nb, subs / "erin.ipynb")
    assert ("erin", "03_steps") in _found([subs])
    # the name decides when it names a notebook; the cells only when it names none
    _copy(BLANKS / "01_loading.ipynb", tmp_path / "folders" / "carol" / "02_seeds_and_latents.ipynb")
    _copy(BLANKS / "01_loading.ipynb", tmp_path / "folders" / "dave" / "homework.ipynb")
    (tmp_path / "folders" / "dave" / "notes.ipynb").write_text("{}")  # a student's own: graded as unmatched
    assert _found([tmp_path / "folders"]) == \
        {("carol", "02_seeds_and_latents"), ("dave", "01_loading"), ("dave", "notes")}


@pytest.mark.parametrize("content", ["{}", '{"cells": [ not JSON', "mixed"])
def test_a_notebook_no_name_or_exercise_matches_is_refused_with_the_conventions(tmp_path, content):
    path = tmp_path / "subs" / "frank.ipynb"
    path.parent.mkdir()
    if content == "mixed":  # one exercise of each of two notebooks: which is it?
        cells = [c for name in ("01_loading", "02_seeds_and_latents")
                 for c in nbformat.read(BLANKS / f"{name}.ipynb", as_version=4).cells
                 if c.metadata.get("sdlab", {}).get("exercise") in ("loop_of_three", "same_latents")]
        nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
        match = "frank.ipynb holds exercises of 01_loading and 02_seeds_and_latents: rename it"
    else:
        path.write_text(content)
        match = "frank.ipynb: neither its name nor its cells say which notebook it is"
    with pytest.raises(SdlabInputError, match=match) as refused:
        grading.find_submissions([path.parent], ROOT / "solutions")
    for convention in ("<student>/<notebook>.ipynb", "<notebook>/<student>.ipynb", "<student>_<notebook>.ipynb",
                       "Canvas", "Moodle", "GitHub Classroom"):
        assert convention in str(refused.value)


def test_canvas_moodle_and_github_classroom_downloads(tmp_path):
    blank = BLANKS / "02_seeds_and_latents.ipynb"
    canvas = tmp_path / "canvas"
    for name in ("alice_12345_67890_02_seeds_and_latents.ipynb",
                 "smithbob_late_23456_78901_02_seeds_and_latents-1.ipynb",  # late, and submitted twice
                 "carol_34567_89012_homework.ipynb"):  # a file renamed before upload: its cells say which
        _copy(blank, canvas / name)
    assert _found([canvas]) == {(s, "02_seeds_and_latents") for s in ("alice", "smithbob", "carol")}
    moodle = tmp_path / "moodle"
    _copy(blank, moodle / "Alice Smith_12345_assignsubmission_file_" / "02_seeds_and_latents.ipynb")
    _copy(blank, moodle / "Bob Jones_12346_assignsubmission_file_" / "my work.ipynb")
    _copy(blank, moodle / "Alice Smith_12345_assignsubmission_file_" / ".ipynb_checkpoints" / "x.ipynb")
    assert _found([moodle]) == {("Alice Smith", "02_seeds_and_latents"), ("Bob Jones", "02_seeds_and_latents")}
    jeans = tmp_path / "jeans"  # folders that all start with "Jean-", but are no GitHub Classroom repos
    _copy(blank, jeans / "Jean-Luc Picard_12347_assignsubmission_file_" / "02_seeds_and_latents.ipynb")
    _copy(blank, jeans / "Jean-Paul Sartre_12348_assignsubmission_file_" / "02_seeds_and_latents.ipynb")
    assert _found([jeans]) == {(s, "02_seeds_and_latents") for s in ("Jean-Luc Picard", "Jean-Paul Sartre")}
    # one repo per student, <assignment>-<GitHub user>, notebooks in notebooks/ or at the root
    classroom = tmp_path / "classroom"
    _copy(blank, classroom / "seeds-lab-alice" / "notebooks" / "02_seeds_and_latents.ipynb")
    _copy(blank, classroom / "seeds-lab-bob-2" / "02_seeds_and_latents.ipynb")
    _copy(BLANKS / "01_loading.ipynb", classroom / "seeds-lab-carol" / "notebooks" / "01_loading.ipynb")
    (classroom / "seeds-lab-carol" / "README.md").write_text("hi")
    assert _found([classroom]) == \
        {("alice", "02_seeds_and_latents"), ("bob-2", "02_seeds_and_latents"), ("carol", "01_loading")}
    # one repo at a time (a Slurm task per student) names the same student: the prefix is read beside it
    assert _found([classroom / "seeds-lab-alice"]) == {("alice", "02_seeds_and_latents")}
    assert _found([classroom / "seeds-lab-bob-2" / "02_seeds_and_latents.ipynb"]) == \
        {("bob-2", "02_seeds_and_latents")}
    _copy(blank, tmp_path / "lone" / "seeds-lab-zoe" / "notebooks" / "02_seeds_and_latents.ipynb")
    assert _found([tmp_path / "lone"]) == {("seeds-lab-zoe", "02_seeds_and_latents")}  # no others: no prefix


def test_totals_have_a_row_per_student_and_a_column_per_notebook():
    rows = [grading.Grade("ann", "00_a", "x", 1, 1, "passed"), grading.Grade("ann", "00_a", "y", 0, 2, "failed"),
            grading.Grade("ann", "01_b", "z", 0.5, 1, "passed"), grading.Grade("ben", "00_a", "x", 1, 1, "passed"),
            grading.Grade("ben", "00_a", "y", 2, 2, "passed"), grading.Grade("ben", "notes", "", 0, 0, "unmatched")]
    assert totals(rows) == [["student", "00_a", "01_b", "total", "max", "percent"],
                            ["ann", "1", "0.5", "1.5", "4", "37.5"],
                            ["ben", "3", "", "3", "4", "75.0"]]  # 01_b not handed in: empty, 0 of its point


def test_a_message_never_quotes_a_line_of_a_hidden_test_even_cut_short():
    lines = ["assert squares == [i * i for i in range(n)]", "assert len(squares) == n, 'squares should hold 4 items'"]
    assert without_quotes("AssertionError: assert squares == [i * i for i in range(n)]; the self-check said: x",
                          lines) == f"AssertionError: {WITHHELD}; the self-check said: x"
    assert without_quotes("AssertionError: assert squares == [i * i f…", lines) == f"AssertionError: {WITHHELD}"
    kept = "AssertionError: squares should hold 4 items"  # the test's own message is meant for the student
    assert without_quotes(kept, lines) == kept


def _more_course(solutions):
    """A second notebook beside 00_arith, so that totals.csv has two columns."""
    nb = nbformat.v4.new_notebook(cells=[
        _code("n = 3", parameters=True),
        _code(_solution("tripled = 3 * n"), exercise="triple", hint="3 * n"),
        _code(_hidden("assert ask('tripled') == 3 * ask('n'), 'tripled is not three times n'"), grade="triple",
              points=2)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, solutions / "01_more.ipynb")
    course.build(solutions, solutions.parent / "notebooks")


SNEAKY = """import inspect
class Sneaky(list):
    def __eq__(self, other):  # says the line that compares it: a hidden test's
        raise AssertionError(inspect.stack()[1].code_context[0])
squares = Sneaky()"""

SNOOP = ["print(*In, sep='\\n')", "%history",
         "import html\nfrom IPython.display import HTML\nHTML('<pre>' + html.escape('\\n'.join(In)) + '</pre>')"]


@pytest.fixture(scope="module")
def flat_class(tmp_path_factory):
    """`sdlab grade subs/*.ipynb` of notebooks named by their students, graded with real kernels."""
    tmp = tmp_path_factory.mktemp("flat")
    solutions = _arithmetic_course(tmp / "course")
    _more_course(solutions)
    blank, subs = tmp / "course" / "notebooks" / "00_arith.ipynb", tmp / "subs"
    _copy(_submit(tmp / "made", "alice", solutions / "00_arith.ipynb"), subs / "alice.ipynb")
    _copy(_submit(tmp / "made", "alice", solutions / "01_more.ipynb"), subs / "alice_01_more.ipynb")
    script = nbformat.v4.new_markdown_cell("<script>document.body.innerHTML = 'all passed'</script>")
    _copy(_submit(tmp / "made", "bob", blank, cells=[(0, script)]), subs / "bob.ipynb")
    sneaky = _submit(tmp / "made", "snoop", solutions / "00_arith.ipynb", {"squares": SNEAKY})
    nb = nbformat.read(sneaky, as_version=4)
    nb.cells += [nbformat.v4.new_code_cell(code) for code in SNOOP]
    nbformat.write(nb, subs / "snoop.ipynb")
    out = tmp / "report"
    argv = ["grade", *map(str, sorted(subs.glob("*.ipynb"))), "--against", str(solutions), "--out", str(out),
            "--timeout", str(TIMEOUT), "--model", "tiny-random", "-p", "n", "4"]
    assert cli.main(argv) == 0
    return tmp, solutions, out


def _grades(out):
    with open(out / "grades.csv", newline="") as f:
        return {(r["student"], r["notebook"], r["exercise"]): r for r in csv.DictReader(f)}


def test_notebooks_named_by_their_students_are_graded_as_theirs(flat_class):
    tmp, _, out = flat_class
    rows = _grades(out)
    assert {s for s, _, _ in rows} == {"alice", "bob", "snoop"}  # not one student "subs" with 0/0
    assert [(rows["alice", "00_arith", e]["points"], rows["alice", "00_arith", e]["status"])
            for e in ("double", "squares", "greeting")] == [("1", "passed"), ("2", "passed"), ("1", "passed")]
    assert rows["alice", "01_more", "triple"]["points"] == "2"
    assert {rows["bob", "00_arith", e]["status"] for e in ("double", "squares", "greeting")} == {"unfinished"}
    with open(out / "totals.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table == [["student", "00_arith", "01_more", "total", "max", "percent"],
                     ["alice", "4", "2", "6", "6", "100.0"], ["bob", "0", "", "0", "6", "0.0"],
                     ["snoop", "2", "", "2", "6", "33.3"]]
    index = (out / "index.html").read_text()
    for link in ("totals.csv", "grades.csv", "alice/00_arith.html", "alice/00_arith.feedback.html",
                 "alice/01_more.feedback.html", "bob/00_arith.feedback.html"):
        assert f"href='{link}'" in index
    assert "href='00_arith.feedback.html'" in (out / "bob" / "index.html").read_text()


def test_a_file_nothing_matches_is_refused_before_grading(flat_class, tmp_path, capsys):
    tmp, solutions, _ = flat_class
    (tmp_path / "subs").mkdir()
    shutil.copy(tmp / "subs" / "alice.ipynb", tmp_path / "subs" / "alice.ipynb")
    nbformat.write(nbformat.v4.new_notebook(cells=[_code("print('hi')")]), tmp_path / "subs" / "zed.ipynb")
    argv = ["grade", *map(str, sorted((tmp_path / "subs").glob("*.ipynb"))), "--against", str(solutions),
            "--out", str(tmp_path / "report")]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert "zed.ipynb: neither its name nor its cells say which notebook it is" in error and "Canvas" in error
    assert not (tmp_path / "report").exists()


def _text(page: str) -> str:
    """What a page says, as a reader (or a search) sees it: no tags (nbconvert colours code with
    spans), no escapes, spaces evened out."""
    return " ".join(html.unescape(re.sub(r"<[^>]*>", "", page)).split())


def test_feedback_pages_show_the_students_notebook_and_no_hidden_test(flat_class):
    tmp, solutions, out = flat_class
    hidden = [" ".join(line.split()) for name in ("00_arith", "01_more")
              for test in grading.hidden_tests(nbformat.read(solutions / f"{name}.ipynb", as_version=4))
              for line in test.source.splitlines() if line.strip()]
    assert len(hidden) == 4
    pages = sorted(out.glob("*/*.feedback.html"))
    assert [p.relative_to(out).as_posix() for p in pages] == \
        ["alice/00_arith.feedback.html", "alice/01_more.feedback.html", "bob/00_arith.feedback.html",
         "snoop/00_arith.feedback.html"]
    for page in pages:
        raw = page.read_text()
        for line in hidden:
            assert line not in raw and line not in _text(raw), f"{page} shows the hidden test line {line!r}"
        assert "hidden tests of" not in raw
        # the grep finds them where they are: on the instructor's page of the same notebook
        assert any(line in _text(page.with_name(page.name.replace(".feedback", "")).read_text()) for line in hidden)
    alice = _text((out / "alice" / "00_arith.feedback.html").read_text())
    assert "alice · 00_arith: 4/4 points" in alice and "print(doubled)" in alice  # her notebook, as it ran
    assert grading.STATUSES["passed"] in alice
    bob = (out / "bob" / "00_arith.feedback.html").read_text()
    assert grading.STATUSES["unfinished"] in _text(bob) and "NotImplementedError: Exercise 'double'" in _text(bob)
    assert "<script>document.body" not in bob and "&lt;script&gt;document.body" in bob  # shown, not run
    more = _text((out / "alice" / "01_more.feedback.html").read_text())
    assert "alice · 01_more: 2/2 points" in more
    # student code that prints the kernel's history finds no hidden test there (they run in the judge), and a
    # value whose == would quote its caller is judged as data (a list), never compared in the kernel
    snoop = (out / "snoop" / "00_arith.feedback.html").read_text()
    assert "print(*In, sep=" in _text(snoop) and "%history" in _text(snoop) and WITHHELD not in _text(snoop)
    message = _grades(out)["snoop", "00_arith", "squares"]["message"]
    assert message.startswith("a hidden test failed: AssertionError") and "range(n)" not in message
    assert "squares has 0 items, n is 4" in message  # the self-check still speaks
