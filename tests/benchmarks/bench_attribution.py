"""Attribution on scenes-cnn, in one run (issue 14):

- integrated gradients, 64 steps, a batch of 32 images: ours at its default chunk (the games
  engine's ``default_batch_size``) and at 128, vs captum at each ``internal_batch_size``, vs the
  plain forward + backward passes over the 64 x 32 path points;
- occlusion, 8 x 8 patches (64 windows + the whole image = 65 model inputs per image), 32 images:
  ours (one stream of (image, window) pairs for all images) vs the per-image games it replaced
  (one leave-one-out game per image) vs ``captum.attr.Occlusion`` at each ``perturbations_per_eval``
  vs plain forward passes over the same number of inputs in the same chunks; with the number of
  forward calls each makes (what bounds a GPU, where small launches dominate);
- the run time of lecture 01's ground-truth table for 100 images: the maps of every method,
  then deletion + insertion curves of each map (reported only).

Runs alternate; each variant's median and best of ``REPEATS`` are printed side by side (wall
seconds, and CPU seconds of the process: on a shared CPU the steadier figure). On a shared
machine run it with ``OMP_NUM_THREADS=1``. Run with ``make bench``; compare ratios, not
absolute times. ``COURSE_LIB_BENCH_QUICK=1`` shrinks everything to check that the file runs.
"""
from __future__ import annotations

import math
import os
import statistics

import torch
import benchutil as bu

QUICK = bool(os.environ.get("COURSE_LIB_BENCH_QUICK"))
BATCH, STEPS, PATCH = (4, 8, 16) if QUICK else (32, 64, 8)
REPEATS = 1 if QUICK else 7


def _setup(n=BATCH):
    from course_lib import load_dataset, load_model

    model = load_model("scenes-cnn")
    dev = next(model.parameters()).device
    data = load_dataset("scenes", split="test", n=n, seed=0)
    return model, data.images.to(dev), data.labels.to(dev), dev


def _runs(fns: dict, dev, repeats: int) -> dict:
    """All wall and CPU times of each function over ``repeats`` alternating runs, after one warm-up each."""
    for fn in fns.values():
        fn()
    times = {k: ([], []) for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            w, c = bu.timed(fn, dev)
            times[k][0].append(w)
            times[k][1].append(c)
    return times


def _report(title: str, times: dict, notes: dict | None = None) -> dict:
    """Print median and best (wall, CPU) of each variant; return the median wall times."""
    notes = notes or {}
    print(f"\n{title} -- {torch.get_num_threads()} torch thread(s), load average {os.getloadavg()[0]:.1f}, "
          f"{REPEATS} repeat(s){' [QUICK: smoke run only]' if QUICK else ''}")
    print(f"  {'variant':26s} {'median':>9s} {'best':>9s} {'CPU med':>9s} {'CPU best':>9s}")
    for k, (wall, cpu) in times.items():
        print(f"  {k:26s} {statistics.median(wall) * 1e3:7.0f}ms {min(wall) * 1e3:7.0f}ms "
              f"{statistics.median(cpu) * 1e3:7.0f}ms {min(cpu) * 1e3:7.0f}ms  {notes.get(k, '')}")
    return {k: statistics.median(w) for k, (w, _) in times.items()}


def test_integrated_gradients_ours_vs_captum_vs_plain_passes():
    from captum.attr import IntegratedGradients

    from course_lib.games import default_batch_size
    from course_lib.methods.attribution import integrated_gradients

    model, x, y, dev = _setup()
    chunk = max(BATCH, default_batch_size(x[0].numel() * x.element_size(), device=dev))  # what ours uses by default
    fns = {f"ours (default, chunk {chunk})": lambda: integrated_gradients(model, x, y, 0.0, n_steps=STEPS)}
    if chunk != 128:
        fns["ours, batch_size=128"] = lambda: integrated_gradients(model, x, y, 0.0, n_steps=STEPS, batch_size=128)
    for ibs in (32, 128, 512, 2048):
        fns[f"captum ibs={ibs}"] = lambda ibs=ibs: IntegratedGradients(model).attribute(
            x.clone().requires_grad_(True), baselines=torch.zeros_like(x), target=y, n_steps=STEPS, internal_batch_size=max(ibs, BATCH)
        )

    def plain():  # forward + backward to the input over the same path points, same chunks, nothing else
        alphas = torch.linspace(0, 1, STEPS, device=dev)
        pts = (alphas[:, None, None, None, None] * x).reshape(-1, *x.shape[1:])
        t = y.repeat(STEPS)
        for s in range(0, pts.shape[0], chunk):
            p = pts[s : s + chunk].detach().requires_grad_(True)
            torch.autograd.grad(model(p).gather(1, t[s : s + chunk, None]).sum(), p)

    fns[f"plain passes (chunk {chunk})"] = plain
    med = _report(f"IG, {STEPS} steps, {BATCH} images on {dev}", _runs(fns, dev, REPEATS))
    ours, floor = med[f"ours (default, chunk {chunk})"], med[f"plain passes (chunk {chunk})"]
    captum_best = min(v for k, v in med.items() if k.startswith("captum"))
    print(
        f"  medians: ours / best captum {ours / captum_best:.2f}x (target <= 1.0); ours / plain passes {ours / floor:.2f}x (target <= 1.15)"
    )
    if not QUICK:  # loose guards for a shared machine
        assert ours / captum_best <= 2.0 and ours / floor <= 3.0


def test_occlusion_ours_vs_captum_vs_plain_passes():
    from captum.attr import Occlusion

    from course_lib.games import default_batch_size, grid_segments, image_game, segment_map
    from course_lib.methods.attribution import leave_one_out, occlusion

    model, x, y, dev = _setup()
    B, n_win = x.shape[0], (64 // PATCH) ** 2
    chunk = default_batch_size(x[0].numel() * x.element_size(), device=dev)  # the games engine's, as occlusion uses
    seg = grid_segments(64, 64, PATCH, device=dev)

    def per_image_games():  # the implementation before: one leave-one-out game per image, chunked per image
        return torch.stack([segment_map(leave_one_out(image_game(model, x[b], seg, target=int(y[b]))).values, seg) for b in range(B)])

    fns = {"ours (one stream)": lambda: occlusion(model, x, y, patch=PATCH), "per-image games (before)": per_image_games}
    calls = {"ours (one stream)": f"{math.ceil(B * (n_win + 1) / chunk)} forwards of <= {chunk}",
             "per-image games (before)": f"{B * math.ceil((n_win + 1) / chunk)} forwards of <= {chunk}"}
    for ppe in (1, 4, 16, 64):
        k = f"captum ppe={ppe}"
        fns[k] = lambda ppe=ppe: Occlusion(model).attribute(
            x, sliding_window_shapes=(3, PATCH, PATCH), strides=(3, PATCH, PATCH), baselines=0.0, target=y, perturbations_per_eval=ppe
        )
        calls[k] = f"{1 + math.ceil(n_win / ppe)} forwards of <= {B * ppe}"
    imgs = x.repeat_interleave(n_win + 1, 0)  # the same number of model inputs as occlusion needs

    def plain():
        with torch.inference_mode():
            for s in range(0, imgs.shape[0], chunk):
                model(imgs[s : s + chunk])

    fns["plain forward passes"] = plain
    calls["plain forward passes"] = calls["ours (one stream)"]
    ref = fns["captum ppe=16"]()[:, 0]
    torch.testing.assert_close(fns["ours (one stream)"](), ref, atol=1e-4, rtol=1e-4)  # same numbers, or the timing means nothing
    med = _report(f"occlusion {PATCH}x{PATCH}, {B} images ({n_win + 1} model inputs each) on {dev}", _runs(fns, dev, REPEATS), calls)
    ours, floor = med["ours (one stream)"], med["plain forward passes"]
    captum_best = min(v for k, v in med.items() if k.startswith("captum"))
    print(f"  medians: ours / best captum {ours / captum_best:.2f}x (target <= 1.0); ours / plain passes {ours / floor:.2f}x "
          f"(target <= 1.15); ours / before {ours / med['per-image games (before)']:.2f}x")
    if not QUICK:  # loose guards for a shared machine
        assert ours / captum_best <= 2.0 and ours / floor <= 3.0


def test_ground_truth_table_time():
    """Lecture 01's table (same methods and settings), with the curves on every image, not 24."""
    from course_lib.methods import attribution as A
    from course_lib.metrics import deletion_curve, insertion_curve, pixel_precision_at_k, pointing_game

    n = 8 if QUICK else 100
    model, x, y, dev = _setup(n)
    from course_lib import load_dataset

    obj = load_dataset("scenes", split="test", n=n, seed=0).masks.to(dev)
    g = torch.Generator().manual_seed(0)
    rand = torch.rand(obj.shape, generator=g).to(dev)
    methods = {
        "gradient": lambda: A.saliency(model, x, y).sum(1),
        "grad x input": lambda: A.input_x_gradient(model, x, y).abs().sum(1),
        "SmoothGrad": lambda: A.smoothgrad(model, x, y, n_samples=8, seed=0, batch_size=128).sum(1),
        "IG (blur)": lambda: A.integrated_gradients(model, x, y, baseline="blur", steps=8).sum(1),
        "occlusion 16px": lambda: A.occlusion(model, x, y, patch=16),
        "Grad-CAM": lambda: A.grad_cam(model, x, y),
        "random map": lambda: rand,
        "object mask": lambda: obj.float() + 1e-3 * rand,
    }
    if QUICK:  # a smoke run: two cheap methods
        methods = {k: methods[k] for k in ("occlusion 16px", "Grad-CAM")}
    for f in methods.values():  # warm-up (imports, first-call setup): not part of the table's time
        f()
    deletion_curve(model, x[:2], obj[:2].float(), y[:2], steps=8), insertion_curve(model, x[:2], obj[:2].float(), y[:2], steps=8)
    maps, map_t = {}, {}
    for k, f in methods.items():
        map_t[k] = bu.timed(lambda: maps.__setitem__(k, f()), dev)[0]
    print(f"\nlecture 01's ground-truth table for {n} images on {dev} ({torch.get_num_threads()} torch thread(s), "
          f"load average {os.getloadavg()[0]:.1f}){' [QUICK]' if QUICK else ''}")
    print(f"  maps of {len(maps)} methods: {sum(map_t.values()):.2f} s (" + ", ".join(f"{k} {v:.2f}" for k, v in map_t.items()) + ")")
    for n_steps in (8,) if QUICK else (8, 16):  # the lecture's 8, the default 16
        def curves():
            for m in maps.values():
                pointing_game(m, obj), pixel_precision_at_k(m, obj, 256)
                deletion_curve(model, x, m, y, steps=n_steps), insertion_curve(model, x, m, y, steps=n_steps)

        t = bu.timed(curves, dev)[0]
        print(
            f"  pointing + precision + deletion + insertion ({n_steps} steps, {2 * len(maps) * n * (n_steps + 1)} model inputs) "
            f"of the {len(maps)} maps: {t:.2f} s"
        )
