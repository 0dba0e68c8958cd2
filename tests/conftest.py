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


def pytest_terminal_summary(terminalreporter):
    """Print the notebooks' run times and peak memory recorded by test_notebooks.py."""
    import json
    from pathlib import Path

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

