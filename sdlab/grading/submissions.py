"""Which submission is whose: a student and a notebook for every file, as instructors get them.

    find_submissions(["submissions/"], against="solutions")

A file's name says it first; these all mean alice's (or Alice Smith's) 01_loading:

- alice/01_loading.ipynb, 01_loading/alice.ipynb, alice_01_loading.ipynb (and Colab's
  "Copy of 01_loading.ipynb" in alice's folder: in a student's folder every notebook is theirs);
- Canvas: alice_12345_67890_01_loading.ipynb (the student, ids, then the name they uploaded, with
  `-1` when they submitted again) and alice_late_12345_67890_01_loading.ipynb;
- Moodle: "Alice Smith_12345_assignsubmission_file_/01_loading.ipynb";
- GitHub Classroom: hw1-alice/notebooks/01_loading.ipynb or hw1-alice/01_loading.ipynb, one repo per
  student named <assignment>-<GitHub user>: the student is what follows the prefix that the repo
  folders beside it all share.

When the name names no notebook (alice.ipynb, lara/homework.ipynb), the cells do: the exercise ids
they carry (`metadata.sdlab.exercise`, or nbgrader's `grade_id`) against each solution's.
"""
from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

from ..errors import SdlabInputError
from .notebook import Submission

CONVENTIONS = ("<student>/<notebook>.ipynb, <notebook>/<student>.ipynb, <student>_<notebook>.ipynb, "
               "Canvas's <student>_<ids>_<notebook>.ipynb, Moodle's <Full Name>_<id>_assignsubmission_file_/"
               "<notebook>.ipynb, or GitHub Classroom's <assignment>-<user>/notebooks/<notebook>.ipynb")
COPY = re.compile(r"(-\d+| \(\d+\))$")  # Canvas's -1 on a second submission, a browser's " (1)" on a second download
LMS_IDS = re.compile(r"_(?:late_)?\d+(?:_.*)?$")  # Canvas's _<user id>_<file id>, Moodle's _<id>_assignsubmission_…
GITHUB_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
CLASSROOM_LAYOUT = "notebooks"  # a GitHub Classroom repo may keep its notebooks in this folder


def student_name(name: str) -> str:
    """The student in a name an LMS gave: the part before the first `_` followed by digits
    ('alice_12345_67890' is alice, 'Alice Smith_12345_assignsubmission_file_' is Alice Smith)."""
    return LMS_IDS.sub("", name).strip("_-. ") or name


def exercise_ids(path: Path) -> set[str]:
    """The exercise ids a notebook's cells carry: sdlab's `exercise` and `grade`, nbgrader's `grade_id`.
    None (an empty set) from a file that is not a notebook."""
    try:
        cells = json.loads(Path(path).read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError, AttributeError):  # not UTF-8, not JSON, not a JSON object
        return set()
    ids = set()
    for cell in cells if isinstance(cells, list) else []:
        meta = cell.get("metadata") if isinstance(cell, dict) else None
        for key, field in (("sdlab", "exercise"), ("sdlab", "grade"), ("nbgrader", "grade_id")):
            part = meta.get(key) if isinstance(meta, dict) else None
            value = part.get(field) if isinstance(part, dict) else None
            if isinstance(value, str) and value:
                ids.add(value)
    return ids


def classroom_prefix(parent: Path) -> str:
    """The prefix GitHub Classroom gives every repo of an assignment ('hw1-' of hw1-alice and hw1-bob):
    the longest one, up to a '-', that all the folders in `parent` share, when what follows it in each
    is a GitHub user name. '' when they are not such repos (or fewer than two)."""
    try:
        names = [d.name for d in parent.iterdir() if d.is_dir() and not d.name.startswith(".")]
    except OSError:  # a folder we may not list
        return ""
    prefix = os.path.commonprefix(names)
    prefix = prefix[: prefix.rfind("-") + 1]
    if len(names) < 2 or not prefix or not all(GITHUB_USER.fullmatch(n[len(prefix):]) for n in names):
        return ""
    return prefix


def _notebooks(paths) -> list[tuple[Path, Path, bool]]:
    """(notebook, the folder that names its student, whether that folder is below one given) for each
    notebook given or under a folder given. A GitHub Classroom repo's notebooks/ names no one: the repo does."""
    def owner(path: Path) -> Path:
        folder = path.resolve().parent
        return folder.parent if folder.name == CLASSROOM_LAYOUT else folder

    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = [p for p in sorted(path.rglob("*.ipynb")) if ".ipynb_checkpoints" not in p.parts]
            files += [(p, folder, folder != path.resolve()) for p in found for folder in [owner(p)]]
        elif path.is_file():
            files.append((path, owner(path), False))
        else:
            raise SdlabInputError(f"submission {path} not found: give notebooks or folders of notebooks")
    return files


def _by_name(path: Path, student: str, in_folder: bool, names: list[str]) -> Submission | None:
    """The submission its file or folder name says, or None when no solution's name is in them."""
    stem, folder = path.stem, path.resolve().parent.name
    plain = COPY.sub("", stem)
    exact = next((n for n in names if n in (stem, plain)), None)
    if exact:
        return Submission(path, student, exact)
    if folder in names:
        return Submission(path, student_name(plain), folder)
    for text in (stem, plain):
        suffix = next((n for n in names if text.endswith(n)), None)
        if suffix:  # a prefix (alice_) says whose it is only outside a student's folder
            prefix = text[: -len(suffix)].strip("_-. ")
            return Submission(path, student if in_folder or not prefix else student_name(prefix), suffix)
    return None


def _by_content(path: Path, student: str, in_folder: bool, solutions: dict[str, set[str]]) -> Submission:
    """The submission its cells' exercise ids say; in a student's folder, one no solution matches is
    still that student's (graded as unmatched); elsewhere it is refused, since its name may be anyone's."""
    ids = exercise_ids(path)
    shared = {name: len(ids & theirs) for name, theirs in solutions.items()}
    best = max(shared.values(), default=0)
    matches = [name for name, count in shared.items() if best and count == best]
    if len(matches) == 1:
        return Submission(path, student, matches[0])
    if matches:
        raise SdlabInputError(f"{path} holds exercises of {' and '.join(sorted(matches))}: rename it after the "
                              f"notebook it answers, as {CONVENTIONS}")
    if in_folder:
        return Submission(path, student, path.stem)
    raise SdlabInputError(
        f"{path}: neither its name nor its cells say which notebook it is (no solution in the --against folder is "
        f"named in it, and its cells carry none of their exercise ids); name it as {CONVENTIONS}")


def find_submissions(paths, against: str | Path = "solutions") -> list[Submission]:
    """Notebooks under `paths`, each with its student and notebook (the conventions are above). The
    name decides; the cells only when the name names no notebook of `against`."""
    against = Path(against)
    names = sorted((p.stem for p in against.glob("*.ipynb")), key=len, reverse=True)  # longest first

    @functools.cache
    def solutions() -> dict[str, set[str]]:  # read only if some name says nothing
        return {name: exercise_ids(against / f"{name}.ipynb") for name in names}

    @functools.cache
    def prefix(parent: Path) -> str:
        return classroom_prefix(parent)

    found, seen = [], {}
    for path, folder, in_folder in _notebooks(paths):
        student = student_name(folder.name.removeprefix(prefix(folder.parent)))
        # a file given, or lying in a folder given, whose name is no notebook's: its name is the student's
        named = student if in_folder else student_name(COPY.sub("", path.stem))
        sub = _by_name(path, student, in_folder, names) or _by_content(path, named, in_folder, solutions())
        key = (sub.student, sub.notebook)
        if key in seen:
            raise SdlabInputError(f"two submissions for {sub.student}'s {sub.notebook}: {seen[key]} and {path}; "
                                  "keep one (or put them in different student folders)")
        seen[key] = path
        found.append(sub)
    return found
