"""Execute a notebook as the course's tests and website do (nbclient, needed only here)."""
from __future__ import annotations

import os
from pathlib import Path

# The inline backend needs no display and keeps the figures as outputs (the website shows them);
# progress bars would only clutter the saved outputs.
EXECUTION_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "COURSE_LIB_NO_PROGRESS": "1"}


def execute_notebook(nb, folder: str | Path, *, timeout: int = 600):
    """Run every cell of ``nb`` (an nbformat notebook, changed in place) with ``folder`` as the working folder."""
    from nbclient import NotebookClient

    old = {k: os.environ.get(k) for k in EXECUTION_ENV}
    os.environ.update(EXECUTION_ENV)
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb
