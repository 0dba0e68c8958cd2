"""Class-scale grading (course_lib.grader.classroom): many submissions at once, on Dask, resumable.

Twenty synthetic submissions over two small assignments (correct, wrong, crashing, looping and
tampering) are graded one at a time, two at a time with the run interrupted and resumed, on a real
Dask cluster (a scheduler and two workers started as processes on 127.0.0.1) with one worker killed
while it grades, and (a few) on a LocalCluster. grades.csv, the feedback and the report (without the
timings) must be identical every time; a regrade of one student touches no one else.
"""
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.xdist_group("grading_class"),
              pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (make sandbox)")]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, PATH=str(BIN) + os.pathsep + os.environ.get("PATH", ""))
ENV.pop("NBGRADER_EXECUTION", None)


def _cell(kind, source, grade_id=None, **nbg):
    c = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
    if grade_id:
        c.metadata["nbgrader"] = {"grade_id": grade_id, "schema_version": 3, "locked": False, "solution": False,
                                  "grade": False, **nbg}
    return c


def _assignment(name, fn, body, checks, hidden, again):
    cells = [
        _cell("markdown", f"# {name}"),
        _cell("code", "import math", "setup", locked=True),
        _cell("code", f"def {fn}(x):\n    ### BEGIN SOLUTION\n    {body}\n    ### END SOLUTION", fn, solution=True),
        _cell("code", f"{checks}\n### BEGIN HIDDEN TESTS\n{hidden}\n### END HIDDEN TESTS", f"test_{fn}", grade=True, points=2, locked=True),
        _cell("code", again, f"test_{fn}_again", grade=True, points=1, locked=True),
    ]
    for i, c in enumerate(cells):  # fixed ids: every course built by these tests has the same notebooks
        c.id = f"{name.replace('_', '-')}-{i}"
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    return nb


ASSIGNMENTS = {
    "t1_square": ("square", "return x * x", "assert square(3) == 9, 'square(3) should be 9'", "assert square(-4) == 16",
                  "assert square(5) == 25, 'square(5) should be 25'"),
    "t2_half": ("half", "return x / 2", "assert half(3) == 1.5, 'half(3) should be 1.5'", "assert math.isclose(half(-7), -3.5)",
                "assert half(5) == 2.5, 'half(5) should be 2.5'"),
}
KINDS = {  # student -> answer body (None: the reference answer)
    "s01-correct": None, "s02-correct": None, "s03-correct": None, "s04-correct": None,
    "s05-wrong": "return x + 1", "s06-wrong": "return 0",
    "s07-crash": "raise RuntimeError('not done')",
    "s08-loop": "while True:\n        pass",
    "s09-tamper": "get_ipython().set_custom_exc((BaseException,), lambda *a, **k: None)\n    return 0",
    "s10-exit": "import os\n    os._exit(3)",
}


def _build(path: Path) -> Path:
    path.mkdir()
    cfg = (ROOT / "nbgrader_config.py").read_text() + "\nc.Execute.timeout = 12\n"
    (path / "nbgrader_config.py").write_text(cfg)
    for a, (fn, body, checks, hidden, again) in ASSIGNMENTS.items():
        (path / "solutions" / a).mkdir(parents=True)
        nbformat.write(_assignment(a, fn, body, checks, hidden, again), str(path / "solutions" / a / f"{a}.ipynb"))
    for a in ASSIGNMENTS:
        out = subprocess.run([str(BIN / "nbgrader"), "generate_assignment", a, "--force"], cwd=path, env=ENV,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
    for a, (fn, *_rest) in ASSIGNMENTS.items():
        rel = nbformat.read(str(path / "assignments" / a / f"{a}.ipynb"), as_version=4)
        src = nbformat.read(str(path / "solutions" / a / f"{a}.ipynb"), as_version=4)
        for student, body in KINDS.items():
            nb = nbformat.from_dict(json.loads(json.dumps(rel)))
            ans = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == fn)
            ref = next(c for c in src.cells if c.metadata.get("nbgrader", {}).get("grade_id") == fn).source
            ans.source = (re.sub(r"\s*### (BEGIN|END) SOLUTION", "", ref) if body is None else f"def {fn}(x):\n    {body}")
            (path / "submitted" / student / a).mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, str(path / "submitted" / student / a / f"{a}.ipynb"))
    return path


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A function making a fresh copy of the class (the two releases are generated once: ~1 min each)."""
    template = _build(tmp_path_factory.mktemp("class") / "template")

    def copy(path: Path) -> Path:
        shutil.copytree(template, path, symlinks=True)
        return path
    return copy


def _keep_only(root: Path, students) -> None:
    for s in list((root / "submitted").iterdir()):
        if s.name not in students:
            shutil.rmtree(s)


def _grade(root, *args, timeout=900):
    return subprocess.run([str(BIN / "course-lib"), "grade", str(root), "--no-progress", *args], cwd=root, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _outcome(root: Path) -> dict:
    """grades.csv, the feedback pages and the report without timings: what must not depend on how it ran."""
    with open(root / "grades.csv") as f:
        grades = sorted((r["assignment"], r["student_id"], r["score"], r["max_score"]) for r in csv.DictReader(f))
    feedback = {}
    for p in sorted((root / "feedback").rglob("*.html")):
        text = p.read_text()
        feedback[str(p.relative_to(root))] = re.sub(r"\d+\.\d+ s\b", "", text)
    report = json.loads((root / "grading-report.json").read_text())
    for row in report:
        for c in row["cells"]:
            c.pop("seconds", None)
    return {"grades": grades, "feedback": feedback, "report": report}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, course):
    root = course(tmp_path_factory.mktemp("class") / "serial")
    out = _grade(root, "--jobs", "1")
    assert (root / "grades.csv").is_file(), out.stdout[-3000:] + out.stderr[-3000:]
    return root, _outcome(root)


@pytest.mark.slow
def test_serial_grades_are_right(baseline):
    root, got = baseline
    scores = {(a, s): float(sc) for a, s, sc, _ in got["grades"]}
    for a in ASSIGNMENTS:
        for s in KINDS:
            want = 3.0 if s.endswith("correct") else 0.0
            assert scores[(a, s)] == want, f"{s} on {a}: {scores[(a, s)]}, expected {want}"
    rows = {(r["assignment"], r["student"]): r for r in got["report"]}
    assert rows[("t1_square", "s08-loop")]["timeouts"] and rows[("t1_square", "s10-exit")]["ended"]
    assert rows[("t1_square", "s09-tamper")]["tamper"]


@pytest.mark.slow
def test_two_jobs_interrupted_then_resumed_give_the_same(baseline, course, tmp_path):
    root = course(tmp_path / "parallel")
    proc = subprocess.Popen([str(BIN / "course-lib"), "grade", str(root), "--no-progress", "--jobs", "2"], cwd=root, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and len(list((root / ".grading").rglob("*.json"))) < 6:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = len(list((root / ".grading").rglob("*.json")))
    assert 6 <= done < 20, f"the interrupted run stored {done} results"
    out = _grade(root, "--jobs", "2")
    assert "Grading 20 submission(s)" in out.stdout, out.stdout[-2000:]
    assert _outcome(root) == baseline[1]
    # a regrade of one student re-executes that student only and changes nothing else
    marks = {p: p.stat().st_mtime_ns for p in (root / ".grading").rglob("*.ipynb")}
    out = _grade(root, "--student", "s05-wrong", "--force")
    assert out.returncode in (0, 1), out.stderr[-2000:]
    changed = {str(p.relative_to(root / ".grading")).split("/")[0] for p, t in marks.items() if p.stat().st_mtime_ns != t}
    assert changed == {"s05-wrong"}, changed
    assert _outcome(root) == baseline[1]


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.slow
def test_dask_cluster_with_a_killed_worker_gives_the_same(baseline, course, tmp_path):
    root = course(tmp_path / "dask")
    port = _free_port()
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", "127.0.0.1:0", "--no-show"], env=ENV, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(3)
        for _ in range(2):
            procs.append(subprocess.Popen([str(BIN / "dask"), "worker", f"tcp://127.0.0.1:{port}", "--nworkers", "1",
                                           "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"], env=ENV,
                                          start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        grader = subprocess.Popen([str(BIN / "course-lib"), "grade", str(root), "--no-progress", "--scheduler",
                                   f"tcp://127.0.0.1:{port}"], cwd=root, env=ENV, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        # kill the first worker while it grades a submission (a sandboxed student process of its own is running)
        victim, deadline = procs[1], time.time() + 300
        while time.time() < deadline:
            agents = subprocess.run(["pgrep", "-f", "grader/agent.py"], capture_output=True, text=True).stdout.split()
            if any(_ancestor(int(c), victim.pid) for c in agents):
                break
            time.sleep(0.2)
        else:
            pytest.fail("no worker started grading")
        os.killpg(victim.pid, signal.SIGKILL)
        log, _ = grader.communicate(timeout=900)
        assert (root / "grades.csv").is_file(), log[-3000:]
        assert _outcome(root) == baseline[1], log[-3000:]
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def _ancestor(pid: int, root_pid: int) -> bool:
    for _ in range(10):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == root_pid:
            return True
        if pid <= 1:
            return False
    return False


@pytest.mark.slow
def test_local_cluster(baseline, course, tmp_path):
    from distributed import LocalCluster

    from course_lib.grader import classroom

    root = course(tmp_path / "local")
    _keep_only(root, ("s01-correct", "s05-wrong"))
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      processes=True) as cluster:
        lines = []
        status = classroom.grade_class(root, scheduler=cluster.scheduler_address, progress=False, out=lines.append)
    assert status == 0, "\n".join(lines)
    got = _outcome(root)
    want = [g for g in baseline[1]["grades"] if g[1] in ("s01-correct", "s05-wrong")]
    assert got["grades"] == want


def test_default_jobs_follow_the_cpu_budget():
    """--jobs defaults to the CPU budget (here the affinity mask) over the threads each submission uses."""
    code = "from course_lib.grader.classroom import default_jobs; print(default_jobs(1), default_jobs(2))"
    one = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert one.stdout.split() == ["1", "1"], one.stderr[-500:]
    n = len(os.sched_getaffinity(0))
    if n >= 2:
        both = subprocess.run(["taskset", "-c", "0,1", sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
        assert both.stdout.split() == ["2", "1"], both.stderr[-500:]


def test_nbformat_imports_without_compiling_grammars():
    """Every checker, nbgrader run and Jupyter server imports nbformat, hence jsonschema. With rfc3987-syntax installed
    (jsonschema's format extra) that import compiled 39 lark grammars: 3.3 s instead of 0.4 s per process, measured
    here; the Makefile removes it."""
    code = "import sys, nbformat; print('rfc3987_syntax' in sys.modules, 'lark' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert out.stdout.split() == ["False", "False"], (
        f"importing nbformat loaded rfc3987_syntax/lark ({out.stdout.strip()} {out.stderr[-300:]}): "
        "run `pip uninstall rfc3987-syntax` (the Makefile's install step does)"
    )


def test_a_linked_or_huge_notebook_is_not_graded(tmp_path, monkeypatch):
    """A submitted notebook that is a link (it could point at solutions/) or larger than the cap is reported, not graded."""
    from course_lib.grader import classroom

    root = tmp_path / "c"
    (root / "solutions" / "t1").mkdir(parents=True)
    (root / "solutions" / "t1" / "t1.ipynb").write_text("{}")
    for student in ("linked", "huge", "plain"):
        (root / "submitted" / student / "t1").mkdir(parents=True)
    (root / "submitted" / "linked" / "t1" / "t1.ipynb").symlink_to(root / "solutions" / "t1" / "t1.ipynb")
    (root / "submitted" / "huge" / "t1" / "t1.ipynb").write_text("x" * 2000)
    (root / "submitted" / "plain" / "t1" / "t1.ipynb").write_text("{}")
    monkeypatch.setattr(classroom, "MAX_SUBMISSION_BYTES", 1000)
    why = {s.student: classroom.submission_problem(root, s) for s in classroom.find(root)}
    assert "a link" in why["linked"] and "over the" in why["huge"] and why["plain"] is None, why


def test_without_bubblewrap_grading_stops_with_the_install_command(tmp_path, monkeypatch):
    from course_lib.grader import classroom, sandbox

    root = tmp_path / "c"
    (root / "submitted" / "s" / "t1_square").mkdir(parents=True)
    (root / "solutions" / "t1_square").mkdir(parents=True)
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    lines = []
    assert classroom.grade_class(root, progress=False, out=lines.append) == 2
    assert "apt-get install bubblewrap" in lines[0] and "--unsafe" in lines[0]


@pytest.mark.slow
def test_unsafe_grading_says_so(baseline, course, tmp_path):
    from course_lib.grader import classroom

    root = course(tmp_path / "unsafe")
    _keep_only(root, ("s01-correct", "s05-wrong"))
    lines = []
    classroom.grade_class(root, unsafe=True, progress=False, out=lines.append)
    report = "\n".join(lines)
    assert "WITHOUT a sandbox" in report and "graded WITHOUT a sandbox (--unsafe)" in report, report
    want = [g for g in baseline[1]["grades"] if g[1] in ("s01-correct", "s05-wrong")]
    assert _outcome(root)["grades"] == want


@pytest.mark.slow
def test_an_unsafe_setting_left_in_the_environment_never_unsandboxes(course, tmp_path, monkeypatch):
    """COURSE_LIB_GRADE_UNSAFE=1, left in the process by an earlier --unsafe run (or exported in the shell), made the
    record phase execute every submission again without the sandbox (a submission then wrote into course_lib).
    A run that did not ask for --unsafe sandboxes everything; an --unsafe run leaves no setting behind."""
    from course_lib.grader import classroom

    root = course(tmp_path / "env")
    _keep_only(root, ("s01-correct",))
    path = root / "submitted" / "s01-correct" / "t1_square" / "t1_square.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    ans = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "square")
    ans.source = f"try:\n    open({str(root / 'ESCAPED')!r}, 'w').write('x')\nexcept OSError:\n    pass\n" + ans.source
    nbformat.write(nb, str(path))
    monkeypatch.setenv("COURSE_LIB_GRADE_UNSAFE", "1")
    lines = []
    classroom.grade_class(root, jobs=1, progress=False, out=lines.append)
    assert not (root / "ESCAPED").exists(), "the submission ran outside its sandbox:\n" + "\n".join(lines)
    assert "WITHOUT a sandbox" not in "\n".join(lines)
    assert os.environ.get("COURSE_LIB_GRADE_UNSAFE") == "1"  # the caller's own setting is given back
    monkeypatch.delenv("COURSE_LIB_GRADE_UNSAFE")
    other = course(tmp_path / "unsafe-then")
    _keep_only(other, ("s05-wrong",))
    classroom.grade_class(other, unsafe=True, jobs=1, progress=False, out=lambda *a: None)
    assert "COURSE_LIB_GRADE_UNSAFE" not in os.environ, "an --unsafe run left its setting for later runs"

