"""Blank student notebooks from the completed ones, nbgrader's metadata, and where the course is published.

In `solutions/`, exercise code sits between `### BEGIN SOLUTION` and `### END SOLUTION`, and
grading tests between `### BEGIN HIDDEN TESTS` and `### END HIDDEN TESTS`; as in nbgrader, any
comment line that contains BEGIN SOLUTION (END SOLUTION, …) is a marker, however many `#` it
has. `build()` writes `notebooks/` with the solutions replaced by a hint and
`raise NotImplementedError`, hidden tests removed and outputs cleared. It also keeps each
solution an nbgrader source (`sdlab.grading.nbgrader`) and, given a GitHub repository
(`--repo OWNER/NAME[@BRANCH]`, remembered in pyproject.toml), points every notebook's Colab
badge and install cell at it. A solution is rewritten only when one of those changes it.
`check()` says what is out of date.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

from ..errors import SdlabInputError
from .nbgrader import (  # nbgrader's markers, imported from here by the grader too
    BEGIN_HIDDEN,
    BEGIN_SOLUTION,
    END_HIDDEN,
    END_SOLUTION,
    has_marker,
    marker,
    with_nbgrader,
    without_ask_import,
)

TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")


# 1. Blank notebooks

def exercise_name(cell) -> str:
    return cell.get("metadata", {}).get("sdlab", {}).get("exercise", "exercise")


def blank_source(source: str, name: str = "exercise", hint: str = "") -> str:
    """The student's version of a cell's source: solutions become a hint and a raise."""
    out, lines, skipping = [], source.splitlines(), None
    for line in lines:
        found = marker(line)
        if found == BEGIN_SOLUTION and not skipping:
            indent = line[: len(line) - len(line.lstrip())]
            message = f"Exercise '{name}': {hint}" if hint else f"Exercise '{name}': write your code here"
            out += [f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError({message!r})"]
            skipping = END_SOLUTION
        elif found == BEGIN_HIDDEN and not skipping:
            skipping = END_HIDDEN
        elif skipping and found == skipping:
            skipping = None
        elif found in (END_SOLUTION, END_HIDDEN) and not skipping:
            raise SdlabInputError(f"'{name}': a {found} marker has no {found.replace('END', 'BEGIN')} before it: "
                                  f"add one, or remove it")
        elif not skipping:
            out.append(line)
    if skipping:
        begin = skipping.replace("END", "BEGIN")
        raise SdlabInputError(f"'{name}': a {begin} marker has no matching {skipping}: add one after its code")
    return "\n".join(out)


def _is_empty(source: str) -> bool:
    return all(not line.strip() or line.strip().startswith("#") for line in source.splitlines())


def blank_notebook(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The blank version of a completed notebook (a new object; the solution is not changed), with
    no nbgrader metadata: nbgrader makes its own release. Raises SdlabInputError for a marker
    without its pair, or an exercise cell with no solution."""
    nb = copy.deepcopy(solution)
    cells = []
    for cell in nb.cells:
        cell.metadata.pop("nbgrader", None)
        if cell.cell_type == "code":
            meta = cell.get("metadata", {}).get("sdlab", {})
            if "exercise" in meta and not has_marker(cell.source, BEGIN_SOLUTION):
                raise SdlabInputError(f"the cell of exercise {meta['exercise']!r} has no {BEGIN_SOLUTION} … "
                                      f"{END_SOLUTION} region: put the markers around the code students write "
                                      f"(or remove its exercise metadata)")
            had_hidden = has_marker(cell.source, BEGIN_HIDDEN)
            source = without_ask_import(cell.source) if had_hidden else cell.source
            cell.source = blank_source(source, exercise_name(cell), meta.get("hint", ""))
            if had_hidden and _is_empty(cell.source):
                continue  # a cell of hidden tests only: students never see it
            cell.outputs, cell.execution_count = [], None
            for key in ("execution", "papermill", "ExecuteTime"):
                cell.metadata.pop(key, None)
        cells.append(cell)
    nb.cells = cells
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    return nb


# 2. Where the course is published

CONFIG = "pyproject.toml"  # beside solutions/, in its [tool.sdlab] table
TABLE = re.compile(r"^\[tool\.sdlab\][ \t]*(?:#.*)?$", re.M)
NEXT_TABLE = re.compile(r"^\[", re.M)
REPO_LINE = re.compile(r"""^repo[ \t]*=[ \t]*(["'])(?P<repo>[^"'\n]*)\1[ \t]*(?:#.*)?$""", re.M)
REPO_FORM = re.compile(r"(?P<owner>[A-Za-z0-9][A-Za-z0-9-]{0,38})/(?P<name>[A-Za-z0-9._-]{1,100})"
                       r"(?:@(?P<branch>[A-Za-z0-9_./-]+))?")
COLAB = "https://colab.research.google.com/github/"
# a Colab link to a notebook of the course (the path after the branch is kept), and the URL sdlab installs from
COLAB_LINK = re.compile(re.escape(COLAB) + r"""[^\s()"'<>]+?/blob/[^\s()"'<>]+?/(?=(?:notebooks|solutions)/)""")
SDLAB_INSTALL = re.compile(r"""(?P<spec>\bsdlab(?:\[[^\]]*\])?[ \t]*@[ \t]*)git\+https://github\.com/[^\s"'#]+""")


@dataclass(frozen=True)
class Repo:
    """A GitHub repository, and the branch the notebooks are opened and installed from."""

    owner: str
    name: str
    branch: str = "main"

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}@{self.branch}"

    def colab(self, path: str) -> str:
        """The Colab link that opens `path` (e.g. notebooks/00_setup.ipynb) of this repository."""
        return f"{COLAB}{self.owner}/{self.name}/blob/{self.branch}/{path}"

    @property
    def pip(self) -> str:
        """What pip installs sdlab from: git+https://github.com/OWNER/NAME@BRANCH."""
        return f"git+https://github.com/{self.owner}/{self.name}@{self.branch}"


def parse_repo(text: str) -> Repo:
    """OWNER/NAME or OWNER/NAME@BRANCH (the branch defaults to main) as a Repo."""
    found = REPO_FORM.fullmatch(text.strip()) if isinstance(text, str) else None
    branch = (found["branch"] or "main") if found else ""
    if (found is None or found["name"] in (".", "..") or found["name"].endswith(".git") or ".." in branch
            or "//" in branch or branch.startswith(("/", "-", ".")) or branch.endswith(("/", ".", ".lock"))):
        raise SdlabInputError(f"the repository must be OWNER/NAME or OWNER/NAME@BRANCH, the way GitHub names it "
                              f"(for example you/sdlab, or you/sdlab@fall-2026 for a branch other than main), "
                              f"got {text!r}")
    return Repo(found["owner"], found["name"], branch)


def _table(text: str) -> tuple[int, int] | None:
    """Where the body of the [tool.sdlab] table of a pyproject.toml text starts and ends."""
    header = TABLE.search(text)
    if header is None:
        return None
    after = NEXT_TABLE.search(text, header.end())
    return header.end(), after.start() if after else len(text)


def read_repo(root: str | Path = ".") -> Repo | None:
    """The repository remembered in root/pyproject.toml ([tool.sdlab] repo = "OWNER/NAME@BRANCH"),
    or None."""
    path = Path(root) / CONFIG
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    span = _table(text)
    found = REPO_LINE.search(text, *span) if span else None
    try:
        return parse_repo(found["repo"]) if found else None
    except SdlabInputError as err:
        raise SdlabInputError(f"{path}, [tool.sdlab] repo: {err}") from None


def remember_repo(root: str | Path, repo: Repo) -> None:
    """Write `repo` into root/pyproject.toml's [tool.sdlab] table (made if missing), changing no other line."""
    path = Path(root) / CONFIG
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    line, span = f'repo = "{repo}"', _table(text)
    found = REPO_LINE.search(text, *span) if span else None
    if found:
        new = text[: found.start()] + line + text[found.end():]
    elif span:
        new = text[: span[0]] + "\n" + line + text[span[0]:]
    else:
        new = (text.rstrip("\n") + "\n\n" if text.strip() else "") + (
            "[tool.sdlab]\n# where the course is published: the notebooks' Colab badges and install cells point "
            f"here (sdlab course build --repo)\n{line}\n")
    if new != text:
        path.write_text(new, encoding="utf-8")


def stamped(nb: nbformat.NotebookNode, repo: Repo) -> nbformat.NotebookNode:
    """`nb` (a new object) with its Colab links and sdlab's install URL pointing at `repo`."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        source = COLAB_LINK.sub(lambda _: repo.colab(""), cell.source)
        cell.source = SDLAB_INSTALL.sub(lambda m: m["spec"] + repo.pip, source)
    return nb


def _stamp_problems(path: Path, nb: nbformat.NotebookNode, repo: Repo) -> list[str]:
    if stamped(nb, repo) != nb:
        return [f"{path} has a Colab link or install cell that points elsewhere than {repo} "
                f"(the repository in {CONFIG}): run `sdlab course build`"]
    sources, problems = [cell.source for cell in nb.cells], []
    if not any(repo.colab(f"notebooks/{path.name}") in source for source in sources):
        problems.append(f"{path} has no Colab badge opening notebooks/{path.name}: add one to its title cell")
    if not any(repo.pip in source for source in sources):
        problems.append(f"{path} has no install cell (%pip install \"sdlab[course] @ {repo.pip}\"): add one")
    return problems


# 3. The whole course

def _pairs(solutions: str | Path, notebooks: str | Path) -> list[tuple[Path, Path]]:
    """(completed notebook, its blank) for each numbered notebook in `solutions`; none is an error,
    so that a wrong folder is never reported as a course in sync."""
    sources = sorted(Path(solutions).glob("[0-9][0-9]_*.ipynb"))
    if not sources:
        raise SdlabInputError(f"{solutions}/ holds no course notebooks (NN_name.ipynb): run this in the course's "
                              f"folder, or give the completed notebooks' folder with --solutions")
    return [(src, Path(notebooks) / src.name) for src in sources]


def _text(nb) -> str:
    return nbformat.writes(nb) + "\n"


def _versions(src: Path, repo: Repo | None) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode, str]:
    """The solution `src` as it is, as build leaves it (stamped, nbgrader's metadata in sync), and
    the text of its blank; errors name `src`."""
    try:
        solution = nbformat.read(src, as_version=4)
        synced = with_nbgrader(stamped(solution, repo) if repo else solution)
        return solution, synced, _text(blank_notebook(synced))
    except SdlabInputError as err:
        raise SdlabInputError(f"{src}: {err}") from None


def build(solutions: str | Path = "solutions", notebooks: str | Path = "notebooks", repo: str | None = None
          ) -> list[Path]:
    """Write the blank notebooks, and the solutions where their nbgrader metadata or their
    repository (`repo`, OWNER/NAME[@BRANCH], else the one remembered beside `solutions`) changes
    them; returns the files written. `repo` is remembered for later builds. Nothing is written when
    a solution has a problem (SdlabInputError names it)."""
    pairs, root = _pairs(solutions, notebooks), Path(solutions).resolve().parent
    chosen = parse_repo(repo) if repo is not None else read_repo(root)
    writes = []
    for src, dst in pairs:
        solution, synced, blank = _versions(src, chosen)
        writes += [(src, _text(synced))] if synced != solution else []  # else the file stays byte for byte
        writes.append((dst, blank))
    if repo is not None:
        remember_repo(root, chosen)
    Path(notebooks).mkdir(parents=True, exist_ok=True)
    written = []
    for path, text in writes:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def check(solutions: str | Path = "solutions", notebooks: str | Path = "notebooks") -> list[str]:
    """Problems found: blanks missing or out of date, solutions whose nbgrader metadata is out of
    date or notebooks not pointing at the remembered repository, stray blanks, outputs or tokens committed."""
    problems, expected, pairs = [], set(), _pairs(solutions, notebooks)
    repo = read_repo(Path(solutions).resolve().parent)
    for src, dst in pairs:
        expected.add(dst.name)
        try:
            solution, _, text = _versions(src, repo)
        except SdlabInputError as err:
            problems.append(str(err))
            continue
        if with_nbgrader(solution) != solution:
            problems.append(f"{src} has nbgrader metadata out of date with its sdlab metadata: "
                            f"run `sdlab course build`")
        if repo is not None:
            problems += _stamp_problems(src, solution, repo)
        if not dst.exists():
            problems.append(f"{dst} is missing: run `sdlab course build`")
        elif dst.read_text(encoding="utf-8") != text:
            problems.append(f"{dst} is out of date with {src}: run `sdlab course build`")
    for stray in sorted(Path(notebooks).glob("*.ipynb")):
        if stray.name not in expected:
            problems.append(f"{stray} has no completed version in {solutions}/")
            continue
        blank = nbformat.read(stray, as_version=4)
        if any(c.get("outputs") for c in blank.cells):
            problems.append(f"{stray} has stored outputs: blank notebooks must be cleared")
        if repo is not None:
            problems += _stamp_problems(stray, blank, repo)
    for path in sorted(Path(solutions).glob("*.ipynb")) + sorted(Path(notebooks).glob("*.ipynb")):
        if TOKEN_PATTERN.search(path.read_text(encoding="utf-8", errors="replace")):
            problems.append(f"{path} contains something that looks like a Hugging Face token: remove it")
    return problems
