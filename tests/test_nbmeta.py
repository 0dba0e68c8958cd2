"""Committed notebooks carry the kernel metadata the course's kernel reports (course_lib.nbmeta), so that
opening one does not rewrite its kernelspec and language_info."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from course_lib.nbmeta import course_notebooks, dumps, kernel_metadata, normalise

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = course_notebooks(ROOT)
FIX = "run `.venv/bin/python -m course_lib.nbmeta` and commit the metadata change"


def test_there_are_notebooks():
    folders = {p.relative_to(ROOT).parts[0] for p in NOTEBOOKS}
    assert folders == {"lectures", "solutions", "assignments"}


def test_metadata_is_what_a_live_kernel_reports():
    """kernel_metadata() equals the kernel_info_reply of a real ipykernel and its installed kernelspec."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import start_new_kernel

    meta = kernel_metadata()
    spec = KernelSpecManager().get_kernel_spec(meta["kernelspec"]["name"])
    assert (spec.display_name, spec.language) == (meta["kernelspec"]["display_name"], meta["kernelspec"]["language"])
    km, kc = start_new_kernel(kernel_name=meta["kernelspec"]["name"])
    try:
        reply = kc.kernel_info(reply=True, timeout=60)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert reply["content"]["language_info"] == meta["language_info"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_notebook_has_the_kernel_metadata(path):
    """Exactly the kernel's metadata; the Python version only to major.minor (it is the interpreter's own patch
    release, which a contributor's or a hub's Python may differ in)."""
    meta = kernel_metadata()
    have = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    assert have.get("kernelspec") == meta["kernelspec"], f"{path.name}: kernelspec {have.get('kernelspec')}; {FIX}"
    info, want = dict(have.get("language_info", {})), dict(meta["language_info"])
    version, want_version = info.pop("version", ""), want.pop("version")
    assert info == want, f"{path.name}: language_info {have.get('language_info')}; {FIX}"
    assert version.split(".")[:2] == want_version.split(".")[:2], f"{path.name}: Python {version}, kernel {want_version}; {FIX}"


def test_normalise_changes_only_the_notebook_metadata(tmp_path):
    src = ROOT / "lectures" / "00_why_interpretability.ipynb"
    nb = json.loads(src.read_text(encoding="utf-8"))
    nb["metadata"] = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                      "language_info": {"name": "python"}, "widgets": {"keep": "me"}}
    f = tmp_path / src.name
    f.write_text(dumps(nb), encoding="utf-8")
    assert normalise(f) is True
    after = json.loads(f.read_text(encoding="utf-8"))
    assert after["cells"] == nb["cells"] and after["nbformat"] == nb["nbformat"]
    assert after["metadata"] == {**kernel_metadata(), "widgets": {"keep": "me"}}
    text = f.read_text(encoding="utf-8")
    assert normalise(f) is False and f.read_text(encoding="utf-8") == text  # idempotent, byte for byte


def test_layout_is_the_committed_one():
    """dumps() writes the committed files' own layout, so normalising touches only the metadata lines."""
    for path in NOTEBOOKS[:3]:
        raw = path.read_text(encoding="utf-8")
        assert dumps(json.loads(raw)) == raw, f"{path.name} is not in nbformat's layout"
