"""a7_prototypes's graded tests: correct solutions written differently pass, plausible wrong ones lose points."""
from pathlib import Path

import pytest

from gradeutil import assert_loses_points, run_graded, score

NB = Path(__file__).resolve().parents[1] / "solutions" / "a7_prototypes" / "a7_prototypes.ipynb"

# An independent rewrite of every exercise: scipy-free ranks by sorting with a loop over tie groups,
# sum pooling read by hooks that append to a list, a score built image by image, entanglement with one
# forward pass per class, and feature isolation by occlusion instead of gradient x (input - grey).
DIFFERENT_BUT_RIGHT = {
    "spearman": """
def _ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    out = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1  # positions i..j hold ranks i+1..j+1
        i = j + 1
    return out

def spearman(a, b):
    rb = torch.tensor(_ranks(b.tolist()))
    rb = rb - rb.mean()
    res = []
    for row in a:
        ra = torch.tensor(_ranks(row.tolist()))
        ra = ra - ra.mean()
        res.append((ra @ rb) / torch.sqrt((ra @ ra) * (rb @ rb)))
    return torch.stack(res).float()
""",
    "pooled_activations": """
def pooled_activations(model, x, layers):
    seen = []
    handles = []
    try:
        for name in layers:
            mod = model.get_submodule(name)
            handles.append(mod.register_forward_hook(lambda m, i, o, name=name: seen.append((name, o.sum(dim=(-2, -1)).clone()))))
        with torch.inference_mode():
            model(x)
    finally:
        while handles:
            handles.pop().remove()
    return {name: value for name, value in seen}
""",
    "spearman_score": """
def spearman_score(model, images, class_images, layers):
    typical = {k: v.mean(0) for k, v in pooled_activations(model, class_images, layers).items()}
    rows = []
    for n in range(len(images)):
        acts = pooled_activations(model, images[n : n + 1], layers)
        rows.append(torch.cat([spearman(acts[l], typical[l]) for l in layers]))
    return torch.stack(rows)
""",
    "entanglement": """
def entanglement(model, images, labels, n_classes):
    rows = []
    with torch.no_grad():
        for i in range(n_classes):
            rows.append(model(images[labels == i]).mean(0))
    return torch.stack(rows)
""",
    "isolation_map": """
def isolation_map(model, x, a, b, patch=8):
    def diff(y):
        with torch.no_grad():
            z = model(y)
        return z[:, a] - z[:, b]
    base = diff(x)
    nh, nw = x.shape[2] // patch, x.shape[3] // patch
    out = torch.empty(x.shape[0], nh, nw)
    for i in range(nh):
        for j in range(nw):
            y = x.clone()
            y[:, :, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch] = 0.5
            out[:, i, j] = base - diff(y)
    return out
""",
}

_POOLED = """
def pooled_activations(model, x, layers):
    mods = dict(model.named_modules())
    store = {{}}
    hs = [mods[n].register_forward_hook(lambda m, i, o, n=n: store.__setitem__(n, {what})) for n in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hs:
            h.remove()
    return store
"""

_ISO = """
def isolation_map(model, x, a, b, patch=8):
    x = x.detach().clone().requires_grad_(True)
    z = model(x)
    (g,) = torch.autograd.grad(({target}).sum(), x)
    c = (g * ({input})).sum(1)
    n, h, w = c.shape
    return c.reshape(n, h // patch, patch, w // patch, patch).{pool}((2, 4))
"""

_ENT = """
def entanglement(model, images, labels, n_classes):
    with torch.no_grad():
        z = model(images)
    {body}
"""

WRONG = {
    "Pearson instead of Spearman": ("spearman", """
def spearman(a, b):
    a = a.double() - a.double().mean(1, keepdim=True)
    b = b.double() - b.double().mean()
    return (a @ b) / (a.norm(dim=1) * b.norm())
"""),
    "ordinal ranks without tie handling": ("spearman", """
def spearman(a, b):
    ra = a.argsort(1).argsort(1).double() + 1
    rb = b.argsort().argsort().double() + 1
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean()
    return (ra @ rb) / (ra.norm(dim=1) * rb.norm())
"""),
    "ranks along the images instead of the channels": ("spearman", """
def spearman(a, b):
    ra = a.argsort(0).argsort(0).double() + 1
    rb = b.argsort().argsort().double() + 1
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean()
    return (ra @ rb) / (ra.norm(dim=1) * rb.norm())
"""),
    "pooling over the batch instead of space": ("pooled_activations", _POOLED.format(what="o.mean(0)")),
    "pooling over the batch and space": ("pooled_activations", _POOLED.format(what="o.mean((0, 2, 3)).expand(o.shape[0], -1)")),
    "max pooling over space": ("pooled_activations", _POOLED.format(what="o.amax((2, 3))")),
    "module input instead of output": ("pooled_activations", _POOLED.format(what="i[0].mean((2, 3))")),
    "hooks not removed when the forward pass fails": ("pooled_activations", """
def pooled_activations(model, x, layers):
    mods = dict(model.named_modules())
    store = {}
    hs = [mods[n].register_forward_hook(lambda m, i, o, n=n: store.__setitem__(n, o.mean((2, 3)))) for n in layers]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return store
"""),
    "mean of correlations with each class image": ("spearman_score", """
def spearman_score(model, images, class_images, layers):
    mine = pooled_activations(model, images, layers)
    ref = pooled_activations(model, class_images, layers)
    return torch.stack([torch.stack([spearman(mine[l], r) for r in ref[l]]).mean(0) for l in layers], 1)
"""),
    "score matrix transposed (layers, images)": ("spearman_score", """
def spearman_score(model, images, class_images, layers):
    mine = pooled_activations(model, images, layers)
    ref = pooled_activations(model, class_images, layers)
    return torch.stack([spearman(mine[l], ref[l].mean(0)) for l in layers])
"""),
    "reference from the scored images instead of the class": ("spearman_score", """
def spearman_score(model, images, class_images, layers):
    mine = pooled_activations(model, images, layers)
    return torch.stack([spearman(mine[l], mine[l].mean(0)) for l in layers], 1)
"""),
    "entanglement matrix transposed": ("entanglement", _ENT.format(
        body="return torch.stack([z[labels == i].mean(0) for i in range(n_classes)]).T")),
    "softmax probabilities instead of logits (entanglement)": ("entanglement", _ENT.format(
        body="p = z.softmax(1)\n    return torch.stack([p[labels == i].mean(0) for i in range(n_classes)])")),
    "sum instead of mean over a class's prototypes": ("entanglement", _ENT.format(
        body="return torch.stack([z[labels == i].sum(0) for i in range(n_classes)])")),
    "assumes class-major order with equal counts": ("entanglement", _ENT.format(
        body="return z.reshape(n_classes, -1, z.shape[1]).mean(1)")),
    "softmax probabilities instead of logits (isolation)": ("isolation_map", _ISO.format(
        target="z.softmax(1)[:, a] - z.softmax(1)[:, b]", input="x.detach() - 0.5", pool="sum")),
    "isolation sign flipped (b rather than a)": ("isolation_map", _ISO.format(
        target="z[:, b] - z[:, a]", input="x.detach() - 0.5", pool="sum")),
    "gradient x input without the grey reference": ("isolation_map", _ISO.format(
        target="z[:, a] - z[:, b]", input="x.detach()", pool="sum")),
    "only the logit of a, not the difference": ("isolation_map", _ISO.format(
        target="z[:, a]", input="x.detach() - 0.5", pool="sum")),
    "mean over the square instead of the sum": ("isolation_map", _ISO.format(
        target="z[:, a] - z[:, b]", input="x.detach() - 0.5", pool="mean")),
    "calls course_lib's spearman": ("spearman", """
from course_lib.methods.prototypes import spearman as _lib_spearman

def spearman(a, b):
    return _lib_spearman(a, b[None])
"""),
    "calls course_lib's pooled activations": ("pooled_activations", """
def pooled_activations(model, x, layers):
    from course_lib.methods import prototypes as P
    return P.pooled_activations(model, x, layers)
"""),
    "calls course_lib's spearman_score": ("spearman_score", """
import course_lib.methods.prototypes as _P

def spearman_score(model, images, class_images, layers):
    return _P.spearman_score(model, images, class_images, layers)
"""),
    "calls course_lib's entanglement": ("entanglement", """
from course_lib.methods.prototypes import entanglement as _ent

def entanglement(model, images, labels, n_classes):
    return _ent(model, images, labels, n_classes)
"""),
    "calls course_lib's isolate": ("isolation_map", """
def isolation_map(model, x, a, b, patch=8):
    from course_lib.methods.prototypes import isolate
    return isolate(model, x, a, b, patch=patch)
"""),
}

TESTS = {"spearman": "test_spearman", "pooled_activations": "test_pooled_activations", "spearman_score": "test_spearman_score",
         "entanglement": "test_entanglement", "isolation_map": "test_isolation"}


def test_a_different_correct_solution_gets_full_marks():
    # the reference solution's full marks are checked by the nbgrader round trip (test_nbgrader.py)
    res = run_graded(NB, DIFFERENT_BUT_RIGHT)
    got, full = score(res)
    assert full == 14 and got == full, {k: r.error for k, r in res.items() if not r.passed}


@pytest.mark.parametrize("mistake", list(WRONG))
def test_plausible_mistakes_lose_points(mistake):
    cell, code = WRONG[mistake]
    assert_loses_points(NB, {cell: code}, mistake, stop_after=TESTS[cell], only={TESTS[cell]})  # later exercises cannot be affected


_BATCHED_OCCLUSION = """
def isolation_map(model, x, a, b, patch=8):
    B, _, H, W = x.shape
    nh, nw = H // patch, W // patch
    ys = x[:, None].repeat(1, nh * nw, 1, 1, 1)  # (B, S, 3, H, W)
    for s in range(nh * nw):
        i, j = divmod(s, nw)
        ys[:, s, :, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch] = 0.5
    ys = ys.flatten(0, 1)
    with torch.no_grad():
        z0 = model(x)
        zs = torch.cat([model(ys[k : k + {chunk}]) for k in range(0, len(ys), {chunk})])
    d0, ds = z0[:, a] - z0[:, b], (zs[:, a] - zs[:, b]).view(B, nh * nw)
    return (d0[:, None] - ds).view(B, nh, nw)
"""


@pytest.mark.parametrize("chunk", [3, 64])
def test_batched_occlusion_gets_the_isolation_points(chunk):
    # float32 rounding differs with the batch size (~1e-3 over the toy's map, where the old check allowed 1e-4)
    res = run_graded(NB, {"isolation_map": _BATCHED_OCCLUSION.format(chunk=chunk)}, stop_after="test_isolation")
    assert res["test_isolation"].passed, res["test_isolation"].error


# --- false rejections (issue 24, item 6): the Spearman tolerances against float32 rounding --------------------
def _float32_spearman(a, b, centred):
    # a loop over rows; ranks by sorting with ties averaged; the correlation in float32, from centred ranks or from
    # raw moments (sum r_a r_b - C mean_a mean_b), the two textbook ways
    import numpy as np

    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v), dtype=np.float32)
        sv = v[order]
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and sv[j + 1] == sv[i]:
                j += 1
            r[order[i:j + 1]] = (i + j) / 2 + 1
            i = j + 1
        return r

    rb = ranks(b)
    out = []
    for row in a:
        ra = ranks(row)
        c = np.float32(len(ra))
        if centred:
            xa, xb = ra - ra.mean(dtype=np.float32), rb - rb.mean(dtype=np.float32)
            out.append(np.sum(xa * xb, dtype=np.float32) / np.sqrt(np.sum(xa * xa, dtype=np.float32) * np.sum(xb * xb, dtype=np.float32)))
        else:
            ma, mb = ra.mean(dtype=np.float32), rb.mean(dtype=np.float32)
            num = np.sum(ra * rb, dtype=np.float32) - c * ma * mb
            va, vb = np.sum(ra * ra, dtype=np.float32) - c * ma * ma, np.sum(rb * rb, dtype=np.float32) - c * mb * mb
            out.append(num / np.sqrt(va * vb))
    return np.array(out, dtype=np.float32)


def test_float32_spearman_stays_within_the_tolerance_on_every_kind_of_input():
    import numpy as np
    from scipy.stats import spearmanr

    kinds = {
        12: lambda r: (r.standard_normal((5, 12)), r.standard_normal(12)),
        40: lambda r: (r.integers(0, 4, (6, 40)).astype(float), r.integers(0, 5, 40).astype(float)),
        96: lambda r: (np.maximum(r.standard_normal((8, 96)), 0), np.maximum(r.standard_normal(96), 0)),
        192: lambda r: (np.exp(r.standard_normal((3, 192))) * 1e-3, r.standard_normal(192) ** 3),
    }
    for c, draw in kinds.items():
        tol, worst = 8 * c * 2.0**-24, 0.0
        for seed in range(60):
            a, b = draw(np.random.default_rng(seed))
            a, b = a.astype(np.float32), b.astype(np.float32)
            want = np.array([spearmanr(row, b).statistic for row in a])
            for centred in (True, False):
                worst = max(worst, float(np.abs(_float32_spearman(a, b, centred) - want).max()))
        assert worst < tol / 2, (c, worst, tol)
    src = next(c.source for c in __import__("gradeutil").cells(NB) if __import__("gradeutil").nbgrader_meta(c).get("grade_id") == "test_spearman")
    assert "tol = 8 * a.shape[1] * 2.0**-24" in src and "assert err < tol" in src


def test_class_means_are_far_enough_apart_for_the_score_check():
    # test_spearman_score: a float32 mean of n <= 6 pooled vectors moves by <= 6 2^-24 of the largest channel; two
    # channels closer than twice that could swap ranks. The closest pair must stay wider (stated there: 2.2e-6).
    import torch
    import torch.nn.functional as F

    from course_lib import load_dataset, load_model

    net = load_model("scenes-cnn", device="cpu")
    data = load_dataset("scenes", split="test", n=60, seed=5)
    for cls, layers in [(0, ["conv1", "conv3", "features"]), (7, ["features", "conv2"])]:
        x = data.images[data.labels == cls]
        assert len(x) <= 6
        with torch.no_grad():
            h = (x - net.mean) / net.std
            for name in ["conv1", "conv2", "conv3", "features"]:
                h = getattr(net, name)(h)
                if name in layers:
                    m = h.mean((2, 3)).double().mean(0)
                    gaps = m.sort().values.diff()
                    assert float(gaps[gaps > 0].min() / m.abs().max()) > 2e-6 > 2 * 6 * 2.0**-24, (cls, name)
                h = F.max_pool2d(h, 2) if name != "features" else h
