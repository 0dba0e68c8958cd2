"""Threads under a CPU quota (issue 28): lecture 05's default render inside a 1-CPU cgroup v1 quota.

A hub gives each student's server a CPU quota on a node with more cores. torch sizes its pool
from the cores, so under the quota its threads take turns being throttled and burn CPU time
waiting for each other. ``import course_lib`` caps the pool to the quota (course_lib.threads).

The work is lecture 05's default call, ``fv.render(model, [fv.channel("features.1", c) for c in
CHANNELS], steps=96, seed=0)`` on scenes-cnn (8 objectives, 64 x 64 Fourier images, the default
transformations), here with fewer steps. Each variant runs in its own process, started inside a
child cgroup of the v1 ``cpu`` controller with ``cpu.cfs_quota_us = cpu.cfs_period_us = 100000``
(one CPU), imports torch and then course_lib as the lecture does, renders once to warm up and then
``REPEATS`` times; it reports the best CPU time (the process's, all threads) and wall time per step.
The variants, alternated over ``ROUNDS`` rounds:

- ``capped``: nothing set, so course_lib caps torch's threads to the budget (1 here);
- ``torch default``: ``COURSE_LIB_THREADS=off``, torch keeps its own count (the machine's cores);
- ``one thread``: ``OMP_NUM_THREADS=1``.

Target: capped <= 1.1x the one-thread CPU time per step. Needs root and a mounted cgroup v1 cpu
controller (skipped otherwise). Run with ``make bench`` or
``.venv/bin/python -m pytest tests/benchmarks/bench_threads.py -s -o python_files='bench_*.py'``.

Measured on the shared 2-core machine (torch 2.14.1, CPU; other work running, load average 7-10),
24 steps, best of 3 in each of 2 rounds, the better round, per step:

    capped          1 thread:    38.6 ms CPU (1.03x one thread),  103.5 ms wall
    torch default   2 threads:  289.9 ms CPU (7.75x one thread),  710.6 ms wall
    one thread      1 thread:    37.4 ms CPU,                      113.7 ms wall

The other round: 45.7 / 361.4 / 48.4 ms CPU (capped 0.94x one thread). The target (<= 1.1x) is
met; torch's default pool of 2 threads on the 1-CPU quota costs ~7-8x the CPU time and ~6x the wall.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib import threads

ROOT = Path(__file__).resolve().parents[2]
STEPS, REPEATS, ROUNDS = 24, 3, 2

RENDER = f"""
import json, time, torch
from course_lib import load_model, threads
from course_lib.methods import featurevis as fv
model = load_model("scenes-cnn", device="cpu")
CHANNELS = [0, 17, 42, 84, 101, 144, 160, 190]
objs = [fv.channel("features.1", c) for c in CHANNELS]
fv.render(model, objs, steps=4, seed=0, progress=False)  # warm-up
cpu, wall = [], []
for _ in range({REPEATS}):
    c, w = time.process_time(), time.perf_counter()
    fv.render(model, objs, steps={STEPS}, seed=0, progress=False)
    cpu.append((time.process_time() - c) / {STEPS}); wall.append((time.perf_counter() - w) / {STEPS})
print(json.dumps(dict(threads=torch.get_num_threads(), cpu=min(cpu), wall=min(wall), why=threads.last_cap[2])))
"""

VARIANTS = {"capped": {}, "torch default": {"COURSE_LIB_THREADS": "off"}, "one thread": {"OMP_NUM_THREADS": "1"}}


@pytest.fixture(scope="module")
def one_cpu_cgroup():
    if os.geteuid() != 0:
        pytest.skip("creating a cgroup needs root")
    mount = next((Path(p) for fs, _r, p, opts in threads._mounts(Path("/proc/self")) if fs == "cgroup" and "cpu" in opts), None)
    if mount is None:
        pytest.skip("no cgroup v1 cpu controller is mounted here")
    d = mount / f"course_lib_bench_{os.getpid()}"
    d.mkdir()
    try:
        (d / "cpu.cfs_period_us").write_text("100000")
        (d / "cpu.cfs_quota_us").write_text("100000")
        yield d
    finally:
        d.rmdir()


def run(cgroup: Path, env: dict) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "COURSE_LIB_THREADS")}
    clean.update(env)
    out = subprocess.run(["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$0" -c "$1"', sys.executable,
                          "import torch\n" + RENDER], env=clean, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_render_under_a_one_cpu_quota(one_cpu_cgroup):
    best: dict[str, dict] = {}
    for r in range(ROUNDS):
        for name, env in VARIANTS.items():
            res = run(one_cpu_cgroup, env)
            print(f"round {r}: {name:14s} {res['threads']} thread(s): {1e3 * res['cpu']:.1f} ms CPU, "
                  f"{1e3 * res['wall']:.1f} ms wall per step ({res['why']})")
            if name not in best or res["cpu"] < best[name]["cpu"]:
                best[name] = res
    one = best["one thread"]["cpu"]
    print(f"\nlecture 05's render, 8 objectives, under a 1-CPU cgroup v1 quota, load average {os.getloadavg()[0]:.1f}; "
          f"best per step over {ROUNDS} rounds of best-of-{REPEATS}:")
    for name, res in best.items():
        print(f"  {name:14s} {res['threads']} thread(s): {1e3 * res['cpu']:6.1f} ms CPU ({res['cpu'] / one:.2f}x one thread), "
              f"{1e3 * res['wall']:6.1f} ms wall")
    assert best["capped"]["threads"] == 1
    assert best["capped"]["cpu"] <= 1.1 * one, "the capped render should cost at most 1.1x the one-thread CPU time"
