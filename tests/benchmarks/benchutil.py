"""Timing helpers shared by the benchmarks (device-aware: a CUDA device is synchronised around each run)."""
from __future__ import annotations

import time

import torch


def sync(dev) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev) -> tuple[float, float]:
    """Run ``fn`` once: (wall seconds, CPU seconds of this process). On a shared CPU the CPU time is the steadier figure."""
    sync(dev)
    t, c = time.perf_counter(), time.process_time()
    fn()
    sync(dev)
    return time.perf_counter() - t, time.process_time() - c


def best(fns: dict, dev, repeats: int) -> tuple[dict, dict]:
    """Best wall time and best CPU time of each function over ``repeats`` alternating runs, after one warm-up each."""
    for fn in fns.values():
        fn()
    wall = {k: float("inf") for k in fns}
    cpu = dict(wall)
    for _ in range(repeats):
        for k, fn in fns.items():
            w, c = timed(fn, dev)
            wall[k], cpu[k] = min(wall[k], w), min(cpu[k], c)
    return wall, cpu
