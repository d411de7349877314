"""Submissions as instructors get them: named by student alone, or as Canvas, Moodle and GitHub Classroom
download them. Matching needs no grading: it runs on copies of the course's blank notebooks, against solutions/."""
import shutil

import nbformat
import pytest
from test_grading import ROOT

from sdlab import grading
from sdlab.errors import SdlabInputError

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
