"""Every lecture and every solution notebook runs top to bottom, within time and memory.

Each run's wall time and the kernel's peak memory go to tests/reports/notebooks.json and
are printed at the end of the session.
"""
import hashlib
import json
import time
from pathlib import Path

import nbformat
import pytest

from course_lib.notebooks import execute_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("lectures/*.ipynb")) + sorted(ROOT.glob("solutions/*/*.ipynb"))
REPORT = ROOT / "tests" / "reports" / "notebooks.json"
# Executed copies, reused by `make site` (the website shows the lectures with their outputs): the copy's
# metadata course_lib.source_sha256 is the sha256 of the committed notebook's bytes, so a stale copy is seen.
EXECUTED = ROOT / "build" / "executed"
# The target is 2 GiB, what a typical hub gives a student; run alone, every notebook peaks at 1.5-1.8 GiB.
# Inside a long test session the same notebook has peaked up to 0.3 GiB higher (the kernel's memory
# layout depends on the machine's state), so the hard limit leaves that margin and the figures are reported.
PEAK_LIMIT_GIB = 2.25
# The kernel's own peak resident memory in KiB. VmHWM belongs to the kernel's address space;
# ru_maxrss would not do: Linux carries it over from the parent across fork and exec, so every
# kernel started by a big pytest process would report the parent's peak.
PEAK_CELL = """
def _peak_kib():
    try:
        with open("/proc/self/status") as f:
            return int(next(l for l in f if l.startswith("VmHWM:")).split()[1])
    except (OSError, StopIteration):
        import resource, sys
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak
print("__PEAK__" + str(_peak_kib()))
"""


def _record(name, seconds, peak_gib):
    REPORT.parent.mkdir(exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.is_file() else {}
    data[name] = {"seconds": round(seconds, 1), "peak_gib": round(peak_gib, 2)}
    REPORT.write_text(json.dumps(data, indent=2, sort_keys=True))


ALL_COMMITTED = NOTEBOOKS + sorted(ROOT.glob("assignments/*/*.ipynb"))


@pytest.mark.parametrize("path", ALL_COMMITTED, ids=[str(p.relative_to(ROOT)) for p in ALL_COMMITTED])
def test_notebook_is_saved_as_jupyter_saves_it(path):
    """Opening a notebook in JupyterLab must change nothing (no tab marked as modified on open):
    the committed bytes are what Jupyter's own writer (nbformat 4.5, cell ids, sorted keys) produces."""
    raw = path.read_text(encoding="utf-8")
    nb = nbformat.reads(raw, as_version=4)
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5), f"{path.name} is nbformat {nb.nbformat}.{nb.nbformat_minor}; save it as 4.5"
    assert all("id" in c for c in nb.cells), f"{path.name} has cells without ids; JupyterLab adds them on open"
    saved = nbformat.writes(nb)
    saved += "" if saved.endswith("\n") else "\n"
    assert raw == saved, (
        f"{path.name} is not in the form Jupyter saves it; rewrite it with "
        f"`python -c \"import nbformat as n; p='{path.relative_to(ROOT)}'; n.write(n.read(p, 4), p)\"`"
    )


# make test (pytest-xdist, --dist loadgroup) runs the lectures on one worker, before test_site.py builds the
# website from their executed copies; the solutions go to whichever worker is free.
RUNS = [pytest.param(p, marks=pytest.mark.xdist_group("lectures")) if p.parent.name == "lectures" else p for p in NOTEBOOKS]


@pytest.mark.slow
@pytest.mark.parametrize("path", RUNS, ids=[str(p.relative_to(ROOT)) for p in NOTEBOOKS])
def test_notebook_runs(path):
    raw = path.read_bytes()
    nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
    for cell in nb.cells:
        assert cell.cell_type != "code" or (not cell.outputs and cell.execution_count is None), (
            f"{path.name} is committed with outputs; clear them (the course commits notebooks clean)"
        )
    nb.cells.append(nbformat.v4.new_code_cell(PEAK_CELL))
    t0 = time.time()
    execute_notebook(nb, path.parent)  # inline figures are kept in the executed copy that the website shows
    seconds = time.time() - t0
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream")
    peak_gib = int(text.split("__PEAK__")[1].split()[0]) / 2**20
    _record(str(path.relative_to(ROOT)), seconds, peak_gib)
    nb.cells.pop()  # the memory probe is not part of the lecture
    nb.metadata.setdefault("course_lib", {})["source_sha256"] = hashlib.sha256(raw).hexdigest()
    out = EXECUTED / path.relative_to(ROOT)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(out))
    print(f"\n{path.relative_to(ROOT)}: {seconds:.1f} s, kernel peak {peak_gib:.2f} GiB")
    assert peak_gib <= PEAK_LIMIT_GIB, f"{path.name} peaked at {peak_gib:.2f} GiB (limit {PEAK_LIMIT_GIB} GiB)"
