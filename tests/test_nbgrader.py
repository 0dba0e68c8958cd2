"""The nbgrader round trip, for every assignment in solutions/.

generate_assignment must reproduce the committed release in assignments/; autograding a
correct submission gives full marks for the auto-graded cells; the untouched release gets
zero without crashing the grader. For a0_setup also: an infinite loop is stopped by the
cell timeout and the rest is still graded, and edited test cells are put back.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from gradeutil import is_test_cell, nbgrader_meta, solution_only

ROOT = Path(__file__).resolve().parents[1]
NBGRADER = str(Path(sys.executable).parent / "nbgrader")
ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and any(p.glob("*.ipynb")))


def nbgrader(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COURSE_LIB_NO_PROGRESS="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # nbgrader runs `alembic`
    env.pop("NBGRADER_EXECUTION", None)
    out = subprocess.run([NBGRADER, *args], cwd=root, capture_output=True, text=True, env=env)
    assert out.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A fresh course folder with the release generated from solutions/."""
    root = tmp_path_factory.mktemp("course")
    shutil.copy(ROOT / "nbgrader_config.py", root)
    shutil.copytree(ROOT / "solutions", root / "solutions")
    for a in ASSIGNMENTS:
        nbgrader(root, "generate_assignment", a, "--force")
    return root


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_committed_release_equals_generated(course, assignment):
    made = sorted(p.name for p in (course / "assignments" / assignment).iterdir())
    committed = sorted(p.name for p in (ROOT / "assignments" / assignment).iterdir())
    assert made == committed, f"assignments/{assignment} holds {committed}, nbgrader makes {made}"
    for name in made:
        if not name.endswith(".ipynb"):
            continue
        a = json.loads((course / "assignments" / assignment / name).read_text())
        b = json.loads((ROOT / "assignments" / assignment / name).read_text())
        assert a == b, f"assignments/{assignment}/{name} is stale: run `make release` and commit the result"


def _release(course, assignment) -> tuple[str, nbformat.NotebookNode]:
    [path] = sorted((course / "assignments" / assignment).glob("*.ipynb"))
    return path.name, nbformat.read(str(path), as_version=4)


def _solved(course, assignment) -> nbformat.NotebookNode:
    """The release with every solution cell filled in as the source has it (markers removed)."""
    name, nb = _release(course, assignment)
    src = nbformat.read(str(course / "solutions" / assignment / name), as_version=4)
    answers = {nbgrader_meta(c).get("grade_id"): c.source for c in src.cells if nbgrader_meta(c).get("solution")}
    for c in nb.cells:
        gid = nbgrader_meta(c).get("grade_id")
        if nbgrader_meta(c).get("solution") and gid in answers:
            c.source = solution_only(answers[gid]) if c.cell_type == "code" else answers[gid]
    return nb


def _submit(course, assignment, student, nb):
    name, _ = _release(course, assignment)
    folder = course / "submitted" / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(folder / name))


def _scores(course, assignment):
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        out = {}
        for sub in gb.assignment_submissions(assignment):
            out[sub.student.id] = (sub.code_score, sub.max_code_score)
        return out


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_autograde_full_marks_and_zero(course, assignment):
    _submit(course, assignment, "correct", _solved(course, assignment))
    _submit(course, assignment, "untouched", _release(course, assignment)[1])
    extra = assignment == "a0_setup"
    if extra:
        # a student adds a cell that never ends, right after a correct solution
        looping = _solved(course, assignment)
        i = next(i for i, c in enumerate(looping.cells) if nbgrader_meta(c).get("solution") and c.cell_type == "code")
        looping.cells.insert(i + 1, nbformat.v4.new_code_cell("while True:\n    pass"))
        _submit(course, assignment, "looping", looping)
        tampered = _release(course, assignment)[1]
        for c in tampered.cells:
            if is_test_cell(c):
                c.source = "pass  # I removed the tests"
        _submit(course, assignment, "tampered", tampered)
    t0 = time.time()
    args = ["autograde", assignment, "--force"] + (["--Execute.timeout=20"] if extra else [])
    nbgrader(course, *args)
    print(f"\nautograding {assignment} ({'4' if extra else '2'} submissions) took {time.time() - t0:.1f} s")
    scores = _scores(course, assignment)
    got, full = scores["correct"]
    assert full > 0 and got == full, f"the solution of {assignment} scored {got}/{full} in autograding"
    assert scores["untouched"][0] == 0, f"the untouched release of {assignment} scored {scores['untouched']}"
    if extra:
        # the loop is interrupted after 20 s and the cells after it still run and are graded
        assert scores["looping"][0] == full, f"after an interrupted infinite loop the rest should still be graded, got {scores['looping']}"
        log = (course / "autograded" / "looping" / assignment / _release(course, assignment)[0]).read_text()
        assert "KeyboardInterrupt" in log or "CellTimeoutError" in log or "Timeout" in log, "the loop cell shows no interruption"
        assert scores["tampered"][0] == 0, "edited test cells must be replaced by the originals when grading"
        nbgrader(course, "generate_feedback", assignment, "--force")
        feedback = list((course / "feedback" / "correct" / assignment).glob("*.html"))
        assert feedback, "generate_feedback wrote no HTML feedback"
