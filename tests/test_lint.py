"""ruff is clean on course_lib/ and tests/ (the configuration is pyproject.toml's [tool.ruff]; `make lint` runs the same)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    assert importlib.util.find_spec("ruff") is not None, "ruff is missing: pip install -e '.[test]' (make install)"
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "course_lib", "tests"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, f"ruff found problems (run `make lint`; `ruff check --fix` mends some):\n{out.stdout}{out.stderr}"
