"""One bubblewrap sandbox per submission, for the student's process.

Inside: a private writable copy of the submission's work folder (the release's files and the
notebook), the Python environment, the course library and the model cache read-only, nothing else
of the course folder (no ``solutions/``, no gradebook, no other student), no network, no
capabilities, its own PID namespace (every process it starts ends with it), and, where the cgroup
v1 controllers are writable, a memory and a process limit. Modules a task forbids are replaced,
in this sandbox only, by a stub whose every name fails when it is used.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

GRADER = Path(__file__).resolve().parent

BWRAP_MISSING = ("bubblewrap is not installed: grading runs every submission in a bubblewrap sandbox. "
                 "Install it with `sudo apt-get install bubblewrap` (Debian/Ubuntu) or `make sandbox`, "
                 "or grade without a sandbox with `course-lib grade --unsafe` (not for untrusted work).")

STUB = '''"""Not available while this submission is graded: the exercise asks you to write the method yourself."""
_NAME = __name__


class _Forbidden:
    def __init__(self, name):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise AssertionError(f"{self._name} was called, but this exercise asks you to write the method yourself: "
                             "course_lib's (or the library's) implementation is not available while your work is graded.")

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Forbidden(self._name + "." + attr)

    def __mro_entries__(self, bases):
        self()


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Forbidden(_NAME + "." + name)
'''


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


@dataclass
class Limits:
    memory_bytes: int = 4 << 30
    max_processes: int = 256
    threads: int = 1
    max_file_bytes: int = 256 << 20


@dataclass
class Sandbox:
    """A running student process; ``fd_to`` / ``fd_from`` are the checker's ends of its pipes."""

    proc: subprocess.Popen
    fd_to: int
    fd_from: int
    workdir: Path
    cgroups: list = field(default_factory=list)
    unsafe: bool = False

    def agent_pid(self) -> int | None:
        """The host pid of the agent (the sandbox's python), to interrupt it."""
        if self.unsafe:
            return self.proc.pid
        stack = [self.proc.pid]
        while stack:
            pid = stack.pop()
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"grader/agent.py" in cmd and b"bwrap" not in cmd.split(b"\0")[0]:
                return pid
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    stack += [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    pass
        return None

    def interrupt(self) -> None:
        pid = self.agent_pid()
        if pid:
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def oom_killed(self) -> bool:
        for cg in self.cgroups:
            f = cg / "memory.oom_control"
            if f.is_file() and "oom_kill 0" not in f.read_text() and "oom_kill " in f.read_text():
                return True
            f = cg / "memory.failcnt"
            if f.is_file() and f.read_text().strip() not in ("", "0"):
                return True
        return False

    def close(self) -> None:
        for fd in (self.fd_to, self.fd_from):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for cg in self.cgroups:  # every process in it is gone once the PID namespace's init died
            for _ in range(50):
                try:
                    procs = (cg / "cgroup.procs").read_text().split()
                    for p in procs:
                        try:
                            os.kill(int(p), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    cg.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def _cgroup(controller: str, name: str, settings: dict) -> Path | None:
    base = Path("/sys/fs/cgroup") / controller
    if not (base / "cgroup.procs").exists() or not os.access(base, os.W_OK):
        return None
    cg = base / "course_lib_grading" / name
    try:
        cg.mkdir(parents=True, exist_ok=True)
        for k, v in settings.items():
            (cg / k).write_text(str(v))
    except OSError:
        return None
    return cg


def _python_roots() -> list[str]:
    """Folders the interpreter and the environment live in (read-only binds)."""
    roots = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    real = os.path.realpath(sys.executable)
    roots.add(str(Path(real).parent.parent))
    return sorted(r for r in roots if r and os.path.isdir(r))


def _module_path(name: str) -> Path | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    return Path(spec.origin)


def start(workdir: Path, *, limits: Limits, forbidden: list[str] = (), unsafe: bool = False,
          cache_dir: Path | None = None) -> Sandbox:
    """Start the agent in a sandbox whose cwd is ``workdir`` (private, writable)."""
    workdir = Path(workdir).resolve()
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    env = {
        "PATH": os.path.dirname(os.path.abspath(sys.executable)) + ":/usr/bin:/bin",
        "HOME": str(workdir / ".home") if unsafe else "/home/student",
        "NBGRADER_EXECUTION": "autograde",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "OMP_NUM_THREADS": str(limits.threads), "MKL_NUM_THREADS": str(limits.threads),
        "COURSE_LIB_THREADS": str(limits.threads),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
    }
    if cache_dir is not None:
        env["COURSE_LIB_HOME"] = str(cache_dir)
    agent = [os.path.abspath(sys.executable), str(GRADER / "agent.py"), str(to_r), str(from_w)]
    name = uuid.uuid4().hex[:12]
    cgroups = []
    if unsafe:
        (workdir / ".home").mkdir(exist_ok=True)
        cmd = agent
    else:
        bw = bwrap_path()
        if bw is None:
            raise RuntimeError(BWRAP_MISSING)
        cmd = [bw, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
               "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/home",
               "--dir", "/home/student"]
        for d in ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc"):
            if os.path.exists(d):
                cmd += ["--ro-bind", d, d]
        for d in _python_roots():
            cmd += ["--ro-bind", d, d]
        lib = GRADER.parent
        cmd += ["--ro-bind", str(lib), str(lib)]
        if cache_dir is not None and Path(cache_dir).is_dir():
            cmd += ["--ro-bind", str(cache_dir), str(cache_dir)]
        stub = workdir.parent / f".stub-{name}.py"
        stub.write_text(STUB)
        for mod in forbidden:
            path = _module_path(mod)
            if path is None:
                continue
            if path.name == "__init__.py":  # a package: hide the whole folder, keep a stub as its __init__
                cmd += ["--tmpfs", str(path.parent), "--ro-bind", str(stub), str(path)]
            else:
                cmd += ["--ro-bind", str(stub), str(path)]
        cmd += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir)]
        cmd += ["--clearenv"] + [x for k, v in env.items() for x in ("--setenv", k, v)] + agent
        mem = _cgroup("memory", name, {"memory.limit_in_bytes": limits.memory_bytes})
        pids = _cgroup("pids", name, {"pids.max": limits.max_processes})
        cgroups = [c for c in (mem, pids) if c is not None]
        if cgroups:
            joins = "; ".join(f"echo $$ > {c}/cgroup.procs" for c in cgroups)
            cmd = ["/bin/sh", "-c", joins + '; exec "$@"', "sh"] + cmd
    log = open(workdir.parent / f"agent-{name}.log", "wb")  # the agent's own stderr, for a post-mortem

    def limit_files():  # no file the submission writes (its log included) may outgrow this
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))

    proc = subprocess.Popen(cmd, cwd=str(workdir), env=env, pass_fds=(to_r, from_w), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, preexec_fn=limit_files)
    log.close()
    os.close(to_r)
    os.close(from_w)
    return Sandbox(proc, to_w, from_r, workdir, [Path(c) for c in cgroups], unsafe)
