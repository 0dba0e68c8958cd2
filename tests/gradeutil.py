"""Run an nbgrader *source* notebook in this process, cell by cell, to see which graded
test cells pass, optionally with some cells' code replaced (a plausible wrong solution).

This is how the tests prove that graded tests are implementation-agnostic: a correct
solution written differently passes every test cell; a plausible wrong one fails some.
The full nbgrader round trip (generate -> autograde) is in test_nbgrader.py.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nbformat

SOLUTION_BLOCK = re.compile(r"^[ \t]*### BEGIN SOLUTION[^\n]*\n(.*?)^[ \t]*### END SOLUTION[^\n]*\n?", re.S | re.M)


@dataclass
class CellResult:
    grade_id: str
    points: float
    passed: bool
    error: str = ""


def cells(path: Path) -> list:
    return nbformat.read(str(path), as_version=4).cells


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def is_test_cell(cell) -> bool:
    m = nbgrader_meta(cell)
    return cell.cell_type == "code" and m.get("grade", False) and not m.get("solution", False)


def strip_magics(src: str) -> str:
    return "\n".join("pass  # " + l if l.lstrip().startswith(("%", "!")) else l for l in src.splitlines())


def solution_only(src: str) -> str:
    """The source with the solution markers removed (what a student who got it right would write)."""
    return SOLUTION_BLOCK.sub(lambda m: m.group(1), src)


@contextmanager
def grading_env():
    old = os.environ.get("NBGRADER_EXECUTION")
    os.environ["NBGRADER_EXECUTION"] = "autograde"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("NBGRADER_EXECUTION", None)
        else:
            os.environ["NBGRADER_EXECUTION"] = old


def run_graded(path: Path, overrides: dict[str, str] | None = None, *, stop_after: str | None = None) -> dict[str, CellResult]:
    """Execute the code cells of ``path`` in one fresh namespace (cwd = its folder).

    ``overrides`` maps a solution cell's grade_id to replacement code. Returns the result of
    every graded test cell by grade_id. Errors in non-test cells are kept and execution goes
    on, as nbgrader does.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overrides = dict(overrides or {})
    path = Path(path).resolve()
    ns: dict = {"__name__": "__main__", "display": lambda *a, **k: None}
    results: dict[str, CellResult] = {}
    old_cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        with grading_env():
            for cell in cells(path):
                if cell.cell_type != "code":
                    continue
                meta = nbgrader_meta(cell)
                gid = meta.get("grade_id", "")
                src = overrides.pop(gid, None) if gid in overrides else solution_only(cell.source)
                try:
                    exec(compile(strip_magics(src), f"<cell {gid or '?'}>", "exec"), ns)
                    ok, err = True, ""
                except BaseException as e:  # noqa: BLE001
                    ok, err = False, f"{type(e).__name__}: {e}"
                plt.close("all")
                if is_test_cell(cell):
                    results[gid] = CellResult(gid, float(meta.get("points", 0)), ok, err)
                if stop_after and gid == stop_after:
                    break
    finally:
        os.chdir(old_cwd)
    if overrides:
        raise KeyError(f"no solution cells with grade_id {sorted(overrides)} in {path}")
    return results


def score(results: dict[str, CellResult]) -> tuple[float, float]:
    """(points earned, points possible) over the test cells."""
    return sum(r.points for r in results.values() if r.passed), sum(r.points for r in results.values())


def assert_loses_points(path: Path, overrides: dict[str, str], name: str, *, stop_after: str | None = None,
                        only: set[str] | None = None) -> list[CellResult]:
    """A plausible mistake must fail at least one test cell, only with an AssertionError (a message
    for the student, not a crash), and, if ``only`` is given, only in those cells (one mistake costs
    its own exercise's points). Returns the failed cells."""
    res = run_graded(path, overrides, stop_after=stop_after)
    failed = [r for r in res.values() if not r.passed]
    assert failed, f"the mistake '{name}' still got full marks"
    if only is not None:
        assert {r.grade_id for r in failed} <= set(only), f"'{name}' cost points elsewhere: {[r.grade_id for r in failed]}"
    assert all(r.error.startswith("AssertionError") for r in failed), [r.error for r in failed]
    return failed
