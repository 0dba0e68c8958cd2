"""Is the games engine's default chunk a good batch size? (issue 11)

Image LIME with 1000 samples on ~50 SLIC superpixels, for `scenes-cnn` (64x64) and a ResNet-18
(random weights, 10 outputs, 128x128), on the CPU and, where there is one, on the GPU. For each we
time our LIME with the default chunk (`course_lib.games.default_batch_size`)
and with fixed batch sizes, and the `lime` package with its default batch size (10) and 100.
Each figure is the median of REPEATS runs in the same process after a warm-up.

Claims checked: the default is within 1.10x of the best fixed batch size, and never slower
than the `lime` package. On a shared machine compare ratios, not absolute times; the CPU
figures in the closing notes were taken with 2 threads on an otherwise idle machine.
Run with `make bench` (or `pytest tests/benchmarks/bench_chunking.py -s -o python_files='bench_*.py'`).

Measured (moved here from `default_batch_size`'s docstring): image LIME, 1000 samples, ~50 superpixels,
channels-last images, 2 threads, medians of 3: the best fixed batch was 16 both for scenes-cnn (8: 1.14x,
32: 1.44x, 256: 1.87x) and for a ResNet-18 at 128x128 (32: 1.02x, 8: 1.14x, 256: 1.35x); on an H200 larger
batches only gained (scenes-cnn: 256 or more within 1.15x of 1000; ResNet-18: 256 1.09x, 512 1.04x;
measured before channels-last, which is CPU-only).
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import benchutil as bu

QUICK = bool(os.environ.get("COURSE_LIB_BENCH_QUICK"))  # a smoke run: the code works, the figures mean nothing
os.environ.setdefault("COURSE_LIB_NO_PROGRESS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
N_SAMPLES, REPEATS = (100, 1) if QUICK else (1000, 3)
N_SAMPLES = int(os.environ.get("COURSE_LIB_BENCH_SAMPLES", N_SAMPLES))  # fewer on a slow CPU (ResNet-18)
REPEATS = int(os.environ.get("COURSE_LIB_BENCH_REPEATS", REPEATS))
BATCHES = {"cpu": (8, 16, 32, 64, 128, 256), "cuda": (32, 64, 128, 256, 512, 1000)}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _setup(name: str, dev: torch.device):
    from course_lib import load_dataset, load_model
    from course_lib.methods.lime import slic_segments

    x = load_dataset("scenes", n=4, seed=0).images[0]
    if name == "scenes-cnn":
        model = load_model("scenes-cnn", device=dev)
    else:
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None, num_classes=10).eval().to(dev)
        for p in model.parameters():
            p.requires_grad_(False)
        x = F.interpolate(x[None], size=(128, 128), mode="bilinear", align_corners=False)[0]
    seg = slic_segments(x, 50).cpu()
    with torch.inference_mode():
        y = int(model(x[None].to(dev)).argmax())
    return model, x, y, seg


def _median_time(fn, dev) -> float:
    fn()  # warm-up
    times = []
    for _ in range(REPEATS):
        bu.sync(dev)
        t = time.perf_counter()
        fn()
        bu.sync(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _lime_package(model, x, y, seg, dev, batch_size):
    os.environ["TQDM_DISABLE"] = "1"
    from lime import lime_image

    img = x.permute(1, 2, 0).numpy().astype(np.float64)
    seg_np = seg.numpy()

    def classifier_fn(images):
        with torch.inference_mode():
            t_ = torch.as_tensor(np.asarray(images), dtype=torch.float32).permute(0, 3, 1, 2).to(dev)
            return model(t_).cpu().numpy()

    explainer = lime_image.LimeImageExplainer(kernel_width=0.25, random_state=0)
    return lambda: explainer.explain_instance(
        img, classifier_fn, labels=(y,), top_labels=None, hide_color=None, num_samples=N_SAMPLES,
        segmentation_fn=lambda _im: seg_np, num_features=100, batch_size=batch_size, random_seed=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["scenes-cnn", "resnet18"])
def test_default_chunk_vs_fixed_batches_vs_lime_package(name, device):
    from course_lib.games import image_game
    from course_lib.methods.lime import lime

    dev = torch.device(device)
    model, x, y, seg = _setup(name, dev)
    default_chunk = image_game(model, x, seg, baseline="mean", target=y).chunk
    ours = {}
    for bs in (None,) + BATCHES[device]:
        ours[bs] = _median_time(lambda: lime(image_game(model, x, seg, baseline="mean", target=y, batch_size=bs),
                                             N_SAMPLES, seed=0).weights.cpu(), dev)
    package = {bs: _median_time(_lime_package(model, x, y, seg, dev, bs), dev) for bs in (10, 100)}
    best_bs = min((b for b in ours if b is not None), key=ours.get)
    print(f"\n{name} on {device} ({torch.get_num_threads()} threads), {N_SAMPLES} LIME samples, median of {REPEATS}:")
    print(f"  ours, default chunk ({default_chunk}): {ours[None]:.3f} s")
    for bs in BATCHES[device]:
        print(f"  ours, batch_size={bs:<5}        : {ours[bs]:.3f} s")
    for bs, t in package.items():
        print(f"  lime package, batch_size={bs:<4}  : {t:.3f} s")
    ratio = ours[None] / ours[best_bs]
    print(
        f"  default / best fixed (batch {best_bs}): {ratio:.2f}x;  default / best lime package: {ours[None] / min(package.values()):.2f}x"
    )
    if QUICK:
        return
    assert ratio <= 1.10, f"the default chunk ({default_chunk}) is {ratio:.2f}x the best batch size ({best_bs})"
    assert ours[None] <= min(package.values()), "the default chunk is slower than the lime package"
