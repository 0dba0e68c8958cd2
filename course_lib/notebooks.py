"""Execute a notebook as the course's tests and website do (nbclient, needed only here)."""
from __future__ import annotations

import os
from pathlib import Path
from queue import Empty
from time import monotonic

# The inline backend needs no display and keeps the figures as outputs (the website shows them);
# progress bars would only clutter the saved outputs.
EXECUTION_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "COURSE_LIB_NO_PROGRESS": "1"}
# How long one wait on a kernel channel lasts before the socket is asked again (see _poll_in_slices).
POLL_SLICE_S = 1.0


def _poll_in_slices(channel, slice_s: float = POLL_SLICE_S) -> None:
    """Make ``channel.get_msg(timeout)`` wait in short slices, asking the socket afresh each time.

    After a cell that displays ipywidgets, the kernel's execute_reply sometimes sits in the shell socket
    without waking nbclient's single long wait (nbclient issue #312): the lecture then stalls for the whole
    cell timeout (10 minutes here) and goes on as if nothing happened. A new poll sees a message that is
    already queued, so waiting in slices costs at most one slice when that happens, and nothing otherwise.
    """
    get_msg = channel.get_msg

    async def sliced(timeout: float | None = None):
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            left = slice_s if deadline is None else min(slice_s, max(0.0, deadline - monotonic()))
            try:
                return await get_msg(timeout=left)
            except Empty:
                if deadline is not None and monotonic() >= deadline:
                    raise

    channel.get_msg = sliced


def _client_class():
    from nbclient import NotebookClient

    class Client(NotebookClient):
        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            for channel in (kc.shell_channel, kc.iopub_channel):
                _poll_in_slices(channel)
            return kc

    return Client


def execute_notebook(nb, folder: str | Path, *, timeout: int = 600):
    """Run every cell of ``nb`` (an nbformat notebook, changed in place) with ``folder`` as the working folder."""
    old = {k: os.environ.get(k) for k in EXECUTION_ENV}
    os.environ.update(EXECUTION_ENV)
    try:
        _client_class()(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb
