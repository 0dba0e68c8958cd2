"""How many CPUs this process may use, and torch's intra-op threads capped to that.

On a hub each student's server runs with a CPU quota on a node with many cores. torch sizes
its thread pool from the node's cores, not the quota, so a 2-CPU server on a 64-core node runs
dozens of threads against 2 CPUs: they are throttled and most of the CPU time is wasted.
:func:`cpu_budget` reads what the process may really use:

- cgroup v2: ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``) of the process's own
  cgroup (``0::<path>`` in ``/proc/self/cgroup``) and of every cgroup above it;
- cgroup v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: none) of the process's
  cgroup in the ``cpu`` controller's hierarchy, found through ``/proc/self/cgroup`` and
  ``/proc/self/mountinfo``, and of every cgroup above it up to the mount;
- the affinity mask (``os.sched_getaffinity``; a cpuset limit shows up here).

The budget is the smallest of these, rounded down, and at least 1 (a quota of 1.5 CPUs gives
1, one of 0.5 CPUs gives 1). The file roots are arguments, so tests can hand in fixture trees.

:func:`cap_torch_threads` (called once by ``import course_lib``) lowers torch's intra-op thread
count to the budget. It never raises it, and it leaves torch alone when the user chose:

- ``COURSE_LIB_THREADS=N`` sets torch's threads to exactly N (``0`` or ``off``: leave torch alone);
- ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` set: torch already follows them, nothing is changed;
- ``torch.set_num_threads(k)`` called before ``import course_lib``: torch offers no flag for
  this, so it is detected by value. If torch was not imported before course_lib, nobody can have
  called it. If it was, the current count is compared with what torch picks by default (its
  cpuinfo library's count: physical cores, or logical processors where it sees no fewer cores;
  we accept either count, from ``/sys/devices/system/cpu`` and ``os.cpu_count()``, and the
  affinity mask's count, which an OpenMP runtime may follow). A count that equals none was set by the user and is kept. A user who set exactly the default is
  indistinguishable from one who set nothing, and gets the cap.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs this process may use: ``cpus`` (whole, >= 1) and ``source``, the limit that set it."""

    cpus: int
    source: str
    quota: float | None = None  # the tightest cgroup quota, in CPUs (None: no quota)
    affinity: int | None = None  # CPUs in the affinity mask


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_lines(proc: Path) -> list[tuple[str, list[str], str]]:
    """``/proc/self/cgroup`` as (hierarchy id, controllers, path) per line."""
    text = _read(proc / "cgroup") or ""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[0], [c for c in parts[1].split(",") if c], parts[2]))
    return out


def _mounts(proc: Path) -> list[tuple[str, str, str, list[str]]]:
    """``/proc/self/mountinfo`` as (fstype, mount root, mount point, super options) per cgroup mount."""
    text = _read(proc / "mountinfo") or ""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or not tail[0].startswith("cgroup"):
            continue
        unescape = lambda s: s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
        out.append((tail[0], unescape(fields[3]), unescape(fields[4]), tail[2].split(",")))
    return out


def _cgroup_dirs(root: Path, mount_root: str, mount_point: str, path: str) -> list[Path]:
    """The process's cgroup folder under a mount and every folder above it up to the mount, innermost first.

    ``path`` is the process's cgroup as /proc/self/cgroup names it; the mount shows the hierarchy from
    ``mount_root`` down (a container often sees only its own cgroup, mounted as the root).
    """
    top = root / mount_point.lstrip("/")
    rel = path
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root.rstrip("/") + "/")):
        rel = path[len(mount_root):]
    here = top / rel.strip("/") if rel.strip("/") else top
    if not here.is_dir():  # a path from outside this cgroup namespace: the mount itself is ours
        here = top
    dirs = [here]
    while here != top and top in here.parents:
        here = here.parent
        dirs.append(here)
    return dirs


def _v2_quota(root: Path, proc: Path) -> tuple[float, str] | None:
    """Tightest ``cpu.max`` along the process's cgroup v2 path, in CPUs, with the file it came from."""
    paths = [p for h, ctrl, p in _cgroup_lines(proc) if h == "0" and not ctrl]
    mounts = [m for m in _mounts(proc) if m[0] == "cgroup2"]
    if not paths or not mounts:
        return None
    best = None
    for d in _cgroup_dirs(root, mounts[0][1], mounts[0][2], paths[0]):
        text = _read(d / "cpu.max")
        if not text:
            continue
        parts = text.split()
        if len(parts) != 2 or parts[0] == "max":
            continue
        try:
            cpus = int(parts[0]) / int(parts[1])
        except (ValueError, ZeroDivisionError):
            continue
        if cpus > 0 and (best is None or cpus < best[0]):
            best = (cpus, f"cgroup v2 quota {text} in {d / 'cpu.max'}")
    return best


def _v1_quota(root: Path, proc: Path) -> tuple[float, str] | None:
    """Tightest ``cpu.cfs_quota_us / cpu.cfs_period_us`` along the process's path in the v1 ``cpu`` hierarchy."""
    paths = [p for h, ctrl, p in _cgroup_lines(proc) if "cpu" in ctrl]
    mounts = [m for m in _mounts(proc) if m[0] == "cgroup" and "cpu" in m[3]]
    if not paths or not mounts:
        return None
    best = None
    for d in _cgroup_dirs(root, mounts[0][1], mounts[0][2], paths[0]):
        quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
        try:
            q, p = int(quota), int(period)
        except (TypeError, ValueError):
            continue
        if q > 0 and p > 0 and (best is None or q / p < best[0]):
            best = (q / p, f"cgroup v1 quota {q}/{p} us in {d / 'cpu.cfs_quota_us'}")
    return best


def _affinity() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return None


def cpu_budget(*, proc: str | os.PathLike = "/proc/self", root: str | os.PathLike = "/",
               affinity: int | None = None) -> CpuBudget:
    """The whole CPUs this process may use: the smallest of the cgroup v2 and v1 quotas and the affinity mask.

    ``proc`` is the folder with ``cgroup`` and ``mountinfo`` (default ``/proc/self``); ``root`` is
    prepended to the mount points found there (default ``/``); ``affinity`` replaces the number of
    CPUs in ``os.sched_getaffinity(0)``. Unreadable or absent files count as no limit.
    """
    proc, root = Path(proc), Path(root)
    if affinity is None:
        affinity = _affinity()
    quotas = [q for q in (_v2_quota(root, proc), _v1_quota(root, proc)) if q is not None]
    quota = min(quotas) if quotas else None
    candidates = [quota] if quota is not None else []  # the first of equal limits is named
    if affinity is not None:
        candidates.append((float(affinity), f"affinity mask: {affinity} CPUs"))
    else:  # no affinity mask (not Linux): the machine's processors
        host = os.cpu_count() or 1
        candidates.append((float(host), f"os.cpu_count(): {host}"))
    cpus, source = min(candidates, key=lambda c: c[0])
    return CpuBudget(cpus=max(1, math.floor(cpus)), source=source,
                     quota=quota[0] if quota else None, affinity=affinity)


def _physical_cores() -> int | None:
    """Physical cores as the kernel's topology lists them (distinct package/core pairs), None if unknown."""
    base = Path("/sys/devices/system/cpu")
    cores = set()
    for topo in base.glob("cpu[0-9]*/topology"):
        pkg, core = _read(topo / "physical_package_id"), _read(topo / "core_id")
        if pkg is None or core is None:
            return None
        cores.add((pkg, core))
    return len(cores) or None


def torch_default_threads() -> set[int]:
    """The counts torch may pick by default here: physical cores, logical processors, or the affinity mask's CPUs."""
    return {n for n in (_physical_cores(), os.cpu_count(), _affinity()) if n}


# What the last cap_torch_threads did, for `course-lib doctor`: (threads before, after, why).
last_cap: tuple[int, int, str] | None = None


def plan_threads(current: int, budget: CpuBudget, *, env: dict | None = None, user_set: bool = False) -> tuple[int, str]:
    """The thread count to use and why, given torch's ``current`` count (pure; see the module docstring)."""
    env = os.environ if env is None else env
    own = env.get("COURSE_LIB_THREADS", "").strip()
    if own:
        if own.lower() in ("0", "off", "no", "false"):
            return current, f"COURSE_LIB_THREADS={own}: left as torch chose"
        try:
            n = int(own)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"COURSE_LIB_THREADS={own!r} is not a positive whole number; set it to e.g. 2, or 0 to leave torch alone")
        return n, f"COURSE_LIB_THREADS={n}"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if env.get(var, "").strip():
            return current, f"{var}={env[var].strip()} is set: left to it"
    if user_set:
        return current, f"torch.set_num_threads({current}) was called before import course_lib: kept"
    if current <= budget.cpus:
        return current, f"torch's own {current} fit the CPU budget of {budget.cpus}"
    return budget.cpus, f"capped from {current} to the CPU budget of {budget.cpus}"


def cap_torch_threads(budget: CpuBudget | None = None, *, torch_was_imported: bool = True) -> tuple[int, int, str]:
    """Lower torch's intra-op threads to the CPU budget; returns (before, after, why).

    ``torch_was_imported``: whether torch was in ``sys.modules`` before course_lib was imported
    (if not, its count is its default). Never raises the count except by ``COURSE_LIB_THREADS``.
    """
    global last_cap
    import torch

    before = torch.get_num_threads()
    user_set = torch_was_imported and before not in torch_default_threads()
    after, why = plan_threads(before, budget or cpu_budget(), user_set=user_set)
    if after != before:
        torch.set_num_threads(after)
    last_cap = (before, after, why)
    return last_cap

