"""Attribution on scenes-cnn, in one run (issue 14):

- integrated gradients, 64 steps, a batch of 32 images: ours vs captum at its best
  ``internal_batch_size``, and ours vs the plain forward + backward passes over the 64 x 32 path points;
- occlusion, 8 x 8 patches (65 model calls per image), 32 images: ours (leave-one-out of the patch
  game) vs ``captum.attr.Occlusion`` at its best ``perturbations_per_eval``, and vs plain forward passes;
- the run time of deletion + insertion curves (16 steps) for 100 images (reported only).

Runs alternate and the best of several repeats counts, so a shared CPU hurts both sides alike.
Run with ``make bench``; compare ratios, not absolute times. ``COURSE_LIB_BENCH_QUICK=1`` shrinks
everything to check that the file runs.
"""
from __future__ import annotations

import os

import torch
import benchutil as bu

QUICK = bool(os.environ.get("COURSE_LIB_BENCH_QUICK"))
BATCH, STEPS, PATCH = (4, 8, 16) if QUICK else (32, 64, 8)
REPEATS = 1 if QUICK else 5


def _setup(n=BATCH):
    from course_lib import load_dataset, load_model

    model = load_model("scenes-cnn")
    dev = next(model.parameters()).device
    data = load_dataset("scenes", split="test", n=n, seed=0)
    return model, data.images.to(dev), data.labels.to(dev), dev


def test_integrated_gradients_ours_vs_captum_vs_plain_passes():
    from captum.attr import IntegratedGradients

    from course_lib.methods.attribution import integrated_gradients

    model, x, y, dev = _setup()
    from course_lib.games import default_batch_size

    chunk = max(BATCH, default_batch_size(x[0].numel() * x.element_size(), device=dev))  # what ours uses by default
    fns = {"ours": lambda: integrated_gradients(model, x, y, 0.0, n_steps=STEPS)}
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

    fns["plain"] = plain
    best = bu.best(fns, dev, REPEATS)[0]
    captum_best = min(v for k, v in best.items() if k.startswith("captum"))
    print(f"\nIG, {STEPS} steps, batch {BATCH} on {dev} ({torch.get_num_threads()} threads), best of {REPEATS}:")
    for k, v in best.items():
        print(f"  {k:18s} {v * 1000:9.1f} ms")
    print(f"  ours / best captum: {best['ours'] / captum_best:.2f}x (target <= 1.0)")
    print(f"  ours / plain passes: {best['ours'] / best['plain']:.2f}x (target <= 1.15)")
    assert best["ours"] / captum_best <= 2.0 and best["ours"] / best["plain"] <= 3.0  # loose guards for a shared machine


def test_occlusion_ours_vs_captum_vs_plain_passes():
    from captum.attr import Occlusion

    from course_lib.methods.attribution import occlusion

    model, x, y, dev = _setup()
    n_win = (64 // PATCH) ** 2
    fns = {"ours": lambda: occlusion(model, x, y, patch=PATCH)}
    for ppe in (16, 64, 256):
        fns[f"captum ppe={ppe}"] = lambda ppe=ppe: Occlusion(model).attribute(
            x, sliding_window_shapes=(3, PATCH, PATCH), strides=(3, PATCH, PATCH), baselines=0.0, target=y, perturbations_per_eval=ppe
        )
    imgs = x.repeat_interleave(n_win + 1, 0)  # the same number of model inputs as occlusion needs

    def plain():
        with torch.inference_mode():
            for s in range(0, imgs.shape[0], 64):
                model(imgs[s : s + 64])

    fns["plain"] = plain
    best = bu.best(fns, dev, REPEATS)[0]
    captum_best = min(v for k, v in best.items() if k.startswith("captum"))
    print(f"\nocclusion {PATCH}x{PATCH}, {BATCH} images ({n_win + 1} calls each) on {dev}, best of {REPEATS}:")
    for k, v in best.items():
        print(f"  {k:18s} {v * 1000:9.1f} ms")
    print(f"  ours / best captum: {best['ours'] / captum_best:.2f}x (target <= 1.0)")
    print(f"  ours / plain forward passes: {best['ours'] / best['plain']:.2f}x (target <= 1.15)")
    assert best["ours"] / captum_best <= 2.0 and best["ours"] / best["plain"] <= 3.0


def test_deletion_insertion_table_time():
    from course_lib.methods.attribution import grad_cam
    from course_lib.metrics import deletion_curve, insertion_curve

    model, x, y, dev = _setup(8 if QUICK else 100)
    heat = grad_cam(model, x, y)
    t = bu.timed(lambda: (deletion_curve(model, x, heat, y), insertion_curve(model, x, heat, y)), dev)[0]
    print(f"\ndeletion + insertion curves (16 steps) of one map for {len(x)} images on {dev}: {t:.2f} s")
