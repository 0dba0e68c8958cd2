import os

import pytest

os.environ.setdefault("COURSE_LIB_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def scenes_cnn():
    from course_lib.zoo import load_model

    return load_model("scenes-cnn", device="cpu")


@pytest.fixture(scope="session")
def scenes_test():
    from course_lib.zoo import load_dataset

    return load_dataset("scenes", split="test", n=200, seed=7)


@pytest.fixture(scope="session")
def smollm2():
    from course_lib.zoo import load_model

    return load_model("smollm2-135m", device="cpu")


# The work units (xdist groups, else test files) that take longest, longest first. `make test` runs with
# `--dist loadgroup --no-loadscope-reorder`, so the two workers start on the longest units and the short files fill in
# behind them; the default order (most tests first) left the few-but-long units to the end, one worker busy alone.
# Seconds in CI at 46 min (2026-12-07): nbgrader ~1500, lectures ~1220, grading_class ~710, grading_isolation ~500,
# test_notebooks.py (solutions and claims) ~400, hub ~350. The terminal summary prints each run's figures.
LONGEST_FIRST = ["nbgrader", "lectures", "grading_class", "grading_isolation", "tests/test_notebooks.py", "hub"]


def _unit(nodeid: str, group: str | None = None) -> str:
    if group is None and "@" in nodeid:
        group = nodeid.rsplit("@", 1)[1]
    return group or nodeid.split("::")[0]


def pytest_collection_modifyitems(config, items):
    rank = {u: i for i, u in enumerate(LONGEST_FIRST)}

    def key(item):
        m = item.get_closest_marker("xdist_group")
        return rank.get(_unit(item.nodeid, m.args[0] if m and m.args else None), len(rank))

    items.sort(key=key)  # stable: within a unit, the files' own order


def pytest_terminal_summary(terminalreporter):
    """Print seconds per work unit and per worker, and the notebooks' run times and peak memory (test_notebooks.py)."""
    import json
    from collections import Counter
    from pathlib import Path

    units, workers = Counter(), Counter()
    for reports in terminalreporter.stats.values():
        for r in reports:
            if getattr(r, "nodeid", None) and isinstance(getattr(r, "duration", None), float):
                units[_unit(r.nodeid)] += r.duration
                workers[getattr(getattr(getattr(r, "node", None), "gateway", None), "id", None) or "main"] += r.duration
    if units:
        terminalreporter.section("seconds per work unit (xdist group or file) and per worker")
        for u, sec in units.most_common(15):
            terminalreporter.write_line(f"{u:60s} {sec:8.0f} s")
        terminalreporter.write_line("workers: " + ", ".join(f"{w} {sec:.0f} s" for w, sec in sorted(workers.items())))

    report = Path(__file__).parent / "reports" / "notebooks.json"
    if report.is_file():
        data = json.loads(report.read_text())
        terminalreporter.section("notebook run times and kernel peak memory")
        for name, d in sorted(data.items()):
            terminalreporter.write_line(f"{name:60s} {d['seconds']:7.1f} s {d['peak_gib']:6.2f} GiB")


def pytest_sessionstart(session):
    from pathlib import Path

    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller (or a plain run) starts the report afresh
        (Path(__file__).parent / "reports" / "notebooks.json").unlink(missing_ok=True)

