"""course_lib.threads: the CPU budget from cgroup files (fixture trees for v2 and v1), the thread plan,
and a real cgroup v1 CPU quota (root only) under which ``import course_lib`` caps torch's threads."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib import threads
from course_lib.threads import CpuBudget, cpu_budget, plan_threads

ROOT = Path(__file__).resolve().parents[1]
V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"


def fake_system(tmp_path: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> dict:
    """A /proc/self (cgroup, mountinfo) and a file tree under tmp_path/root; the keyword arguments of cpu_budget."""
    proc, root = tmp_path / "proc", tmp_path / "root"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo)
    for rel, text in files.items():
        f = root / rel.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text + "\n")
    return dict(proc=proc, root=root)


# ---------------------------------------------------------------- cgroup v2 fixtures

@pytest.mark.parametrize("cpu_max, cpus, quota", [
    ("max 100000", 8, None),  # no quota: the affinity mask decides
    ("150000 100000", 1, 1.5),  # 1.5 CPUs, rounded down
    ("50000 100000", 1, 0.5),  # half a CPU: at least 1
    ("400000 100000", 4, 4.0),
    ("1600000 100000", 8, 16.0),  # a quota above the affinity mask: the mask decides
])
def test_v2_cpu_max(tmp_path, cpu_max, cpus, quota):
    sysfs = fake_system(tmp_path, "0::/user.slice/student.scope\n", V2_MOUNT,
                        {"/sys/fs/cgroup/user.slice/student.scope/cpu.max": cpu_max})
    b = cpu_budget(**sysfs, affinity=8)
    assert (b.cpus, b.quota) == (cpus, quota)
    if quota is not None and quota < 8:
        assert "cgroup v2" in b.source and cpu_max in b.source
    else:
        assert "affinity" in b.source


def test_v2_parent_quota_limits_the_child(tmp_path):
    """A quota on a cgroup above the process's own applies too (a pod's limit, a container's slice inside)."""
    sysfs = fake_system(tmp_path, "0::/kubepods/pod1/c1\n", V2_MOUNT, {
        "/sys/fs/cgroup/kubepods/cpu.max": "max 100000",
        "/sys/fs/cgroup/kubepods/pod1/cpu.max": "250000 100000",
        "/sys/fs/cgroup/kubepods/pod1/c1/cpu.max": "max 100000",
    })
    b = cpu_budget(**sysfs, affinity=64)
    assert b.cpus == 2 and b.quota == 2.5 and "kubepods/pod1/cpu.max" in b.source


def test_v2_container_sees_its_own_cgroup_as_root(tmp_path):
    """In a cgroup namespace the process's path is "/" and its cgroup is mounted as the root."""
    sysfs = fake_system(tmp_path, "0::/\n", V2_MOUNT, {"/sys/fs/cgroup/cpu.max": "200000 100000"})
    assert cpu_budget(**sysfs, affinity=64).cpus == 2


def test_v2_path_outside_the_mount_falls_back_to_the_mount(tmp_path):
    """A host path that the container's mount does not show: the mount's own files are the process's."""
    sysfs = fake_system(tmp_path, "0::/system.slice/docker-abc.scope\n", V2_MOUNT,
                        {"/sys/fs/cgroup/cpu.max": "300000 100000"})
    assert cpu_budget(**sysfs, affinity=64).cpus == 3


def test_no_cgroup_files_means_the_affinity_mask(tmp_path):
    sysfs = fake_system(tmp_path, "", "", {})
    b = cpu_budget(**sysfs, affinity=3)
    assert (b.cpus, b.quota) == (3, None) and "affinity" in b.source


# ---------------------------------------------------------------- cgroup v1 fixtures

V1_MOUNTS = (
    "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
    "33 25 0:29 {root} /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct\n"
    "34 25 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
)


@pytest.mark.parametrize("quota_us, period_us, cpus", [(-1, 100000, 8), (100000, 100000, 1), (150000, 100000, 1),
                                                       (50000, 100000, 1), (300000, 100000, 3)])
def test_v1_cfs_quota(tmp_path, quota_us, period_us, cpus):
    d = "/sys/fs/cgroup/cpu,cpuacct/docker/abc"
    sysfs = fake_system(tmp_path, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n", V1_MOUNTS.format(root="/"),
                        {f"{d}/cpu.cfs_quota_us": str(quota_us), f"{d}/cpu.cfs_period_us": str(period_us),
                         "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1",
                         "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000"})
    b = cpu_budget(**sysfs, affinity=8)
    assert b.cpus == cpus
    assert ("cgroup v1" in b.source) == (quota_us > 0 and quota_us / period_us < 8)


def test_v1_mount_root_is_the_containers_cgroup(tmp_path):
    """Docker mounts only the container's cgroup (mount root /docker/abc) while /proc/self/cgroup names the full path."""
    sysfs = fake_system(tmp_path, "4:cpu,cpuacct:/docker/abc\n", V1_MOUNTS.format(root="/docker/abc"),
                        {"/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "200000",
                         "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000"})
    b = cpu_budget(**sysfs, affinity=16)
    assert b.cpus == 2 and b.quota == 2.0


def test_v1_and_v2_together_take_the_tighter(tmp_path):
    """A hybrid host (this one): cgroup2 mounted at unified/ without cpu.max, the cpu controller on v1."""
    mounts = V1_MOUNTS.format(root="/") + V2_MOUNT.replace("/sys/fs/cgroup ", "/sys/fs/cgroup/unified ")
    sysfs = fake_system(tmp_path, "4:cpu,cpuacct:/grading\n0::/\n", mounts,
                        {"/sys/fs/cgroup/cpu,cpuacct/grading/cpu.cfs_quota_us": "100000",
                         "/sys/fs/cgroup/cpu,cpuacct/grading/cpu.cfs_period_us": "100000"})
    assert cpu_budget(**sysfs, affinity=2).cpus == 1
    (tmp_path / "root/sys/fs/cgroup/unified").mkdir()
    (tmp_path / "root/sys/fs/cgroup/unified/cpu.max").write_text("50000 100000\n")
    b = cpu_budget(**sysfs, affinity=2)
    assert b.cpus == 1 and b.quota == 0.5 and "cgroup v2" in b.source


def test_this_machine():
    b = cpu_budget()
    assert b.cpus >= 1 and b.source
    if hasattr(os, "sched_getaffinity"):
        assert b.cpus <= len(os.sched_getaffinity(0))


# ---------------------------------------------------------------- the plan

B1, B64 = CpuBudget(cpus=1, source="test quota"), CpuBudget(cpus=64, source="test")


def test_plan_caps_to_the_budget_and_never_raises():
    assert plan_threads(8, B1, env={})[0] == 1
    assert plan_threads(2, B64, env={}) == (2, "torch's own 2 fit the CPU budget of 64")


@pytest.mark.parametrize("var", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_plan_leaves_the_users_env_alone(var):
    n, why = plan_threads(2, B1, env={var: "2"})
    assert n == 2 and var in why


def test_plan_keeps_the_users_set_num_threads():
    assert plan_threads(3, B1, env={}, user_set=True)[0] == 3


def test_plan_course_lib_threads_overrides():
    assert plan_threads(2, B1, env={"COURSE_LIB_THREADS": "4", "OMP_NUM_THREADS": "2"})[0] == 4
    assert plan_threads(8, B1, env={"COURSE_LIB_THREADS": "off"})[0] == 8
    assert plan_threads(8, B1, env={"COURSE_LIB_THREADS": "0"})[0] == 8
    with pytest.raises(ValueError, match="COURSE_LIB_THREADS"):
        plan_threads(8, B1, env={"COURSE_LIB_THREADS": "two"})


def test_cap_never_raises_torch_in_this_process(monkeypatch):
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "COURSE_LIB_THREADS"):
        monkeypatch.delenv(var, raising=False)
    before = torch.get_num_threads()
    try:
        assert threads.cap_torch_threads(B64, torch_was_imported=False)[1] == before
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- a real cgroup v1 CPU quota

def v1_cpu_mount() -> Path | None:
    for fstype, _root, point, opts in threads._mounts(Path("/proc/self")):
        if fstype == "cgroup" and "cpu" in opts:
            return Path(point)
    return None


@pytest.fixture(scope="module")
def cpu_cgroup():
    """A child cgroup of the v1 cpu controller, removed afterwards; yields its folder."""
    if os.geteuid() != 0:
        pytest.skip("creating a cgroup needs root")
    mount = v1_cpu_mount()
    if mount is None or not (mount / "cgroup.procs").exists():
        pytest.skip("no cgroup v1 cpu controller is mounted here")
    d = mount / f"course_lib_test_{os.getpid()}"
    try:
        d.mkdir()
    except OSError as err:
        pytest.skip(f"cannot create a cgroup under {mount}: {err}")
    try:
        yield d
    finally:
        d.rmdir()


def run_in(cgroup: Path, code: str, quota_us: int, **env) -> str:
    """Run ``python -c code`` inside ``cgroup`` with the given CPU quota (period 100 ms); its stdout."""
    (cgroup / "cpu.cfs_period_us").write_text("100000")
    (cgroup / "cpu.cfs_quota_us").write_text(str(quota_us))
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "COURSE_LIB_THREADS")}
    clean.update(env)
    out = subprocess.run(["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$0" -c "$1"', sys.executable, code],
                         env=clean, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


SHOW = "import course_lib, torch; print(torch.get_num_threads())"


@pytest.fixture(scope="module")
def torch_own(cpu_cgroup) -> str:
    """torch's own thread count inside the cgroup (under a 1-CPU quota; torch does not look at it)."""
    return run_in(cpu_cgroup, "import torch; print(torch.get_num_threads())", 100000)


def test_real_quota_of_one_cpu_caps_torch(cpu_cgroup, torch_own):
    if len(os.sched_getaffinity(0)) >= 2:  # torch alone sizes its pool from the machine, not the quota
        assert int(torch_own) >= 2
    assert run_in(cpu_cgroup, SHOW, 100000) == "1"


def test_real_quota_omp_num_threads_wins(cpu_cgroup):
    assert run_in(cpu_cgroup, SHOW, 100000, OMP_NUM_THREADS="2") == "2"


def test_real_quota_users_set_num_threads_wins(cpu_cgroup):
    code = "import torch; torch.set_num_threads(3); import course_lib; print(torch.get_num_threads())"
    assert run_in(cpu_cgroup, code, 100000) == "3"


def test_real_quota_above_the_cores_never_raises(cpu_cgroup, torch_own):
    assert run_in(cpu_cgroup, SHOW, 1600000) == torch_own  # 16 CPUs of quota on this machine's cores


def test_doctor_prints_the_budget(cpu_cgroup):
    code = "import sys; from course_lib.cli import main; sys.exit(main(['doctor']))"
    (cpu_cgroup / "cpu.cfs_period_us").write_text("100000")
    (cpu_cgroup / "cpu.cfs_quota_us").write_text("100000")
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "COURSE_LIB_THREADS")}
    out = subprocess.run(["sh", "-c", f'echo $$ > "{cpu_cgroup}/cgroup.procs" && exec "$0" -c "$1"', sys.executable, code],
                         env=clean, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert "cpus       1 (cgroup v1 quota 100000/100000 us" in out.stdout, out.stdout + out.stderr
    assert "torch uses 1 intra-op threads: capped from" in out.stdout
