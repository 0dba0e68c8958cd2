"""The notebooks' kernel metadata, set to what the course's kernel reports (``python -m course_lib.nbmeta``).

When JupyterLab connects a notebook to its kernel it writes the kernel's ``kernelspec``
(``name``, ``display_name``, ``language``) and ``language_info`` (the kernel's
``kernel_info_reply``) into the notebook's metadata. Committed notebooks that say
``"display_name": "Python 3"`` and a bare ``{"name": "python"}`` therefore change on open.
:func:`kernel_metadata` gives what ipykernel reports in this environment: its kernelspec
(``ipykernel.kernelspec.get_kernel_dict``) and ``IPythonKernel.language_info``, whose
``version`` is this interpreter's (e.g. ``3.11.7``); a hub running another Python patch release
reports its own version there. :func:`normalise` rewrites only the notebook-level
``kernelspec`` and ``language_info`` of each file, reading, changing and writing one file at a
time in the layout nbformat writes (indent 1, sorted keys, UTF-8), so cells and the rest of the
metadata are left byte for byte as they were.

``python -m course_lib.nbmeta`` normalises every notebook in lectures/, solutions/ and
assignments/ (or the paths given). ``assignments/`` is generated from ``solutions/`` by nbgrader,
which copies the notebook metadata, so normalising both keeps them equal.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

FOLDERS = ("lectures", "solutions", "assignments")
KERNEL_NAME = "python3"


def kernel_metadata() -> dict:
    """``{"kernelspec": ..., "language_info": ...}`` as this environment's ipykernel reports them."""
    from ipykernel.ipkernel import IPythonKernel
    from ipykernel.kernelspec import get_kernel_dict

    spec = get_kernel_dict()
    return {
        "kernelspec": {"display_name": spec["display_name"], "language": spec["language"], "name": KERNEL_NAME},
        "language_info": json.loads(json.dumps(IPythonKernel.language_info)),  # a plain copy
    }


def dumps(nb: dict) -> str:
    """A notebook as nbformat writes it (and as the course commits it)."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def normalise(path: str | Path, meta: dict | None = None) -> bool:
    """Set one notebook's kernelspec and language_info; True if the file changed."""
    path = Path(path)
    meta = meta or kernel_metadata()
    raw = path.read_text(encoding="utf-8")
    nb = json.loads(raw)
    nb.setdefault("metadata", {}).update(json.loads(json.dumps(meta)))
    out = dumps(nb)
    if out == raw:
        return False
    path.write_text(out, encoding="utf-8")
    return True


def course_notebooks(root: str | Path) -> list[Path]:
    """Every notebook of lectures/, solutions/ and assignments/ under ``root``, skipping checkpoints."""
    root = Path(root)
    return sorted(p for folder in FOLDERS for p in (root / folder).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    paths = [Path(a) for a in args] or course_notebooks(Path(__file__).resolve().parents[1])
    meta = kernel_metadata()
    changed = [p for p in paths if normalise(p, meta)]
    print(f"{len(changed)} of {len(paths)} notebook(s) changed to kernelspec {meta['kernelspec']['display_name']!r}, "
          f"Python {meta['language_info']['version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
