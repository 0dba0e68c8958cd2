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


# `make test` spreads the tests over pytest-xdist workers with --dist loadgroup. Tests in one group run
# on one worker, in collection order:
#   lectures: the executed lectures are what test_site.py builds the website from, so it runs after them;
#   nbgrader, prototypes, training_lens: a module fixture (generated course, rendered prototypes, a
#   training run) that would otherwise be built again on every worker.
SAME_WORKER = {"test_nbgrader.py": "nbgrader", "test_site.py": "lectures", "test_prototypes.py": "prototypes",
               "test_training_lens.py": "training_lens"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.path.name
        group = SAME_WORKER.get(name)
        if name == "test_notebooks.py" and item.name.startswith("test_notebook_runs[lectures/"):
            group = "lectures"
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
