"""Grade a class: many submissions at once, on this server or a Dask cluster; one writer of the gradebook.

``course-lib grade`` (``make grade``) does, in order:

1. fingerprints what no submission may change (``solutions/``, the release, ``course_lib``,
   ``nbgrader_config.py``);
2. *executes* every submission that has no up-to-date result: each in a fresh checker process with
   its own sandbox (:mod:`checker`; optionally forked from a template that has imported torch and course_lib
   once, :mod:`zygote`), ``jobs`` at a time on this machine, or on the workers of a
   Dask scheduler. A result is the executed notebook and a summary, stored under ``.grading/``
   with a key (the hashes of the submission, the instructor's notebook and the grader), so a run
   that was interrupted grades only what is missing when started again;
3. *records*: nbgrader's own autograde, in this process only, for each submission, with the
   executed notebook in place of executing (:class:`IsolatedExecute`), then feedback and
   ``grades.csv``; then the report;
4. checks the fingerprints again and says what changed, if anything.
"""
from __future__ import annotations

import ast
import concurrent.futures as cf
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..cache import home as cache_home
from ..threads import cpu_budget
from . import sandbox, warmstart
from .cells import is_test_cell
from .report import grade_report

LIB = Path(__file__).resolve().parents[1]  # the course_lib package
RESULTS = ".grading"


# ------------------------------------------------------------------------------------ inputs

@dataclass(frozen=True)
class Submission:
    student: str
    assignment: str
    notebook: str  # file name


def find(root: Path, assignments=None, students=None) -> list[Submission]:
    out = []
    sub = root / "submitted"
    for sdir in sorted(p for p in sub.iterdir() if p.is_dir()) if sub.is_dir() else []:
        if students and sdir.name not in students:
            continue
        for adir in sorted(p for p in sdir.iterdir() if p.is_dir()):
            if assignments and adir.name not in assignments:
                continue
            if not (root / "solutions" / adir.name).is_dir():
                continue
            for nb in sorted(adir.glob("*.ipynb")):
                if (root / "solutions" / adir.name / nb.name).is_file():
                    out.append(Submission(sdir.name, adir.name, nb.name))
    return out


MAX_SUBMISSION_BYTES = 64 << 20  # a notebook with a few plots is well under 10 MiB


def submission_problem(root: Path, s: Submission) -> str | None:
    """Why a submitted notebook is not graded, or None: it must be a plain file of the submission's own folder
    (a link could point at solutions/), and not larger than MAX_SUBMISSION_BYTES."""
    folder = root / "submitted" / s.student / s.assignment
    p = folder / s.notebook
    if any(q.is_symlink() for q in (folder.parent, folder, p)) or not p.is_file():
        return f"{p.relative_to(root)} is a link or not a plain file: not graded"
    size = p.stat().st_size
    if size > MAX_SUBMISSION_BYTES:
        return (f"{p.relative_to(root)} has {size / 2**20:.0f} MiB, over the {MAX_SUBMISSION_BYTES >> 20} MiB a notebook "
                "may have: not graded")
    return None


def forbidden_modules(source_nb: Path) -> list[str]:
    """Modules the tests of this notebook forbid (``forbid(globals(), "mod", ...)``): absent from its sandbox."""
    import nbformat

    mods: set[str] = set()
    for cell in nbformat.read(str(source_nb), as_version=4).cells:
        if cell.cell_type != "code" or "forbid" not in cell.source:
            continue
        try:
            tree = ast.parse("\n".join("pass" if l.lstrip().startswith(("%", "!")) else l for l in cell.source.splitlines()))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "forbid":
                mods |= {a.value for a in node.args[1:] if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return sorted(mods)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_hash(path: Path, patterns=("*",)) -> dict[str, str]:
    out = {}
    if path.is_file():
        return {path.name: _sha(path.read_bytes())}
    for pat in patterns:
        for f in sorted(path.rglob(pat)):
            if f.is_file() and "__pycache__" not in f.parts and ".ipynb_checkpoints" not in f.parts:
                out[str(f.relative_to(path))] = _sha(f.read_bytes())
    return out


def fingerprints(root: Path) -> dict[str, dict]:
    return {
        "solutions": tree_hash(root / "solutions"),
        "release": tree_hash(root / "assignments"),
        "course_lib": tree_hash(LIB, ("*.py", "*.json", "*.safetensors")),
        "nbgrader_config.py": tree_hash(root / "nbgrader_config.py") if (root / "nbgrader_config.py").is_file() else {},
    }


def changed(before: dict, after: dict) -> list[str]:
    out = []
    for part in before:
        a, b = before[part], after.get(part, {})
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                out.append(f"{part}/{k}" if part != "nbgrader_config.py" else part)
    return out


def grader_hash() -> str:
    return _sha(json.dumps(tree_hash(LIB / "grader", ("*.py",)), sort_keys=True).encode())[:16]


def settings(root: Path) -> dict:
    """Limits from nbgrader_config.py (``c.CourseGrader.*``) and the cell time limit."""
    from traitlets.config import PyFileConfigLoader

    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config() if (root / "nbgrader_config.py").is_file() else {}
    g = cfg.get("CourseGrader", {}) if cfg else {}
    ex = cfg.get("Execute", {}) if cfg else {}
    return {"timeout": float(ex.get("timeout", 180)),
            "limits": {"memory_bytes": int(g.get("memory_bytes", 4 << 30)), "max_processes": int(g.get("max_processes", 256)),
                       "threads": int(g.get("threads", 1))}}


def make_job(root: Path, s: Submission, *, unsafe: bool, cfg: dict) -> dict:
    """Everything a worker needs, by value: it may run on another machine."""
    src = root / "solutions" / s.assignment / s.notebook
    release = root / "assignments" / s.assignment
    files = {str(p.relative_to(release)): p.read_bytes().hex() for p in release.rglob("*")
             if p.is_file() and p.suffix != ".ipynb" and ".ipynb_checkpoints" not in p.parts}
    submitted = (root / "submitted" / s.student / s.assignment / s.notebook).read_text()
    source = src.read_text()
    key = _sha((submitted + "\0" + source + "\0" + json.dumps(files, sort_keys=True) + "\0" + grader_hash()
                + json.dumps(cfg, sort_keys=True) + str(unsafe)).encode())
    return {"submission": [s.student, s.assignment, s.notebook], "submitted": submitted, "source": source,
            "release_files": files, "timeout": cfg["timeout"], "limits": cfg["limits"],
            "forbidden": forbidden_modules(src), "unsafe": unsafe, "key": key,
            "cache_dir": str(cache_home())}


# --------------------------------------------------------------------------------- execution

def run_job(job: dict) -> dict:
    """Execute one submission in a fresh checker process (sandboxed student process inside): ``python checker.py``,
    or, with ``COURSE_LIB_GRADER_ZYGOTE=1``, a child forked from this process's warm template (:mod:`warmstart`).
    Importable by Dask workers: it needs only the course environment."""
    with tempfile.TemporaryDirectory(prefix="course-job-") as tmp:
        tmp = Path(tmp)
        release = tmp / "release"
        release.mkdir()
        for rel, hexdata in job["release_files"].items():
            p = (release / rel).resolve()
            if release.resolve() not in p.parents:
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(bytes.fromhex(hexdata))
        (tmp / "submitted.ipynb").write_text(job["submitted"])
        (tmp / "source.ipynb").write_text(job["source"])
        spec = {"submitted": str(tmp / "submitted.ipynb"), "source": str(tmp / "source.ipynb"), "release_dir": str(release),
                "out": str(tmp / "out.ipynb"), "timeout": job["timeout"], "limits": job["limits"],
                "forbidden": job["forbidden"], "unsafe": job["unsafe"], "cache_dir": job["cache_dir"]}
        (tmp / "job.json").write_text(json.dumps(spec))
        # the checker stops the student's own cells after the cell limit times the assignment's code cells, and
        # runs each of its tests within the cell limit: past twice that, something else is wrong
        n_code = job["source"].count('"cell_type": "code"')
        limit = job["timeout"] * (2 * n_code + 3) + 120
        env = dict(os.environ, PYTHONHASHSEED="0", **checker_threads(job["limits"]))
        env.pop("NBGRADER_EXECUTION", None)
        t0 = time.monotonic()
        ended = warmstart.run(tmp / "job.json", env, limit, tmp / "checker.log")
        if ended is None:  # no warm checker to fork from: a fresh process
            try:
                checker = Path(__file__).resolve().parent / "checker.py"
                out = subprocess.run([sys.executable, str(checker), str(tmp / "job.json")], env=env,
                                     capture_output=True, text=True, timeout=limit, start_new_session=True,
                                     preexec_fn=_die_with_parent)
                ended = (out.returncode, out.stderr)
            except subprocess.TimeoutExpired:
                ended = ("timeout", "")
        code, stderr = ended
        if code == "timeout":
            return {"key": job["key"], "submission": job["submission"], "error": f"the checker ran past {limit:.0f} s"}
        if code != 0 or not (tmp / "out.ipynb").is_file():
            return {"key": job["key"], "submission": job["submission"],
                    "error": f"the checker failed (exit {code}): {stderr[-2000:]}"}
        summary = json.loads((tmp / "out.ipynb.json").read_text())
        summary["wall_seconds"] = round(time.monotonic() - t0, 2)
        return {"key": job["key"], "submission": job["submission"], "notebook": (tmp / "out.ipynb").read_text(),
                "summary": summary}


def checker_threads(limits: dict) -> dict:
    """The checker's torch threads: those of the student's process (``limits["threads"]``). A job's two processes
    take turns (the student's process waits while a test computes, and the other way round), so a job uses about
    that many cores, as ``default_jobs`` assumes. With torch's default (every core) a checker that computes while
    other jobs or programs hold the cores waits at each parallel region for threads that are not running: a4's
    inversion test, which runs the model in the checker, took 4.5 s per step instead of 0.5 s under load 4.5."""
    n = str(max(1, int(limits.get("threads", 1))))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "COURSE_LIB_THREADS": n}


def _die_with_parent():
    """The checker (and with it its sandbox) ends when the process that started it dies (a killed worker)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


def result_path(root: Path, s: Submission) -> Path:
    return root / RESULTS / s.student / s.assignment / s.notebook


def stored_key(root: Path, s: Submission) -> str | None:
    meta = result_path(root, s).with_suffix(".json")
    if not meta.is_file() or not result_path(root, s).is_file():
        return None
    try:
        return json.loads(meta.read_text()).get("key")
    except ValueError:
        return None


def store(root: Path, s: Submission, res: dict) -> None:
    p = result_path(root, s)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".part")
    tmp.write_text(res["notebook"])
    tmp.replace(p)
    p.with_suffix(".json").write_text(json.dumps({"key": res["key"], "summary": res["summary"]}))


def default_jobs(threads_per_kernel: int = 1) -> int:
    try:
        budget = int(cpu_budget().cpus)
    except Exception:  # noqa: BLE001
        budget = len(os.sched_getaffinity(0))
    return max(1, budget // max(1, threads_per_kernel))


def execute(root: Path, subs: list[Submission], *, jobs: int, scheduler: str | None, unsafe: bool,
            force: bool, progress=True, log=print) -> dict[Submission, str]:
    """Run what is missing; returns {submission: error} for those that could not be executed."""
    cfg = settings(root)
    todo, errors = [], {}
    for s in subs:
        why = submission_problem(root, s)
        if why:
            errors[s] = why
            continue
        job = make_job(root, s, unsafe=unsafe, cfg=cfg)
        if force or stored_key(root, s) != job["key"]:
            todo.append((s, job))
    if not todo:
        return errors
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="grading", unit="submission", disable=not progress, file=sys.stdout)

    def done(s, res):
        if "error" in res:
            errors[s] = res["error"]
        else:
            store(root, s, res)
            errors.pop(s, None)
        bar.update(1)

    if scheduler:
        _execute_dask(todo, scheduler, done)
    else:
        with cf.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futs = {pool.submit(run_job, job): (s, job) for s, job in todo}
            retry = []
            for f in cf.as_completed(futs):
                s, job = futs[f]
                res = f.result()
                if "error" in res and "exit -9" in res["error"] or "error" in res and "exit -15" in res["error"]:
                    retry.append((s, job))  # the worker process was killed: once more
                    continue
                done(s, res)
            for s, job in retry:
                done(s, run_job(job))
    bar.close()
    return errors


def _execute_dask(todo, scheduler, done):
    from distributed import Client, as_completed

    client = Client(scheduler, timeout="30s") if isinstance(scheduler, str) else Client(scheduler)
    try:
        futs = {}
        for s, job in todo:
            f = client.submit(run_job, job, key=f"grade-{job['key'][:24]}", pure=False, retries=1)
            futs[f] = s
        for f in as_completed(futs, timeout=len(todo) * 3600):
            s = futs[f]
            try:
                done(s, f.result(timeout=60))
            except Exception as e:  # noqa: BLE001  (a task whose workers died more often than the scheduler allows)
                done(s, {"error": f"the worker grading it failed: {type(e).__name__}: {e}"})
    finally:
        if isinstance(scheduler, str):
            client.close()


# --------------------------------------------------------------------------------- recording

def _api(root: Path):
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config, PyFileConfigLoader

    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config() if (root / "nbgrader_config.py").is_file() else Config()
    cfg.CourseDirectory.root = str(root)
    return NbGraderAPI(config=cfg)


def record(root: Path, subs: list[Submission], *, log=print) -> list[str]:
    """nbgrader autograde (with the stored results), feedback and grades.csv; this process only."""
    os.environ.pop("NBGRADER_EXECUTION", None)
    # nbgrader runs `alembic` from PATH: `course-lib grade` must work from a shell where the venv is not active
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    from nbgrader.api import Gradebook, MissingEntry

    api, problems = _api(root), []
    pairs = sorted({(s.assignment, s.student) for s in subs})
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        missing = []
        for a in sorted({a for a, _ in pairs}):
            try:
                gb.find_assignment(a)
            except MissingEntry:
                missing.append(a)
    for a in missing:  # nbgrader keeps the instructor's test cells in the gradebook: put them there
        res = api.generate_assignment(a, force=True)
        if not res.get("success"):
            problems.append(f"{a}: nbgrader generate_assignment failed: {str(res.get('error', ''))[-600:]}")
    import warnings

    from nbgrader.apps.api import Autograde, GenerateFeedback, capture_log, temp_attrs

    by_assignment: dict[str, list[str]] = {}
    for assignment, student in pairs:
        by_assignment.setdefault(assignment, []).append(student)
    for assignment, students in by_assignment.items():
        everyone = {p.parent.name for p in (root / "submitted").glob(f"*/{assignment}")}
        # one nbgrader run per assignment for the whole class (each run costs seconds of start-up), else one per student
        groups = ["*"] if set(students) >= everyone else students
        for student in groups:
            with warnings.catch_warnings(), temp_attrs(api.coursedir, assignment_id=assignment, student_id=student):
                warnings.simplefilter("ignore")
                app = Autograde(coursedir=api.coursedir, parent=api)
                app.force, app.create_student = True, True
                res = capture_log(app)
                if res.get("success"):
                    app = GenerateFeedback(coursedir=api.coursedir, parent=api)
                    app.force = True
                    fb = capture_log(app)
                    if not fb.get("success"):
                        problems.append(f"{assignment}/{student}: feedback failed: {str(fb.get('error', ''))[-600:]}")
            if not res.get("success"):
                problems.append(f"{assignment}/{student}: nbgrader autograde failed: {str(res.get('error', ''))[-600:]}")
    # `nbgrader export`'s own plugin, in this process (a second nbgrader process costs seconds of start-up)
    from nbgrader.plugins import CsvExportPlugin

    try:
        plugin = CsvExportPlugin(to=str(root / "grades.csv"))
        with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
            plugin.export(gb)
    except Exception as e:  # noqa: BLE001
        problems.append(f"nbgrader export failed: {type(e).__name__}: {e}")
    return problems


def stored_tests_differ(root: Path, assignments) -> list[str]:
    """Test cells whose copy in the gradebook differs from solutions/ (nbgrader grades against the stored copy)."""
    import nbformat
    from nbgrader.api import Gradebook, MissingEntry

    out = []
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        for a in sorted(set(assignments)):
            for path in sorted((root / "solutions" / a).glob("*.ipynb")):
                for cell in nbformat.read(str(path), as_version=4).cells:
                    if not is_test_cell(cell):
                        continue
                    m = cell.metadata["nbgrader"]
                    try:
                        stored = gb.find_source_cell(m["grade_id"], path.stem, a).source
                    except MissingEntry:
                        continue
                    if stored != cell.source:
                        out.append(f"{a}/{path.stem}/{m['grade_id']}")
    return out


@contextlib.contextmanager
def _unsafe_env(unsafe: bool):
    """COURSE_LIB_GRADE_UNSAFE (read by nbgrader's step, :class:`course_lib.autograde.IsolatedExecute`) says exactly
    what this run was asked for, and only while it runs: a value left in the environment by an earlier unsafe run in
    the same process, or exported in the shell, must never take the sandbox away from a run that did not ask."""
    old = os.environ.pop("COURSE_LIB_GRADE_UNSAFE", None)
    if unsafe:
        os.environ["COURSE_LIB_GRADE_UNSAFE"] = "1"
    try:
        yield
    finally:
        os.environ.pop("COURSE_LIB_GRADE_UNSAFE", None)
        if old is not None:
            os.environ["COURSE_LIB_GRADE_UNSAFE"] = old


def grade_class(root: Path, *, jobs: int | None = None, scheduler: str | None = None, unsafe: bool = False,
                assignments=None, students=None, force: bool = False, progress: bool = True, out=print) -> int:
    """``course-lib grade``: execute, record, report, check. Returns a process exit status."""
    root = Path(root).resolve()
    if not unsafe and sandbox.bwrap_path() is None:
        out(sandbox.BWRAP_MISSING)
        return 2
    subs = find(root, assignments, students)
    if not subs:
        out("No submissions found in submitted/<student>/<assignment>/ (collect them with nbgrader collect or zip_collect).")
        return 1
    before = fingerprints(root)
    cfg = settings(root)
    jobs = jobs or default_jobs(cfg["limits"]["threads"])
    where = f"on the Dask scheduler {scheduler}" if scheduler else f"{jobs} at a time"
    out(f"Grading {len(subs)} submission(s), {where}{' WITHOUT a sandbox (--unsafe)' if unsafe else ', each in its own sandbox'}.")
    with _unsafe_env(unsafe):
        t0 = time.monotonic()
        errors = execute(root, subs, jobs=jobs, scheduler=scheduler, unsafe=unsafe, force=force, progress=progress)
        t1 = time.monotonic()
        for s, why in errors.items():
            out(f"  ! {s.assignment}/{s.student}: could not be executed: {why[:300]}")
        problems = record(root, [s for s in subs if s not in errors], log=out)
        t2 = time.monotonic()
    for p in problems:
        out("  ! " + p)
    grade_report(root, out=out)
    after = fingerprints(root)
    diff = changed(before, after) + [f"gradebook test cell {c}" for c in stored_tests_differ(root, {s.assignment for s in subs})]
    out(f"Executed in {t1 - t0:.1f} s, recorded in {t2 - t1:.1f} s ({(t2 - t1) / max(1, len(subs)):.2f} s per submission).")
    if diff:
        out("  ! These files changed while grading (check them): " + ", ".join(diff[:20]))
    else:
        out("Solutions, release, course_lib and nbgrader_config.py are unchanged (sha256), and the gradebook's "
            "test cells are the solutions' own.")
    (root / RESULTS).mkdir(exist_ok=True)
    (root / RESULTS / "last-run.json").write_text(json.dumps({
        "submissions": len(subs), "errors": {f"{s.assignment}/{s.student}": e for s, e in errors.items()},
        "problems": problems, "changed": diff, "execute_seconds": round(t1 - t0, 2), "record_seconds": round(t2 - t1, 2)}))
    return 1 if (errors or problems or diff) else 0
