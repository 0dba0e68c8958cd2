"""The warm checker template (course_lib.grader.zygote, warmstart): a checker forked from it grades as a fresh
``python checker.py`` does, only without importing torch again; past its time limit it is killed with its sandbox;
and nothing it started outlives the process that asked for it."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.xdist_group("grading_isolation"),
              pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (make sandbox)")]


def _cell(src, **nbg):
    c = nbformat.v4.new_code_cell(src)
    c.metadata["nbgrader"] = {"schema_version": 3, "locked": False, "solution": False, "grade": False, **nbg}
    return c


def _job(tmp: Path, answer: str, test: str, timeout: float = 30) -> Path:
    """A job file as classroom.run_job writes it: one answer cell and one test cell."""
    src = nbformat.v4.new_notebook(cells=[
        _cell("def f(x):\n    return x + 1", grade_id="f", solution=True),
        _cell(test, grade_id="test_f", grade=True, points=1, locked=True),
    ])
    sub = nbformat.from_dict(json.loads(json.dumps(src)))
    sub.cells[0].source = answer
    tmp.mkdir(parents=True, exist_ok=True)
    nbformat.write(src, str(tmp / "source.ipynb"))
    nbformat.write(sub, str(tmp / "submitted.ipynb"))
    (tmp / "release").mkdir(exist_ok=True)
    spec = {"submitted": str(tmp / "submitted.ipynb"), "source": str(tmp / "source.ipynb"),
            "release_dir": str(tmp / "release"), "out": str(tmp / "out.ipynb"), "timeout": timeout, "limits": {},
            "forbidden": [], "unsafe": False, "cache_dir": None}
    (tmp / "job.json").write_text(json.dumps(spec))
    return tmp / "job.json"


# the test cell says whether torch was in memory before it imported anything, then checks the answer
PROBE = "import sys\nprint('torch loaded before the test:', 'torch' in sys.modules)\nassert f(2) == 3"


@pytest.fixture(autouse=True)
def _template_on(monkeypatch):
    monkeypatch.setenv("COURSE_LIB_GRADER_ZYGOTE", "1")  # opt-in (grader/warmstart.py says why)


def _env():
    env = dict(os.environ, PYTHONHASHSEED="0", COURSE_LIB_GRADER_ZYGOTE="1")
    env.pop("NBGRADER_EXECUTION", None)
    return env


def test_a_forked_checker_grades_as_a_fresh_one(tmp_path):
    from course_lib.grader import warmstart

    outcomes = {}
    for how in ("fresh", "forked"):
        for answer in ("def f(x):\n    return x + 1", "def f(x):\n    return x - 1"):
            job = _job(tmp_path / how / str(len(outcomes)), answer, PROBE)
            if how == "forked":
                code, log = warmstart.run(job, _env(), 120, job.parent / "checker.log")
                assert code == 0, log[-2000:]
            else:
                out = subprocess.run([sys.executable, str(Path(warmstart.__file__).parent / "checker.py"), str(job)],
                                     env=_env(), capture_output=True, text=True, timeout=120)
                assert out.returncode == 0, out.stderr[-2000:]
            summary = json.loads((job.parent / "out.ipynb.json").read_text())
            text = "".join(o.get("text", "") for o in nbformat.read(str(job.parent / "out.ipynb"), 4).cells[1].outputs)
            outcomes[(how, answer)] = ([c["passed"] for c in summary["cells"]], text)
    right, wrong = "def f(x):\n    return x + 1", "def f(x):\n    return x - 1"
    assert outcomes[("fresh", right)][0] == outcomes[("forked", right)][0] == [True]
    assert outcomes[("fresh", wrong)][0] == outcomes[("forked", wrong)][0] == [False]
    # the point of the template: its checkers start with torch already imported; a fresh one has to import it
    assert "torch loaded before the test: True" in outcomes[("forked", right)][1], outcomes
    assert "torch loaded before the test: False" in outcomes[("fresh", right)][1], outcomes


def _running(pattern: str) -> list[str]:
    """Processes whose command line holds ``pattern`` (a sandbox's bwrap names its work folder), this test's excepted."""
    pids = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [p for p in pids if int(p) != os.getpid()]


def test_a_checker_past_its_limit_is_killed_with_its_sandbox(tmp_path):
    from course_lib.grader import warmstart

    job = _job(tmp_path / "slow", "import time\ntime.sleep(600)\ndef f(x):\n    return x + 1", "assert f(2) == 3",
               timeout=600)
    work = tmp_path / "slow-tmp"  # the checker's folders, and so its sandbox's command line
    work.mkdir()
    seen, result = [], []
    runner = threading.Thread(target=lambda: result.append(
        warmstart.run(job, dict(_env(), TMPDIR=str(work)), 20, job.parent / "checker.log")))
    t0 = time.monotonic()
    runner.start()
    while runner.is_alive():
        seen += _running(str(work))
        time.sleep(0.5)
    runner.join()
    assert result == [("timeout", "")] and time.monotonic() - t0 < 80, result
    assert seen, "the sandbox was never seen running: the check below would prove nothing"
    time.sleep(1)
    assert not _running(str(work)), f"processes of the killed checker are still running: {_running(str(work))}"


def test_nothing_outlives_the_process_that_asked(tmp_path):
    """The caller is killed while its checker grades a cell that never ends: the template, the checker and the
    sandboxed student process all end."""
    job = _job(tmp_path / "orphan", "import time\ntime.sleep(600)\ndef f(x):\n    return x + 1", "assert f(2) == 3",
               timeout=600)
    work = tmp_path / "orphan-tmp"
    work.mkdir()
    caller = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from pathlib import Path
        from course_lib.grader import warmstart
        import os
        env = dict(os.environ, PYTHONHASHSEED="0")
        warmstart.run(Path({str(job)!r}), env, 600, Path({str(job.parent / "checker.log")!r}))
        """)], env=dict(_env(), TMPDIR=str(work)), start_new_session=True)
    try:
        deadline, template, checkers = time.monotonic() + 180, [], []
        while time.monotonic() < deadline:  # the template, its checker and the checker's sandbox are all running
            template = subprocess.run(["pgrep", "-P", str(caller.pid), "-f", "grader/zygote.py"], capture_output=True,
                                      text=True).stdout.split()
            checkers = [c for t in template for c in subprocess.run(["pgrep", "-P", t], capture_output=True,
                                                                    text=True).stdout.split()]
            if template and checkers and _running(str(work)):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the sandbox never started (template {template}, checkers {checkers})")
        time.sleep(2)
    finally:
        os.kill(caller.pid, signal.SIGKILL)  # the caller alone: the template sees its stdin close
        caller.wait()
    deadline, left = time.monotonic() + 30, ["?"]
    while time.monotonic() < deadline and left:
        time.sleep(0.5)
        left = _running(str(work)) + [p for p in template + checkers if Path(f"/proc/{p}").exists()]
    if left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(caller.pid, signal.SIGKILL)
    assert not left, f"still running after the caller was killed: {left}"


# the test cell (in the checker) and the answer cell (in the sandbox) each report torch's thread count
THREADS_ANSWER = "import torch\nSTUDENT_THREADS = torch.get_num_threads()\ndef f(x):\n    return x + 1"
THREADS_TEST = ("import torch\nprint('threads: checker', torch.get_num_threads(), 'student', STUDENT_THREADS)\n"
                "assert torch.get_num_threads() == STUDENT_THREADS == WANT")


@pytest.mark.parametrize("how", ["fresh", "forked"])
def test_the_checker_uses_the_threads_of_the_students_process(tmp_path, monkeypatch, how):
    # A test cell that runs a model computes in the checker while other jobs hold the cores; with torch's default
    # (every core) it waited at each parallel region: a4's inversion test took 4.5 s per step instead of 0.5 s.
    from course_lib.grader import classroom

    if how == "fresh":
        monkeypatch.delenv("COURSE_LIB_GRADER_ZYGOTE", raising=False)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "COURSE_LIB_THREADS"):
        monkeypatch.delenv(k, raising=False)  # the caller's own setting must not decide it
    for want in (1, 2):
        job_file = _job(tmp_path / f"{how}{want}", THREADS_ANSWER, THREADS_TEST.replace("WANT", str(want)))
        spec = json.loads(job_file.read_text())
        job = {"key": "k", "submission": {}, "release_files": {}, "timeout": 60, "forbidden": [], "unsafe": False,
               "cache_dir": None, "limits": {"threads": want},
               "submitted": Path(spec["submitted"]).read_text(), "source": Path(spec["source"]).read_text()}
        res = classroom.run_job(job)
        assert "summary" in res, res.get("error")
        cells = res["summary"]["cells"]
        out = "".join(o.get("text", "") for o in nbformat.reads(res["notebook"], 4).cells[1].outputs)
        assert cells and all(c["passed"] for c in cells), (want, out, cells)
        assert f"threads: checker {want} student {want}" in out, out
