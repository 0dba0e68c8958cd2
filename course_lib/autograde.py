"""What `make grade` adds to nbgrader: grading in isolation, a scan for tampering, and a report.

* ``IsolatedExecute`` replaces nbgrader's Execute step. The submission's cells run in a bubblewrap
  sandbox and every test cell in a separate checker process that never runs student code
  (``course_lib.grader``); a test cell's verdict is whatever that process saw. Each cell's time goes
  into its metadata, a cell stopped at the time limit says so, and a student process that died is
  named in the cells it could not answer.
* ``TamperScan`` reads the source of every cell that is not a test cell, before it runs, and
  records what looks like tampering with the grading environment (exception handlers, IPython
  hooks, the check helpers rebound, patched modules). Since the checks no longer run in the
  student's process these flags are information for the instructor, not the defence.
* ``grade_report`` reads the gradebook and the autograded notebooks and prints, per submission,
  the score, each test cell's time, timeouts, a process that ended early, and the flags
  (``course-lib grade-report``, run by ``make grade``).
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

import nbformat
from nbformat import NotebookNode
from nbgrader.preprocessors import NbGraderPreprocessor

from .grader import classroom, sandbox
from .grader.cells import META, is_test_cell, nbgrader_meta, restore_roles
from .grader.report import grade_report, notebook_summary

__all__ = ["RestoreRoles", "IsolatedExecute", "TamperScan", "grade_report", "notebook_summary", "scan_source", "is_test_cell"]

CHECK_HELPERS = {"check", "check_close", "check_shape", "check_type", "check_raises", "forbid"}


# --------------------------------------------------------------------------------- execution


class RestoreRoles(NbGraderPreprocessor):
    """A sanitizing step, before nbgrader's own: every cell's role (test, answer, read-only, points) is
    the one the instructor's notebook in the source directory gives its ``grade_id``, whatever the
    submission's metadata claims (:func:`course_lib.grader.cells.restore_roles`). The checker applies the
    same rule, so nbgrader records exactly the cells the checker ran as tests."""

    def preprocess(self, nb, resources):
        info = resources.get("nbgrader", {})
        cd = self.config.CourseDirectory
        root = Path(cd.get("root") or ".").resolve()
        src = root / cd.get("source_directory", "source") / info["assignment"] / (info["notebook"] + ".ipynb")
        if not src.is_file():
            raise FileNotFoundError(f"the instructor's notebook {src} is needed to grade {info['notebook']}")
        for note in restore_roles(nb, nbformat.read(str(src), as_version=4)):
            self.log.warning("%s/%s: %s", info.get("student"), info["notebook"], note)
        return nb, resources



class IsolatedExecute(NbGraderPreprocessor):
    """nbgrader's Execute step, done in isolation (``course_lib.grader``): the student's cells in a
    sandbox, the test cells in a separate checker process. ``course-lib grade`` executes the class
    in parallel first; here the stored result for this submission is put into the notebook. A plain
    ``nbgrader autograde`` (no stored result, or a stale one) executes it here, one at a time."""

    def preprocess(self, nb, resources):
        info = resources.get("nbgrader", {})
        root = Path(self.config.CourseDirectory.root or ".").resolve()
        s = classroom.Submission(info["student"], info["assignment"], info["notebook"] + ".ipynb")
        unsafe = os.environ.get("COURSE_LIB_GRADE_UNSAFE") == "1"
        cfg = classroom.settings(root)
        if "timeout" in self.config.Execute:  # nbgrader autograde --Execute.timeout=N
            cfg["timeout"] = float(self.config.Execute.timeout)
        job = classroom.make_job(root, s, unsafe=unsafe, cfg=cfg)
        if classroom.stored_key(root, s) != job["key"]:
            if not unsafe and sandbox.bwrap_path() is None:
                raise RuntimeError(sandbox.BWRAP_MISSING)
            res = classroom.run_job(job)
            if "error" in res:
                raise RuntimeError(f"grading {s.student}/{s.assignment} failed: {res['error']}")
            classroom.store(root, s, res)
        done = nbformat.read(str(classroom.result_path(root, s)), as_version=4)
        if len(done.cells) != len(nb.cells):
            raise RuntimeError(f"the executed copy of {s} has {len(done.cells)} cells, the notebook {len(nb.cells)}")
        for cell, ran in zip(nb.cells, done.cells):
            if cell.cell_type != ran.cell_type or nbgrader_meta(cell).get("grade_id") != nbgrader_meta(ran).get("grade_id"):
                raise RuntimeError(f"the executed copy of {s} does not match the notebook")
            if cell.cell_type == "code":
                cell.outputs = ran.outputs
                if META in ran.metadata:
                    cell.metadata[META] = ran.metadata[META]
                if is_test_cell(cell) and ran.metadata.get(META, {}).get("verdict") != "pass":
                    if not any(o.output_type == "error" for o in cell.outputs):
                        cell.outputs.append(NotebookNode(output_type="error", ename="TestFailed", evalue="",
                                                         traceback=["TestFailed: this test did not pass"]))
        nb.metadata[META] = {**nb.metadata.get(META, {}), **done.metadata.get(META, {})}
        return nb, resources


# ------------------------------------------------------------------------------ tamper scan

# Attributes of the IPython shell (or of sys) that ordinary course code never touches: reading or
# writing any of them can change how errors reach nbgrader.
_HOOK_ATTRS = {
    "set_custom_exc": "installs an IPython exception handler (set_custom_exc)",
    "excepthook": "touches an exception hook (excepthook)",
    "showtraceback": "touches IPython's traceback display (showtraceback)",
    "showsyntaxerror": "touches IPython's error display (showsyntaxerror)",
    "run_cell": "touches IPython's run_cell",
    "run_cell_async": "touches IPython's run_cell_async",
    "run_code": "touches IPython's run_code",
    "run_ast_nodes": "touches IPython's run_ast_nodes",
    "custom_exceptions": "touches IPython's custom exceptions",
    "CustomTB": "touches IPython's custom traceback handler",
    "InteractiveTB": "touches IPython's traceback handler",
    "ast_transformers": "installs an AST transformer (rewrites every later cell)",
    "input_transformers_post": "installs an input transformer (rewrites every later cell)",
    "input_transformers_cleanup": "installs an input transformer (rewrites every later cell)",
    "events": "uses IPython's event callbacks",
    "displayhook": "touches the display hook",
    "settrace": "installs a tracer (settrace)",
    "setprofile": "installs a profiler hook (setprofile)",
}


def _strip_magics(src: str) -> str:
    return "\n".join("pass" if l.lstrip().startswith(("%", "!")) else l for l in src.splitlines())


def _dotted(node) -> str | None:
    parts = []
    while isinstance(node, (ast.Attribute, ast.Call)):
        if isinstance(node, ast.Call):  # get_ipython().events -> "get_ipython().events"
            node = node.func
            parts.append("()")
            continue
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts)).replace(".()", "()")
    return None


def scan_source(src: str) -> list[tuple[int, str]]:
    """(line, what) for each construct in ``src`` that tampers with grading. Pure, no execution."""
    try:
        tree = ast.parse(_strip_magics(src))
    except SyntaxError:
        return []
    modules: set[str] = {"sys", "builtins", "IPython", "course_lib", "torch", "np", "numpy", "nbgrader"}
    for node in ast.walk(tree):  # names bound to modules anywhere in this cell
        if isinstance(node, ast.Import):
            for a in node.names:
                modules.add((a.asname or a.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in {"course_lib", "IPython", "torch", "numpy", "sys"}:
            for a in node.names:
                if a.name[:1].islower() and a.name not in CHECK_HELPERS:
                    modules.add(a.asname or a.name)
    found: list[tuple[int, str]] = []

    def flag(node, what):
        found.append((getattr(node, "lineno", 0), what))

    def target(t, node):
        if isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                target(e, node)
            return
        if isinstance(t, ast.Name):
            if t.id in CHECK_HELPERS:
                flag(node, f"rebinds the check helper '{t.id}'")
            elif t.id in {"get_ipython", "__builtins__", "AssertionError", "assert_"}:
                flag(node, f"rebinds '{t.id}'")
        elif isinstance(t, ast.Attribute):
            name = _dotted(t)
            if t.attr in _HOOK_ATTRS and _HOOK_ATTRS[t.attr]:
                flag(node, _HOOK_ATTRS[t.attr])
            elif name and name.split(".")[0] in modules:
                flag(node, f"assigns to a module attribute '{name}'")
            elif t.attr in CHECK_HELPERS or t.attr == "get_ipython":
                flag(node, f"assigns to '{name or t.attr}'")
        elif isinstance(t, ast.Subscript):
            name = _dotted(t.value)
            if name in {"sys.modules", "__builtins__", "builtins.__dict__"} or (name or "").endswith("__dict__"):
                flag(node, f"writes into '{name}'")

    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                target(t, node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name in CHECK_HELPERS | {"get_ipython"}:
                flag(node, f"defines its own '{node.name}'")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                bound = a.asname or a.name.split(".")[0]
                legit = isinstance(node, ast.ImportFrom) and node.module == "course_lib.grading" and a.asname is None
                if bound in CHECK_HELPERS and not legit:
                    flag(node, f"binds the name '{bound}' to something else than course_lib.grading.{bound}")
        elif isinstance(node, ast.Delete):
            for t in node.targets:
                name = _dotted(t) if not isinstance(t, ast.Name) else t.id
                if name and (name in CHECK_HELPERS or name.split(".")[0] in modules):
                    flag(node, f"deletes '{name}'")
        elif isinstance(node, ast.Attribute) and node.attr in _HOOK_ATTRS:
            flag(node, _HOOK_ATTRS[node.attr])
        elif isinstance(node, ast.Call):
            fn = _dotted(node.func) or ""
            last = fn.rsplit(".", 1)[-1]
            if last in {"setattr", "delattr"} and node.args:
                base = _dotted(node.args[0]) or ""
                if base.split(".")[0] in modules or base in {"get_ipython()"}:
                    flag(node, f"{last} on '{base}'")
                elif isinstance(node.args[0], ast.Call) and (_dotted(node.args[0].func) or "").endswith("get_ipython"):
                    flag(node, f"{last} on the IPython shell")
            elif fn in {"sys.exit", "os._exit", "exit", "quit"}:
                flag(node, f"stops the kernel ({fn})")
    return sorted(set(found))


class TamperScan(NbGraderPreprocessor):
    """Record, in the notebook's metadata, what the non-test cells do to the grading environment."""

    def preprocess(self, nb, resources):
        flags = []
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or is_test_cell(cell):
                continue
            where = nbgrader_meta(cell).get("grade_id") or f"cell {i}"
            for line, what in scan_source(cell.source):
                flags.append({"cell": where, "line": line, "what": what})
        nb.metadata.setdefault(META, {})["tamper"] = flags
        return nb, resources


# ----------------------------------------------------------------------------------- report
