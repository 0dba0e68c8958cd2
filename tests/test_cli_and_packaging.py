"""Set-up: the doctor command, the device override, and pyproject vs environment.yml."""
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from course_lib.device import default_device

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "course_lib.cli"]


def _names(specs):
    out = set()
    for s in specs:
        name = re.split(r"[<>=!~\[ ;]", s.strip(), maxsplit=1)[0].lower().replace("_", "-")
        out.add({"pytorch": "torch"}.get(name, name))
    return out


def test_environment_yml_agrees_with_pyproject():
    import yaml

    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    # the hub's environment also needs jupyterhub (jupyterhub-singleuser), which pyproject keeps in the test extras
    hub_only = [s for s in py["optional-dependencies"]["test"] if _names([s]) == {"jupyterhub"}]
    assert hub_only, "pyproject.toml's test extras lack jupyterhub (tests/test_hub.py)"
    conda = [d for d in env["dependencies"] if isinstance(d, str) and d not in hub_only]
    assert len(conda) == sum(isinstance(d, str) for d in env["dependencies"]) - 1, (
        f"environment.yml must list {hub_only[0]} exactly as pyproject.toml's test extras do")
    conda_names = _names(conda) - {"python", "pip"}
    assert conda_names == _names(py["dependencies"]), (
        f"only in environment.yml: {sorted(conda_names - _names(py['dependencies']))}; "
        f"only in pyproject.toml: {sorted(_names(py['dependencies']) - conda_names)}"
    )
    # the same lower bounds
    bounds = lambda specs: {_names([s]).pop(): re.sub(r"^[A-Za-z0-9_.\-]+", "", s).strip() for s in specs}  # noqa: E731
    conda_b = bounds(conda)
    conda_b = {k: v for k, v in conda_b.items() if k not in ("python", "pip")}
    assert conda_b == bounds(py["dependencies"])


def test_doctor_reports_missing_models_with_the_fetch_command(tmp_path):
    env = dict(os.environ, COURSE_LIB_HOME=str(tmp_path / "empty"), COURSE_LIB_USER_CACHE=str(tmp_path / "u"), COURSE_LIB_DEVICE="cpu")
    out = subprocess.run(CLI + ["doctor"], capture_output=True, text=True, env=env)
    assert out.returncode == 1
    assert "smollm2-135m" in out.stdout and "course-lib fetch smollm2-135m" in out.stdout
    assert "device     cpu" in out.stdout and f"torch      {torch.__version__}" in out.stdout


def test_doctor_passes_with_the_fetched_cache():
    env = dict(os.environ, COURSE_LIB_DEVICE="cpu")
    out = subprocess.run(CLI + ["doctor"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "All required models are present" in out.stdout


def test_device_override(monkeypatch):
    monkeypatch.setenv("COURSE_LIB_DEVICE", "cpu")
    assert default_device() == torch.device("cpu")
    monkeypatch.setenv("COURSE_LIB_DEVICE", "tpu-please")
    with pytest.raises(ValueError, match="COURSE_LIB_DEVICE"):
        default_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("COURSE_LIB_DEVICE", "cuda")
        with pytest.raises(RuntimeError, match="no CUDA"):
            default_device()
    monkeypatch.delenv("COURSE_LIB_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert default_device().type == expected


def test_ci_calls_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
