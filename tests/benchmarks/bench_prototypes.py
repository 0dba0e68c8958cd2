"""Prototypes on scenes-cnn, in one run (issue 13):

- prototypes for all 10 classes in one batch vs 10 separate runs (one class each): the speed-up of
  the batch; and the batched run's time per step vs a plain forward + backward (to the input) of a
  batch of the same size, the floor any implementation pays (target <= 1.15x). The same batched run
  without the random transformations is reported too: it separates the optimisation loop's own
  overhead from the cost of transformation robustness (pad, jitter, scale and rotate with
  ``grid_sample``, applied once per class so that every class gets the same draws).
  Measured (full mode, 64 steps, best of 3): on a quiet CPU with 2 threads (the H100 machine's
  CPU), one batch 34 ms per step, 2.03x the plain passes (1.59x without the transformations),
  1.61x faster than separate runs; on an H100, 29.9 ms per step against 1.5 ms for the plain
  passes (~20x; 7.3x without the transformations), 1.97x faster than separate runs: on a GPU the
  step is bound by ``featurevis.render``'s per-step overhead (the transformations applied class
  by class, hooks, a device-to-host copy of the objective values every step), not by the passes.
  Why the prototypes cost more over their floor than 16 channel objectives did: that floor was
  measured at 64 x 64 while the model sees 66 x 66 (~5% of the gap; the floor is now 66 x 66),
  and each class's ``- tv * TV - l1 * L1`` was evaluated class by class, 2 x 10 small penalties and
  their backward every step (13.6 ms against 4.0 ms for the batch at once, on one thread). Now
  ``render`` evaluates a term that several objectives share once for the batch, and the class
  logits with one gather. Second round (one thread, CPU time, medians of 5 alternating runs of 16
  steps, old and new code in one process, shared 2-core machine at load 5; a run at load 7 in
  brackets): one batch 1.59x (1.83x) the plain passes at 66 x 66 before, 1.36x (1.52x) after,
  1.27x (1.41x) with ``transforms="one_resample"``; without transformations 1.43x (1.61x) the
  plain passes at 64 x 64 before, 1.22x (1.29x) after; one batch 2.01x faster than 10 separate
  runs after (1.83x before). The 1.15x target is not met: what remains is the Fourier
  parameterisation (~0.3 ms per image and step, forward and backward), the resample (~0.5 ms per
  image and step) and the penalties on the image (TV and L1, ~0.4 ms per image and step);
  Third round (this file as it is now; one thread, best of 3, load ~1, ``MALLOC_TOP_PAD_`` as
  ``make bench`` sets it): render does the default transformations as one resample and hands the
  model channels-last images on the CPU, which also lowers the floor; the floor is now the faster
  layout. Per step: one batch 44.3 ms, composed transformations 48.2 ms, no transformations
  39.4 ms, 10 separate runs 122.7 ms (one batch 2.77x faster); plain passes 45.6 ms contiguous,
  30.8 ms channels-last (at 64 x 64: 43.9 / 29.8 ms). One batch is 1.44x the channels-last floor
  (0.97x the contiguous one), 1.32x without transformations. Old and new code in one process
  (medians of 5 alternating runs of 16 steps, before the allocator setting): 62.7 -> 45.0 ms per
  step, 1.39x faster. Still not <= 1.15x: the per-image costs listed above stay, on a floor that
  is 30% lower.
  Fourth round (this file as it is now; ``make bench``: 2 threads, best of 3; this machine's speed
  changed by up to 2x within minutes that day, so a run on the quiet machine and, in brackets, one
  on a busy one): the resample runs ``grid_sample`` by images of 3 channels, the Fourier map and the
  total variation have their own backward (the same numbers as autograd's, fewer passes), the
  objectives' sharing plan is worked out once. Per step: one batch 31.9 ms (47.1), composed 34.7,
  no transformations 29.0, 10 separate runs 113.9 (one batch 3.57x faster); plain passes 22.6 ms
  channels-last (40.1). One batch is 1.41x the floor (1.17x; the same code before this round, busy:
  1.37x), 1.26x without transformations. Old and new render in one process (medians of 7
  alternating runs of 16 steps): 34.9 -> 29.9 ms per step on 2 threads (1.17x), 46.0 -> 43.7 on one
  (1.05x). Still not <= 1.15x: over a 22.6 ms floor, the 10 images cost ~2.3 ms for TV and L1 with
  their backward, ~2.5 ms for the Fourier map, ~3 ms for the resample and ~1.5 ms for Adam and the
  loop;
- the Spearman evaluation of the whole test split in one pass (pooled activations of every image
  once, then each image against its class's mean, four layers), with its time, next to the same
  scores computed class by class with ``spearman_score`` (500 images: 1.09 s on the quiet 2-thread
  CPU, 0.13 s on an H100; on one CPU thread the forward passes take 2.7 s of CPU time and the
  Spearman step, with its per-row tie handling in ``prototypes._ranks``, 0.5 s).

Runs alternate and the best of several repeats counts, so a shared CPU hurts both sides alike.
Run with ``make bench``; compare ratios, not absolute times. ``COURSE_LIB_BENCH_QUICK=1`` shrinks
everything to check that the file runs.
"""
from __future__ import annotations

import os

import torch
import benchutil as bu

QUICK = bool(os.environ.get("COURSE_LIB_BENCH_QUICK"))
STEPS = 8 if QUICK else 64
N_TEST = 100 if QUICK else 500  # load_dataset's default test split
REPEATS = 1 if QUICK else 3


def _model():
    from course_lib import load_model

    model = load_model("scenes-cnn")
    return model, next(model.parameters()).device


def test_prototypes_one_batch_vs_separate_runs_vs_plain_passes():
    from course_lib.methods.prototypes import prototypes

    model, dev = _model()
    k = 10
    g = torch.Generator().manual_seed(0)
    x66 = torch.rand(k, 3, 66, 66, generator=g).to(dev)  # the size the model sees after pad 4, jitter 4, jitter 2
    x64 = x66[:, :, 1:-1, 1:-1].contiguous()  # the size it sees without the transformations

    def plain(x, layout):  # what every step must do at least: a forward and a backward pass of the batch to the input
        def f():
            for _ in range(STEPS):
                xx = x.contiguous(memory_format=layout).clone(memory_format=layout).requires_grad_(True)
                model(xx).diagonal().sum().backward()
        return f

    fns = {
        "one batch": lambda: prototypes(model, steps=STEPS, seed=0, progress=False),
        "one batch, composed": lambda: prototypes(model, steps=STEPS, seed=0, progress=False, transforms="composed"),
        "one batch, no transforms": lambda: prototypes(model, steps=STEPS, seed=0, progress=False, transforms=None),
        "10 separate runs": lambda: [prototypes(model, [c], steps=STEPS, seed=0, progress=False) for c in range(k)],
        "plain fwd+bwd": plain(x66, torch.contiguous_format),
        "plain fwd+bwd, channels-last": plain(x66, torch.channels_last),
        "plain fwd+bwd, 64x64": plain(x64, torch.contiguous_format),
        "plain fwd+bwd, 64x64, ch.-last": plain(x64, torch.channels_last),
    }
    best, cpu = bu.best(fns, dev, REPEATS)
    print(f"\nprototypes, {k} classes, {STEPS} steps on {dev} ({torch.get_num_threads()} threads), best of {REPEATS}, "
          f"load average {os.getloadavg()[0]:.1f}:")
    for name, v in best.items():
        print(f"  {name:32s} wall {v * 1000:9.1f} ms ({v / STEPS * 1000:7.2f} ms per step)   CPU {cpu[name] * 1000:9.1f} ms")
    for what, t in (("wall", best), ("CPU", cpu)):
        floor = min(t["plain fwd+bwd"], t["plain fwd+bwd, channels-last"])  # the faster layout is the floor
        floor64 = min(t["plain fwd+bwd, 64x64"], t["plain fwd+bwd, 64x64, ch.-last"])
        print(f"  [{what}] speed-up of one batch over separate runs: {t['10 separate runs'] / t['one batch']:.2f}x; "
              f"one batch / plain forward+backward (the faster layout): {t['one batch'] / floor:.2f}x (target <= 1.15), "
              f"composed transformations {t['one batch, composed'] / floor:.2f}x; "
              f"without transformations / plain at 64x64: {t['one batch, no transforms'] / floor64:.2f}x")
    # the two runs give the same prototype for a class (same seed, same transformations). Checked on the CPU
    # only: on a GPU, TF32 convolutions differ slightly between batch sizes, and Adam's first steps (about
    # lr * sign(gradient)) flip wherever a gradient is near zero (measured on an H100: max 0.16, mean 0.025)
    one = prototypes(model, steps=2, seed=0, progress=False).images
    alone = prototypes(model, [3], steps=2, seed=0, progress=False).images
    diff = (one[3] - alone[0]).abs()
    print(f"  class 3 alone vs in the batch after 2 steps: max |difference| {diff.max():.2e}, mean {diff.mean():.2e}")
    assert dev.type != "cpu" or diff.max() < 1e-4
    assert best["one batch"] < best["10 separate runs"]  # loose guards for a shared machine
    # on a GPU the step is bound by featurevis.render's per-step overhead, not by the passes (see the docstring)
    assert dev.type != "cpu" or best["one batch"] / min(best["plain fwd+bwd"], best["plain fwd+bwd, channels-last"]) <= 4.0


def test_spearman_evaluation_of_the_test_split_in_one_pass():
    from course_lib import load_dataset
    from course_lib.methods import prototypes as P

    model, dev = _model()
    data = load_dataset("scenes", split="test", n=N_TEST, seed=0)
    layers = list(P.DEFAULT_LAYERS)
    k = len(data.class_names)

    def one_pass():  # (N, L): every image against the mean of its own class, from one pass over the images
        acts = P.pooled_activations(model, data.images, layers, batch_size=250)
        out = []
        for name in layers:
            means = torch.stack([acts[name][data.labels == c].mean(0) for c in range(k)])  # (K, C)
            out.append(P.spearman(acts[name], means[data.labels]))
        return torch.stack(out, 1)

    def by_class():  # the same scores with spearman_score, one class at a time (two passes per class)
        out = torch.empty(len(data), len(layers))
        for c in range(k):
            own = data.labels == c
            out[own] = P.spearman_score(model, data.images[own], data.images[own], layers)
        return out

    best, cpu = bu.best({"one pass": one_pass, "class by class": by_class}, dev, REPEATS)
    tol = 1e-5 if dev.type == "cpu" else 5e-3  # TF32 convolutions differ by batch size: near-equal channels swap ranks (H100: 1.1e-3)
    torch.testing.assert_close(one_pass(), by_class(), atol=tol, rtol=tol)
    print(f"\nSpearman evaluation of {len(data)} test images x {len(layers)} layers on {dev}, best of {REPEATS}, "
          f"load average {os.getloadavg()[0]:.1f}:")
    for name, v in best.items():
        print(f"  {name:15s} wall {v * 1000:9.1f} ms   CPU {cpu[name] * 1000:9.1f} ms")
    print(f"  one pass is {best['class by class'] / best['one pass']:.2f}x faster than class by class")
    assert best["one pass"] <= 2.0 * best["class by class"]  # loose guard for a shared machine
