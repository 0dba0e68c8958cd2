"""Grade one submitted notebook: the student's cells in the sandbox, every test cell here.

This process (the *checker*) never runs a line of the student's code. It walks the submitted
notebook: answer cells and the notebook's other cells run in the student's process (the sandbox);
each test cell runs here, in a namespace that holds

* the values the instructor's own cells compute, when they do not depend on the student's code
  (``model = load_model(...)``): this process runs those cells itself, from the instructor's copy;
* the student's names (functions, variables) fetched from the student's process, as data or as
  :class:`remote.Remote` proxies.

``globals()`` in a test cell is a view that forwards writes of the student's names to the student's
process, so a test that swaps a reference function in for the student's helper still does so.
Run as ``python .../course_lib/grader/checker.py JOB.json`` (a fresh process per submission), or forked from
:mod:`zygote`, which imports this module the same way and calls :func:`main` in each child.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import io
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import nbformat

if __package__:
    from . import remote, sandbox
    from .cells import is_answer_cell as is_answer
    from .cells import is_test_cell as is_test
    from .cells import nbgrader_meta as _nbg
    from .cells import restore_roles
else:  # run as a script: the course_lib package (and torch) is imported only if the notebook needs it
    import remote
    import sandbox
    from cells import is_answer_cell as is_answer
    from cells import is_test_cell as is_test
    from cells import nbgrader_meta as _nbg
    from cells import restore_roles

MAGIC = re.compile(r"^\s*[%!]")


def _code(src: str) -> str:
    return "\n".join("pass" if MAGIC.match(line) else line for line in src.splitlines())


def _parse(src: str):
    try:
        return ast.parse(_code(src))
    except SyntaxError:
        return None


def bound_names(src: str, *, imports: bool = True) -> set[str]:
    """Names a cell binds at its top level (assignments, defs, imports, for/with targets), not the locals
    of the functions it defines. ``imports=False`` leaves out names bound by import statements."""
    tree = _parse(src)
    if tree is None:
        return set()
    out: set[str] = set()

    def targets(t):
        if isinstance(t, ast.Name):
            out.add(t.id)
        elif isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                targets(e)
        elif isinstance(t, ast.Starred):
            targets(t.value)

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
            return  # its body binds locals
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if imports:
                for a in node.names:
                    out.add(a.asname or a.name.split(".")[0])
            return
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor, ast.With, ast.AsyncWith,
                             ast.NamedExpr)):
            for t in (node.targets if isinstance(node, ast.Assign) else
                      [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor, ast.NamedExpr))
                      else [i.optional_vars for i in node.items if i.optional_vars is not None]):
                targets(t)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def read_names(src: str) -> set[str]:
    tree = _parse(src)
    if tree is None:
        return set()
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    # globals()["name"]: a string key read through globals()
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.isidentifier():
            names.add(n.value)
    return names


def plan(source_cells: list) -> tuple[list[int], set[str]]:
    """Which of the instructor's cells the checker runs itself, and the names that belong to the student.

    A cell depends on the student when it reads a name an answer cell (or a dependent cell) binds.
    The checker runs the independent cells whose names the tests need (directly or through other
    such cells), and those that set a seed."""
    student: set[str] = set()
    independent: list[int] = []
    for i, c in enumerate(source_cells):
        if c.cell_type != "code" or is_test(c):
            continue
        if is_answer(c) or read_names(c.source) & student:  # modules a cell imports are never the student's
            student |= bound_names(c.source, imports=False)
        else:
            independent.append(i)
    needed: set[str] = set()
    for c in source_cells:
        if is_test(c):
            needed |= read_names(c.source)
    chosen: set[int] = set()
    for i in reversed(independent):
        src = source_cells[i].source
        if bound_names(src) & needed or "seed" in src:
            chosen.add(i)
            needed |= read_names(src)
    return sorted(chosen), student


class GlobalsView(dict):
    """What ``globals()`` returns in a test cell: the checker's namespace, where a write to one of the
    student's names is also made in the student's process."""

    def __init__(self, ns: dict, student: remote.Student, theirs: set):
        super().__init__()
        self._ns, self._student, self._theirs = ns, student, theirs

    def __getitem__(self, k):
        if k in self._theirs or k not in self._ns:
            try:
                return self._student.get(k)
            except KeyError:
                raise KeyError(k) from None
        return self._ns[k]

    def __setitem__(self, k, v):
        if k in self._theirs:
            self._student.set(k, v)
        self._ns[k] = v

    def __delitem__(self, k):
        del self._ns[k]

    def __contains__(self, k):
        return k in self._ns or k in self._theirs

    def get(self, k, default=None):
        try:
            return self[k]
        except KeyError:
            return default

    def update(self, other=(), **kw):
        for k, v in (dict(other, **kw)).items():
            self[k] = v

    def keys(self):
        return self._ns.keys()

    def items(self):
        return self._ns.items()

    def values(self):
        return self._ns.values()

    def __iter__(self):
        return iter(self._ns)

    def __len__(self):
        return len(self._ns)

    def pop(self, k, *default):
        return self._ns.pop(k, *default)

    def setdefault(self, k, v=None):
        if k not in self:
            self[k] = v
        return self[k]


class _GlobalsCall(ast.NodeTransformer):
    def visit_Call(self, node):
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id == "globals" and not node.args:
            return ast.copy_location(ast.Call(ast.Name("__grader_globals__", ast.Load()), [], []), node)
        return node


def _error_output(ename, evalue, tb_text=""):
    lines = [line for line in tb_text.splitlines() if line.strip()] or [f"{ename}: {evalue}"]
    return nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=lines)


class _Alarm(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Alarm()


def run_here(code: str, ns: dict, name: str, timeout: float, student: remote.Student) -> tuple[list, bool, bool]:
    """Run instructor code in this process. Returns (outputs, ok, timed_out)."""
    tree = _parse(code)
    out = io.StringIO()
    if tree is None:
        return [_error_output("SyntaxError", "the cell could not be parsed")], False, False
    tree = ast.fix_missing_locations(_GlobalsCall().visit(tree))
    student.deadline = time.monotonic() + timeout
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout + 10)
    ok, timed_out, outputs = True, False, []
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            exec(compile(tree, f"<{name}>", "exec"), ns)
    except (remote.CellTimeout, _Alarm):
        ok, timed_out = False, True
    except BaseException as e:  # noqa: BLE001
        ok = False
        tb = traceback.format_exception(type(e), e, e.__traceback__)
        tb = [t for t in tb if "course_lib/grader/" not in t]
        outputs.append(_error_output(type(e).__name__, str(e), "".join(tb)))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        student.deadline = None
    if out.getvalue():
        outputs.insert(0, nbformat.v4.new_output("stream", name="stdout", text=out.getvalue()[:200_000]))
    if timed_out:
        outputs.append(_error_output("CellTimeoutError", f"this cell ran longer than the {timeout:g} s limit and was stopped"))
    return outputs, ok, timed_out


def grade(job: dict) -> dict:
    """Execute one submission. ``job``: submitted, source, release_dir, out, timeout, limits, forbidden,
    unsafe, cache_dir. Writes the executed notebook to ``out`` and returns a summary."""
    os.environ["MPLBACKEND"] = "Agg"
    sub = nbformat.read(job["submitted"], as_version=4)
    src = nbformat.read(job["source"], as_version=4)
    timeout = float(job.get("timeout", 180))
    # every cell's role is the instructor's (a cell the submission marks as a test is not run here)
    restore_roles(sub, src)
    # the names a test takes from the student's process are those the instructor's answer cells bind (and the
    # cells that read them); what else a submission binds (torch, a check helper, data) never replaces the checker's
    chosen, theirs = plan(src.cells)
    tmp = Path(tempfile.mkdtemp(prefix="course-grade-"))
    work, here = tmp / "work", tmp / "checker"
    for d in (work, here):
        shutil.copytree(job["release_dir"], d, ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
    limits = sandbox.Limits(**job.get("limits", {}))
    cache = Path(job["cache_dir"]) if job.get("cache_dir") else None
    t_start = time.monotonic()
    # the student's own cells may use, together, what the instructor's code cells may: extra cells that each
    # stop just short of the cell limit cannot hold a grading slot for hours
    budget, spent = timeout * max(1, sum(c.cell_type == "code" for c in src.cells)), 0.0
    sb = sandbox.start(work, limits=limits, forbidden=job.get("forbidden", []), unsafe=job.get("unsafe", False), cache_dir=cache)
    student = remote.Student(sb, timeout=timeout)
    ns: dict = {"__name__": "__main__", "__builtins__": builtins}
    ns["__grader_globals__"] = lambda: GlobalsView(ns, student, theirs)
    os.chdir(here)
    src_pos = {_nbg(c).get("grade_id"): i for i, c in enumerate(src.cells) if _nbg(c).get("grade_id")}
    ran_here: dict[int, list] = {}  # instructor cell -> its outputs here

    def run_instructor(i):
        if i not in ran_here:
            ran_here[i] = run_here(src.cells[i].source, ns, f"instructor cell {i}", timeout, student)[0]
        return ran_here[i]

    summary = {"cells": [], "dead": None, "timeouts": []}

    def _restore_setup(cell):
        """A read-only instructor cell failed in the sandbox (it calls a module the task hides there):
        run it here and give the student's process the values it did not get."""
        i = src_pos.get(_nbg(cell).get("grade_id"))
        if i is None or is_answer(src.cells[i]) or is_test(src.cells[i]) or not _nbg(src.cells[i]).get("locked"):
            return
        # what the student sees for this cell: the instructor's run of it, not the sandbox's refusal
        cell.outputs = [nbformat.from_dict(o) for o in run_instructor(i)]
        for name in sorted(bound_names(src.cells[i].source)):
            if name in ns:
                try:
                    student.get(name)
                except KeyError:
                    student.set(name, ns[name])
                except Exception:  # noqa: BLE001
                    pass
    try:
        for idx, cell in enumerate(sub.cells):
            if cell.cell_type != "code":
                continue
            meta = cell.metadata.setdefault("course_lib", {})
            t0 = time.monotonic()
            if is_test(cell):
                gid = _nbg(cell).get("grade_id")
                upto = src_pos.get(gid, len(src.cells))
                for i in chosen:  # the instructor's independent cells before this test, here
                    if i < upto:
                        run_instructor(i)
                fetched = []
                if student.dead is not None:
                    cell.outputs = [_error_output("StudentProcessEnded", f"not graded: {student.dead}")]
                    meta["verdict"] = "fail"
                    meta["seconds"] = 0.0
                    summary["cells"].append({"grade_id": gid, "passed": False, "seconds": 0.0})
                    continue
                if student.dead is None:
                    for name in sorted(read_names(cell.source)):
                        if (name in theirs or name not in ns) and not hasattr(builtins, name) and name.isidentifier():
                            try:
                                ns[name] = student.get(name)
                                fetched.append(name)
                            except KeyError:
                                pass
                            except (remote.StudentDead, remote.CellTimeout):
                                break
                            except Exception:  # noqa: BLE001  (an object the student's process cannot describe)
                                pass
                outputs, ok, timed_out = run_here(cell.source, ns, f"test {gid}", timeout, student)
                for name in fetched:
                    if ns.get(name) is not None and isinstance(ns.get(name), remote.Remote):
                        ns.pop(name, None)
                try:  # also when the student's process ended: the checker's own objects are put back
                    student.end_test()
                except Exception:  # noqa: BLE001
                    pass
                if student.dead and not ok:
                    outputs.append(_error_output("StudentProcessEnded", student.dead))
                cell.outputs = outputs
                meta["verdict"] = "pass" if ok else "fail"
            else:
                if student.dead:
                    cell.outputs = [_error_output("StudentProcessEnded", student.dead)]
                    timed_out = False
                elif spent > budget:
                    cell.outputs = [_error_output("TimeBudgetExceeded", f"not run: the notebook's own cells used their "
                                                  f"{budget:g} s together (the cell limit times the assignment's code cells)")]
                    timed_out = False
                else:
                    student.deadline = time.monotonic() + timeout
                    timed_out = False
                    try:
                        reply = student.run(cell.source)
                        cell.outputs = [nbformat.from_dict(o) for o in reply.get("outputs", [])]
                        if "error" in reply:
                            e = reply["error"]
                            cell.outputs.append(_error_output(e.get("ename", "Error"), e.get("evalue", ""), e.get("traceback", "")))
                            _restore_setup(cell)
                    except remote.CellTimeout:
                        timed_out = True
                        why = f"this cell ran longer than the {timeout:g} s limit and was stopped"
                        cell.outputs = [_error_output("CellTimeoutError", why)]
                    except remote.StudentDead as e:
                        cell.outputs = [_error_output("StudentProcessEnded", str(e))]
                    finally:
                        student.deadline = None
            meta["seconds"] = round(time.monotonic() - t0, 2)
            if not is_test(cell):
                spent += meta["seconds"]
            if timed_out:
                meta["timeout"] = True
                summary["timeouts"].append(_nbg(cell).get("grade_id") or f"cell {idx}")
            if is_test(cell):
                summary["cells"].append({"grade_id": _nbg(cell).get("grade_id"), "passed": meta["verdict"] == "pass",
                                         "seconds": meta["seconds"], "traffic": dict(student.stats)})
    finally:
        summary["dead"] = student.dead
        student.close()
        os.chdir("/")
        shutil.rmtree(tmp, ignore_errors=True)
    summary["seconds"] = round(time.monotonic() - t_start, 2)
    sub.metadata.setdefault("course_lib", {})["isolated"] = {"dead": student.dead, "sandbox": not job.get("unsafe", False)}
    nbformat.write(sub, job["out"])
    return summary


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    summary = grade(job)
    Path(job["out"] + ".json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
