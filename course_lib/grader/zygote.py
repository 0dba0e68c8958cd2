"""A warm template of the checker: it imports what every checker needs once, then forks one checker per submission.

A checker started as a fresh ``python checker.py`` spends seconds importing torch and course_lib (4 s here with
torch 2.14) before it runs the first test cell, and a class pays that once per submission. This process imports
them once and forks a child per job: the child is a fresh copy of a process that has run nothing but imports (it
never runs a job itself), so a submission's checker starts as clean as before, only sooner. It is started as a
script beside ``checker.py``, so the child sees the same modules the script did.

Protocol, one JSON object per line: the caller writes ``{"id", "job", "env", "log"}``; this process answers
``{"id", "pid"}`` when the child is started and ``{"id", "status"}`` (its exit code, or minus the signal that ended
it) when it ends. When the caller goes away (end of file on stdin) every child still running is killed.
"""
from __future__ import annotations

import importlib
import json
import os
import select
import signal
import sys
import traceback

import checker  # noqa: F401  (nbformat and the grader's own modules)

# What the instructor's cells of every course assignment import, loaded by name as those cells do: this process
# uses nothing from them (so no layer of course_lib is imported for its code), it only has them in memory to fork.
PRELOAD = ("torch", "course_lib")
for _name in PRELOAD:
    try:
        importlib.import_module(_name)
    except Exception:  # noqa: BLE001  (a checker that needs it reports the failure itself)
        pass


def _send(msg: dict) -> None:
    os.write(1, (json.dumps(msg) + "\n").encode())


def _child(req: dict) -> None:
    """In the forked child: become a checker for ``req["job"]``; never returns."""
    code = 1
    try:
        os.setsid()  # its own process group: the caller ends the checker and everything under it at once
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: ends with us
        except Exception:  # noqa: BLE001
            pass
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(null, 0)
        os.dup2(log, 1)  # never this process's stdout: that pipe is the protocol
        os.dup2(log, 2)
        os.environ.clear()
        os.environ.update(req["env"])
        threads = req["env"].get("COURSE_LIB_THREADS", "")
        if threads.isdigit() and int(threads) > 0 and "torch" in sys.modules:  # torch read its thread count at import
            sys.modules["torch"].set_num_threads(int(threads))
        import tempfile

        tempfile.tempdir = None  # read TMPDIR again from the caller's environment, as a fresh process would
        checker.main([req["job"]])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    children: dict[int, int] = {}  # pid -> request id
    buf = b""
    while True:
        ready, _, _ = select.select([0], [], [], 0.05)
        if ready:
            data = os.read(0, 1 << 16)
            if not data:
                break
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(req)
                children[pid] = req["id"]
                _send({"id": req["id"], "pid": pid})
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid in children:
                _send({"id": children.pop(pid), "status": os.waitstatus_to_exitcode(status)})
    for pid in children:  # the caller is gone: so are its checkers
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


if __name__ == "__main__":
    main()
