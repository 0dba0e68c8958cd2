"""a6_feature_vis's graded tests: correct solutions written differently pass, plausible wrong ones lose points."""
from pathlib import Path

import pytest

from gradeutil import assert_loses_points, run_graded, score

NB = Path(__file__).resolve().parents[1] / "solutions" / "a6_feature_vis" / "a6_feature_vis.ipynb"

# An independent rewrite of every exercise: isotropic TV, another draw order and padding route for
# jitter, the "backward" FFT normalisation with a hand-built frequency grid, a hook that stores in a
# list, an ascent on the mean.
DIFFERENT_BUT_RIGHT = {
    "total_variation": """
def total_variation(x):
    dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
    return torch.sqrt(dy * dy + dx * dx + 1e-12).flatten(1).sum(1)
""",
    "jitter": """
def jitter(x, d, g):
    out = torch.full_like(x, 0.5)
    h, w = x.shape[-2:]
    for i in range(x.shape[0]):
        sx = int(torch.randint(0, 2 * d + 1, (1,), generator=g)) - d
        sy = int(torch.randint(0, 2 * d + 1, (1,), generator=g)) - d
        ys, yd = (slice(0, h - sy), slice(sy, h)) if sy >= 0 else (slice(-sy, h), slice(0, h + sy))
        xs, xd = (slice(0, w - sx), slice(sx, w)) if sx >= 0 else (slice(-sx, w), slice(0, w + sx))
        out[i, :, yd, xd] = x[i, :, ys, xs]
    return out
""",
    "fourier": """
import numpy as np

def _scale(h, w, decay):
    ky = np.arange(h)
    fy = np.where(ky <= h // 2, ky, ky - h) / h
    fx = np.arange(w // 2 + 1) / w
    f = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    return torch.tensor(np.maximum(f, 1 / max(h, w)) ** (-decay), dtype=torch.float32)

def fourier_signal(spectrum, size, decay=1.0):
    return torch.fft.irfft2(spectrum * _scale(*size, decay), s=size)

def fourier_inverse(signal, decay=1.0):
    h, w = signal.shape[-2:]
    return torch.fft.rfft2(signal) / _scale(h, w, decay)

def fourier_image(spectrum, size, decay=1.0):
    return torch.sigmoid(fourier_signal(spectrum, size, decay))
""",
    "channel_mean": """
def channel_mean(model, layer, c, x):
    seen = []
    target = model.get_submodule(layer)
    h = target.register_forward_hook(lambda mod, inp, out: seen.append(out))
    try:
        model(x)
    finally:
        h.remove()
    return seen[-1][:, c].flatten(1).mean(1)
""",
    "ascend": """
def ascend(model, objective, to_image, params, steps, lr=0.05, transform=None, seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    p = torch.nn.Parameter(params.detach().clone())
    opt = torch.optim.Adam([p], lr=lr)
    history = []
    for step in range(steps):
        img = to_image(p)
        v = objective(model, img if transform is None else transform(img, g))
        history.append(float(v.detach().mean()))
        loss = -v.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return to_image(p), history
""",
}

WRONG = {
    "TV without the absolute value": ("total_variation", """
def total_variation(x):
    return (x[:, :, 1:] - x[:, :, :-1]).sum((1, 2, 3)) + (x[:, :, :, 1:] - x[:, :, :, :-1]).sum((1, 2, 3))
"""),
    "TV of squared differences": ("total_variation", """
def total_variation(x):
    return ((x[:, :, 1:] - x[:, :, :-1]) ** 2).sum((1, 2, 3)) + ((x[:, :, :, 1:] - x[:, :, :, :-1]) ** 2).sum((1, 2, 3))
"""),
    "TV that wraps around the border": ("total_variation", """
def total_variation(x):
    return (x - torch.roll(x, 1, 2)).abs().sum((1, 2, 3)) + (x - torch.roll(x, 1, 3)).abs().sum((1, 2, 3))
"""),
    "TV in one direction only": ("total_variation", """
def total_variation(x):
    return (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().sum((1, 2, 3))
"""),
    "TV as a mean": ("total_variation", """
def total_variation(x):
    return (x[:, :, 1:] - x[:, :, :-1]).abs().mean((1, 2, 3)) + (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean((1, 2, 3))
"""),
    "jitter that wraps around": ("jitter", """
def jitter(x, d, g):
    dy = torch.randint(-d, d + 1, (x.shape[0],), generator=g)
    dx = torch.randint(-d, d + 1, (x.shape[0],), generator=g)
    return torch.stack([torch.roll(x[i], (int(dy[i]), int(dx[i])), dims=(1, 2)) for i in range(x.shape[0])])
"""),
    "jitter from the global generator": ("jitter", """
def jitter(x, d, g):
    b, _, h, w = x.shape
    dy, dx = torch.randint(-d, d + 1, (b,)), torch.randint(-d, d + 1, (b,))
    p = F.pad(x, [d] * 4, value=0.5)
    return torch.stack([p[i, :, d - dy[i] : d - dy[i] + h, d - dx[i] : d - dx[i] + w] for i in range(b)])
"""),
    "jitter shifting only one way": ("jitter", """
def jitter(x, d, g):
    b, _, h, w = x.shape
    dy, dx = torch.randint(0, d + 1, (b,), generator=g), torch.randint(0, d + 1, (b,), generator=g)
    p = F.pad(x, [d] * 4, value=0.5)
    return torch.stack([p[i, :, d - dy[i] : d - dy[i] + h, d - dx[i] : d - dx[i] + w] for i in range(b)])
"""),
    "jitter with one shift for the batch": ("jitter", """
def jitter(x, d, g):
    h, w = x.shape[2:]
    dy, dx = torch.randint(-d, d + 1, (2,), generator=g).tolist()
    p = F.pad(x, [d] * 4, value=0.5)
    return p[:, :, d - dy : d - dy + h, d - dx : d - dx + w]
"""),
    "jitter padding with black": ("jitter", """
def jitter(x, d, g):
    b, _, h, w = x.shape
    dy, dx = torch.randint(-d, d + 1, (b,), generator=g), torch.randint(-d, d + 1, (b,), generator=g)
    p = F.pad(x, [d] * 4, value=0.0)
    return torch.stack([p[i, :, d - dy[i] : d - dy[i] + h, d - dx[i] : d - dx[i] + w] for i in range(b)])
"""),
    "Fourier without frequency scaling": ("fourier", """
def fourier_signal(spectrum, size, decay=1.0):
    return torch.fft.irfft2(spectrum, s=size, norm="ortho")

def fourier_inverse(signal, decay=1.0):
    return torch.fft.rfft2(signal, norm="ortho")

def fourier_image(spectrum, size, decay=1.0):
    return torch.sigmoid(fourier_signal(spectrum, size, decay))
"""),
    "Fourier without negative frequencies": ("fourier", """
def _s(size, decay):
    h, w = size
    f = ((torch.arange(h) / h)[:, None] ** 2 + (torch.arange(w // 2 + 1) / w)[None] ** 2).sqrt()
    return 1 / f.clamp_min(1 / max(h, w)) ** decay

def fourier_signal(spectrum, size, decay=1.0):
    return torch.fft.irfft2(spectrum * _s(size, decay), s=size, norm="ortho")

def fourier_inverse(signal, decay=1.0):
    return torch.fft.rfft2(signal, norm="ortho") / _s(tuple(signal.shape[-2:]), decay)

def fourier_image(spectrum, size, decay=1.0):
    return torch.sigmoid(fourier_signal(spectrum, size, decay))
"""),
    "Fourier inverse forgets to unscale": ("fourier", """
def _s(size, decay):
    h, w = size
    f = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.rfftfreq(w)[None] ** 2).sqrt()
    return 1 / f.clamp_min(1 / max(h, w)) ** decay

def fourier_signal(spectrum, size, decay=1.0):
    return torch.fft.irfft2(spectrum * _s(size, decay), s=size, norm="ortho")

def fourier_inverse(signal, decay=1.0):
    return torch.fft.rfft2(signal, norm="ortho")

def fourier_image(spectrum, size, decay=1.0):
    return torch.sigmoid(fourier_signal(spectrum, size, decay))
"""),
    "Fourier ignores decay": ("fourier", """
def _s(size):
    h, w = size
    f = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.rfftfreq(w)[None] ** 2).sqrt()
    return 1 / f.clamp_min(1 / max(h, w))

def fourier_signal(spectrum, size, decay=1.0):
    return torch.fft.irfft2(spectrum * _s(size), s=size, norm="ortho")

def fourier_inverse(signal, decay=1.0):
    return torch.fft.rfft2(signal, norm="ortho") / _s(tuple(signal.shape[-2:]))

def fourier_image(spectrum, size, decay=1.0):
    return torch.sigmoid(fourier_signal(spectrum, size, decay))
"""),
    "hooked output detached": ("channel_mean", """
def channel_mean(model, layer, c, x):
    store = {}
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: store.update(out=o.detach()))
    try:
        model(x)
    finally:
        h.remove()
    return store["out"][:, c].mean((1, 2))
"""),
    "hook not removed on error": ("channel_mean", """
def channel_mean(model, layer, c, x):
    store = {}
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: store.update(out=o))
    model(x)
    h.remove()
    return store["out"][:, c].mean((1, 2))
"""),
    "module input instead of output": ("channel_mean", """
def channel_mean(model, layer, c, x):
    store = {}
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: store.update(out=i[0]))
    try:
        model(x)
    finally:
        h.remove()
    return store["out"][:, c].mean((1, 2))
"""),
    "channel mean over the batch too": ("channel_mean", """
def channel_mean(model, layer, c, x):
    store = {}
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: store.update(out=o))
    try:
        model(x)
    finally:
        h.remove()
    return store["out"][:, c].mean()
"""),
    "ascent that minimises": ("ascend", """
def ascend(model, objective, to_image, params, steps, lr=0.05, transform=None, seed=0):
    p = params.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    g = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(steps):
        x = to_image(p)
        if transform is not None:
            x = transform(x, g)
        value = objective(model, x)
        history.append(value.mean().item())
        opt.zero_grad()
        value.sum().backward()
        opt.step()
    return to_image(p).detach(), history
"""),
    "ascent with a fresh generator every step": ("ascend", """
def ascend(model, objective, to_image, params, steps, lr=0.05, transform=None, seed=0):
    p = params.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    history = []
    for _ in range(steps):
        x = to_image(p)
        if transform is not None:
            x = transform(x, torch.Generator().manual_seed(seed))
        value = objective(model, x)
        history.append(value.mean().item())
        opt.zero_grad()
        (-value.sum()).backward()
        opt.step()
    return to_image(p).detach(), history
"""),
    "calls course_lib's total variation": ("total_variation", """
def total_variation(x):
    from course_lib.methods.featurevis import total_variation as tv
    return tv()({"input": x}) * x.shape[2] * x.shape[3]
"""),
    "calls course_lib's hooks": ("channel_mean", """
def channel_mean(model, layer, c, x):
    from course_lib.hooks import capture
    with capture(model, layer, detach=False) as acts:
        model(x)
    return acts[layer][:, c].mean((1, 2))
"""),
}

POINTS = {"total_variation": {"test_total_variation"}, "jitter": {"test_jitter"},
          "fourier": {"test_fourier_round_trip", "test_fourier_scaling"}, "channel_mean": {"test_channel_mean"},
          "ascend": {"test_ascend"}}
LAST_TEST = {"total_variation": "test_total_variation", "jitter": "test_jitter", "fourier": "test_fourier_scaling",
             "channel_mean": "test_channel_mean", "ascend": "test_ascend"}


def test_reference_solution_gets_full_marks():
    res = run_graded(NB)
    got, full = score(res)
    assert got == full == 16, {k: r.error for k, r in res.items() if not r.passed}


def test_a_different_correct_solution_gets_full_marks():
    res = run_graded(NB, DIFFERENT_BUT_RIGHT)
    got, full = score(res)
    assert got == full, {k: r.error for k, r in res.items() if not r.passed}


@pytest.mark.parametrize("mistake", list(WRONG))
def test_plausible_mistakes_lose_points(mistake):
    cell, code = WRONG[mistake]
    assert_loses_points(NB, {cell: code}, mistake, stop_after=LAST_TEST[cell], only=POINTS[cell])  # later exercises cannot be affected


# --- false rejections (issue 24, item 6) -------------------------------------------------------------------
def _cell(grade_id):
    from gradeutil import cells, nbgrader_meta

    return next(c.source for c in cells(NB) if nbgrader_meta(c).get("grade_id") == grade_id)


def test_the_jitter_bounds_written_beside_the_check():
    assert 25 * (24 / 25) ** 500 <= 3.5e-8 < 1e-6 < 25 * (24 / 25) ** 400  # 400 images were not enough
    assert 9 * (8 / 9) ** 300 <= 4.1e-15
    src = _cell("test_jitter")
    assert "torch.rand(500, 3, 8, 8" in src and "torch.rand(300, 2, 6, 9" in src, "the bounds are for 500 and 300 images"


def _numpy_jitter(x, d, g):
    # a correct jitter written differently: shifts from numpy seeded by the torch generator, a loop over images
    import numpy as np
    import torch

    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    b, _, h, w = x.shape
    out = torch.full_like(x, 0.5)
    for i, (dy, dx) in enumerate(rng.integers(-d, d + 1, size=(b, 2))):
        out[i, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = x[i, :, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_a_correct_jitter_passes_the_jitter_cell_on_many_seeds():
    import torch
    import torch.nn.functional as F

    src = _cell("test_jitter")
    for offset in range(40):
        def jitter(x, d, g, offset=offset):
            g.manual_seed(g.initial_seed() + 7919 * offset)
            return _numpy_jitter(x, d, g)

        ns = {"torch": torch, "F": F, "jitter": jitter}
        exec(compile(src, "<test_jitter>", "exec"), ns)


def test_the_ascend_check_has_room_for_any_generator_seed():
    # The logit gains that test_ascend needs above 3, with the cell's starts and other generator seeds.
    import torch

    from course_lib import load_model

    net = load_model("scenes-cnn", device="cpu")

    def gain(c, steps, seed, gseed):
        p = (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 0.1).requires_grad_(True)
        p0 = p.detach().clone()
        opt, g = torch.optim.Adam([p], lr=0.05), torch.Generator().manual_seed(gseed)
        for _ in range(steps):
            s = torch.randint(-2, 3, (2,), generator=g).tolist()
            loss = -net(torch.roll(torch.sigmoid(p), s, dims=(2, 3)))[:, c].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float((net(torch.sigmoid(p))[:, c] - net(torch.sigmoid(p0))[:, c]).min())

    for c, steps, seed in [(3, 15, 0), (7, 12, 4)]:
        assert min(gain(c, steps, seed, s) for s in [seed] + list(range(100, 110))) > 6.0, c
