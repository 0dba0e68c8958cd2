"""a3_adversarial's graded tests, with submissions written independently of the reference solution.

Correct attacks written differently get full marks; each plausible mistake (no random start, steps
of eps, a no-op, a wrong sign, a missing projection, train mode, calling course_lib) loses the
points of its own exercise; the curves exercise is judged with reference attacks swapped in.
"""
from pathlib import Path

import pytest

from gradeutil import run_graded, score


A3 = Path(__file__).resolve().parents[1] / "solutions" / "a3_adversarial" / "a3_adversarial.ipynb"

# Correct, but written differently from the solution: summed NLL of log-softmax, .backward() on a
# leaf, a perturbation delta as the variable, the box written with torch.min/max.
FGSM_DIFFERENT = '''
def fgsm(model, x, y, eps):
    leaf = x.detach().clone()
    leaf.requires_grad = True
    loss = torch.nn.functional.nll_loss(torch.log_softmax(model(leaf), dim=1), y, reduction="sum")
    loss.backward()
    out = x + eps * torch.sign(leaf.grad)
    return torch.min(torch.max(out, torch.zeros_like(out)), torch.ones_like(out)).detach()
'''
PGD_DIFFERENT = '''
def targeted_pgd(model, x, target, eps, alpha, steps, seed=0):
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    x = x.detach()
    delta = (torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1) * eps
    delta = torch.max(torch.min(delta, 1 - x), -x)       # x + delta in [0, 1]
    for _ in range(steps):
        delta.requires_grad_(True)
        logp = torch.log_softmax(model(x + delta), dim=1)
        loss = -logp.gather(1, target[:, None]).sum()    # summed cross-entropy of the target
        g, = torch.autograd.grad(loss, delta)
        delta = (delta - alpha * g.sign()).clamp(-eps, eps)
        delta = torch.max(torch.min(delta, 1 - x), -x).detach()
    return x + delta
'''

# Plausible mistakes.
FGSM_NO_CLAMP = '''
def fgsm(model, x, y, eps):
    x_adv = x.clone().detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
    return (x_adv + eps * grad.sign()).detach()
'''
FGSM_TRAIN_MODE = '''
def fgsm(model, x, y, eps):
    model.train()  # "gradients need training mode"
    x_adv = x.clone().detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
    return (x_adv + eps * grad.sign()).clamp(0, 1).detach()
'''
_PGD = '''
def targeted_pgd(model, x, target, eps, alpha, steps, seed=0):
    {train}g = torch.Generator(device=x.device).manual_seed(seed)
    x = x.detach()
    x_adv = {start}
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), target), x_adv)
        x_adv = x_adv.detach() {sign} alpha * grad.sign()
        {project}
    {final}
    return x_adv.detach()
'''
_OK = dict(train="", start="(x + torch.empty_like(x).uniform_(-eps, eps, generator=g)).clamp(0, 1)", sign="-",
           project="x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)", final="")
PGD_WRONG = {
    "no clamp to [0, 1]": _PGD.format(**{**_OK, "start": "x + torch.empty_like(x).uniform_(-eps, eps, generator=g)",
                                         "project": "x_adv = x + (x_adv - x).clamp(-eps, eps)"}),
    "projection only once": _PGD.format(**{**_OK, "project": "pass",
                                           "final": "x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)"}),
    "ascends the target loss": _PGD.format(**{**_OK, "sign": "+"}),
    "model left in train mode": _PGD.format(**{**_OK, "train": "model.train()\n    "}),
}



PGD_WRONG.update({
    "no projection onto the eps-ball": _PGD.format(**{**_OK, "project": "x_adv = x_adv.clamp(0, 1)"}),
    # passed test_pgd_valid before it judged the size of each step (issue 24): a plain or normalised gradient step,
    # and a fixed number of steps
    "no sign (a plain gradient step)": _PGD.format(**_OK).replace("alpha * grad.sign()", "alpha * grad"),
    "the gradient normalised instead of its sign": _PGD.format(**_OK).replace(
        "alpha * grad.sign()", "alpha * grad / grad.abs().amax()"),
    "steps ignored (always 10)": _PGD.format(**_OK).replace("range(steps)", "range(10)"),
    "steps ignored (one step)": _PGD.format(**_OK).replace("range(steps)", "range(1)"),
    "no random start": _PGD.format(**{**_OK, "start": "x.clone()"}),
    "steps of eps instead of alpha": _PGD.format(**{**_OK, "sign": "- eps / alpha *"}),
    "no-op": """
def targeted_pgd(model, x, target, eps, alpha, steps, seed=0):
    for _ in range(steps):
        model(x)
    return x.detach().clone()
""",
    "calls course_lib": """
from course_lib.methods.adversarial import pgd as _pgd
def targeted_pgd(model, x, target, eps, alpha, steps, seed=0):
    return _pgd(model, x, eps=eps, alpha=alpha, steps=steps, target=target, seed=seed)
""",
})
FGSM_FORBIDDEN = """
import course_lib.methods.adversarial as A
def fgsm(model, x, y, eps):
    return A.fgsm(model, x, y, eps=eps)
"""
CURVES_WRONG = {
    "success measured on the true classes": """
def attack_curves(model, x, y, targets, eps_list):
    acc, succ = [], []
    for eps in eps_list:
        acc.append(accuracy(model, fgsm(model, x, y, eps), y))
        succ.append(accuracy(model, targeted_pgd(model, x, targets, eps, alpha=eps / 4, steps=10), y))
    return acc, succ
""",
    "PGD with 5 steps": """
def attack_curves(model, x, y, targets, eps_list):
    acc, succ = [], []
    for eps in eps_list:
        acc.append(accuracy(model, fgsm(model, x, y, eps), y))
        succ.append(accuracy(model, targeted_pgd(model, x, targets, eps, alpha=eps / 4, steps=5), targets))
    return acc, succ
""",
    "PGD with alpha = eps": """
def attack_curves(model, x, y, targets, eps_list):
    acc, succ = [], []
    for eps in eps_list:
        acc.append(accuracy(model, fgsm(model, x, y, eps), y))
        succ.append(accuracy(model, targeted_pgd(model, x, targets, eps, alpha=eps, steps=1), targets))
    return acc, succ
""",
}
FULL = 15.0


def _only_failing(res, failing):
    assert not res[failing].passed, f"{failing} should fail"
    assert res[failing].error.startswith("AssertionError"), res[failing].error
    others = {k: r.error for k, r in res.items() if k != failing and not r.passed and k not in PGD_TESTS}
    assert not others, f"the mistake also cost the points of {others}"


PGD_TESTS = {"test_pgd_valid", "test_pgd_success", "test_fish_volcano"}  # all rest on targeted_pgd


# The reference solution's full marks are checked by the real nbgrader round trip (test_nbgrader.py).


def test_correct_but_different_code_gets_full_marks():
    res = run_graded(A3, {"fgsm": FGSM_DIFFERENT, "targeted_pgd": PGD_DIFFERENT})
    assert score(res) == (FULL, FULL), {k: r.error for k, r in res.items() if not r.passed}


def test_a_wrong_fgsm_loses_the_fgsm_points_only():
    _only_failing(run_graded(A3, {"fgsm": FGSM_NO_CLAMP}), "test_fgsm")


@pytest.mark.parametrize("code", [FGSM_TRAIN_MODE, FGSM_FORBIDDEN], ids=["train-mode", "calls-course-lib"])
def test_wrong_fgsm_loses_the_fgsm_points(code):
    res = run_graded(A3, {"fgsm": code}, stop_after="test_fgsm")
    assert not res["test_fgsm"].passed and res["test_fgsm"].error.startswith("AssertionError"), res["test_fgsm"].error


def test_a_no_op_pgd_loses_the_pgd_points_only():
    res = run_graded(A3, {"targeted_pgd": PGD_WRONG["no-op"]})
    assert not res["test_pgd_valid"].passed, res["test_pgd_valid"].error
    assert res["test_fgsm"].passed and res["test_curves"].passed, "a wrong PGD cost FGSM or curve points"


@pytest.mark.parametrize("mistake", [m for m in PGD_WRONG if m != "no-op"])
def test_wrong_pgd_loses_the_pgd_points(mistake):
    res = run_graded(A3, {"targeted_pgd": PGD_WRONG[mistake]}, stop_after="test_pgd_valid")
    assert not res["test_pgd_valid"].passed, f"{mistake}: test_pgd_valid passed"
    assert res["test_pgd_valid"].error.startswith("AssertionError"), res["test_pgd_valid"].error
    assert res["test_fgsm"].passed, f"{mistake} cost the FGSM points"


@pytest.mark.parametrize("mistake", list(CURVES_WRONG))
def test_wrong_curves_lose_the_curve_points(mistake):
    _only_failing(run_graded(A3, {"curves": CURVES_WRONG[mistake]}), "test_curves")


def test_rebinding_the_check_helpers_does_not_help():
    stub = PGD_WRONG["no-op"] + "\ncheck = check_shape = lambda *a, **k: None\n"
    res = run_graded(A3, {"targeted_pgd": stub}, stop_after="test_pgd_valid")
    assert not res["test_pgd_valid"].passed


def test_a_crashing_fgsm_cell_does_not_cost_the_curve_points():
    # the fgsm cell raises before defining fgsm: the curves test swaps in the reference attacks and must
    # not need the student's names (issue 24: it read globals()['fgsm'] first and lost 3 points)
    crash = "raise RuntimeError('unfinished')\ndef fgsm(model, x, y, eps):\n    pass\n"
    res = run_graded(A3, {"fgsm": crash})
    assert not res["test_fgsm"].passed
    assert res["test_curves"].passed, res["test_curves"].error


# --- false rejections of the randomised and numerical checks (issue 24, item 6) --------------------------
def _cell(grade_id):
    from gradeutil import cells, nbgrader_meta

    return next(c.source for c in cells(A3) if nbgrader_meta(c).get("grade_id") == grade_id)


# A correct PGD written differently again: the start drawn with numpy, the loss summed image by image (one
# forward pass per step: the test's spy judges the random start on the batch it is shown), the box as lower and
# upper bounds computed once.
PGD_NUMPY_START = '''
def targeted_pgd(model, x, target, eps, alpha, steps, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed + {offset})
    x = x.detach()
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    z = torch.from_numpy(rng.uniform(-eps, eps, size=tuple(x.shape))).to(x) + x
    z = torch.minimum(torch.maximum(z, lo), hi)
    for _ in range(steps):
        z.requires_grad_(True)
        logits = model(z)
        loss = torch.stack([F.cross_entropy(logits[i:i + 1], target[i:i + 1]) for i in range(len(z))]).sum()
        (g,) = torch.autograd.grad(loss, z)
        z = torch.minimum(torch.maximum(z.detach() - alpha * g.sign(), lo), hi)
    return z
'''


def test_the_pgd_success_bound_written_beside_it():
    from scipy.stats import binom

    q = 1 - 1e-6 ** (1 / 80)  # the largest per-image failure rate compatible with 0 failures in 80 starts
    assert abs(q - 0.159) < 5e-4
    visible, hidden = binom.sf(15, 21, q), binom.sf(18, 24, q)  # P(>= 16 of 21), P(>= 19 of 24)
    assert visible <= 1.5e-9 and hidden <= 1.3e-11, (visible, hidden)
    src = _cell("test_pgd_success")
    assert "ours >= 0.25" in src and "1.5e-9" in src and "1.3e-11" in src, "the bound above is for success >= 0.25: update both"


def _pgd_from_numpy_starts(net, x, target, eps, alpha, steps, seed):
    import numpy as np
    import torch
    import torch.nn.functional as F

    x = x.detach()
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    z = (x + torch.from_numpy(np.random.default_rng(seed).uniform(-eps, eps, size=tuple(x.shape))).float()).clamp(lo, hi)
    for _ in range(steps):
        z.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(net(z), target, reduction="sum"), z)
        z = (z.detach() - alpha * g.sign()).clamp(lo, hi)
    return z


def test_a_correct_pgd_succeeds_on_every_kept_image_from_other_starts():
    # The measurement behind the bound, repeated on a few more starts: with 80 starts per image no image of
    # either case failed (so q <= 0.159); here 6 more starts per case, all of whose kept images must succeed.
    import torch

    from course_lib import load_dataset, load_model

    torch.set_num_threads(1)
    net = load_model("scenes-cnn", device="cpu")
    held = load_dataset("scenes", split="test", n=24, seed=21)
    x, y = held.images, held.labels
    volcano = held.class_names.index("volcano")
    g = torch.Generator().manual_seed(4)
    others = (y + torch.randint(1, 10, y.shape, generator=g)) % 10
    cases = [(torch.full_like(y, volcano), 8 / 255, 2 / 255, 10), (others, 6 / 255, 1.5 / 255, 12)]
    with torch.no_grad():
        keeps = [net(x).argmax(1) != t for t, *_ in cases]
    assert [int(k.sum()) for k in keeps] == [21, 24], "the counts of kept images in the bound changed"
    for seed in range(6):
        for (t, eps, alpha, steps), keep in zip(cases, keeps):
            z = _pgd_from_numpy_starts(net, x[keep], t[keep], eps, alpha, steps, seed=100 + seed)
            with torch.no_grad():
                failed = int((net(z).argmax(1) != t[keep]).sum())
            assert failed == 0, f"{failed} images failed from the numpy starts with seed {100 + seed} (eps = {eps:.4f})"


@pytest.mark.parametrize("offset", [1, 2])
def test_a_correct_pgd_from_other_random_starts_gets_the_pgd_points(offset):
    res = run_graded(A3, {"targeted_pgd": PGD_NUMPY_START.format(offset=977 * offset)}, stop_after="test_pgd_success")
    for gid in ("test_pgd_valid", "test_pgd_success"):
        assert res[gid].passed, (offset, res[gid].error)


# Correct PGDs that run the model differently or project in the other valid order (issue 24): test_pgd_valid judged
# only full-batch calls, so the per-image and chunked ones failed it ("did not start at a random point").
PGD_PER_IMAGE = '''
def targeted_pgd(model, x, target, eps, alpha, steps, seed=0):
    g = torch.Generator(device=x.device).manual_seed(seed)
    x = x.detach()
    start = (x + torch.empty_like(x).uniform_(-eps, eps, generator=g)).clamp(0, 1)
    out = []
    for i in range(len(x)):                      # one image at a time
        xi, zi, ti = x[i:i + 1], start[i:i + 1], target[i:i + 1]
        for _ in range(steps):
            zi = zi.clone().requires_grad_(True)
            (gr,) = torch.autograd.grad(F.cross_entropy(model(zi), ti), zi)
            zi = zi.detach() - alpha * gr.sign()
            zi = torch.min(torch.max(zi, xi - eps), xi + eps).clamp(0, 1)
        out.append(zi)
    return torch.cat(out).detach()
'''
PGD_CHUNKED = '''
def targeted_pgd(model, x, target, eps, alpha, steps, seed=0):
    g = torch.Generator(device=x.device).manual_seed(seed)
    x = x.detach()
    z = (x + torch.empty_like(x).uniform_(-eps, eps, generator=g)).clamp(0, 1)
    for _ in range(steps):
        grads = []
        for lo in range(0, len(x), 5):          # the batch in chunks of 5
            part = z[lo:lo + 5].clone().requires_grad_(True)
            grads.append(torch.autograd.grad(F.cross_entropy(model(part), target[lo:lo + 5]), part)[0])
        z = z - alpha * torch.cat(grads).sign()
        z = torch.clamp(torch.clamp(z, x - eps, x + eps), 0, 1)
    return z.detach()
'''
PGD_CLAMP_THEN_PROJECT = '''
def targeted_pgd(model, x, target, eps, alpha, steps, seed=0):
    g = torch.Generator(device=x.device).manual_seed(seed)
    x = x.detach()
    z = x + torch.empty_like(x).uniform_(-eps, eps, generator=g)
    z = x + (z.clamp(0, 1) - x).clamp(-eps, eps)
    for _ in range(steps):
        z.requires_grad_(True)
        F.cross_entropy(model(z), target, reduction="sum").backward()
        z = (z - alpha * z.grad.sign()).detach().clamp(0, 1)   # [0, 1] first, then the eps-ball
        z = x + (z - x).clamp(-eps, eps)
    with torch.no_grad():
        model(z)                                   # a last look without a gradient is not a step
    return z
'''


@pytest.mark.parametrize("code", [PGD_PER_IMAGE, PGD_CHUNKED, PGD_CLAMP_THEN_PROJECT],
                         ids=["one-image-at-a-time", "chunks-of-5", "clamp-then-project"])
def test_a_correct_pgd_that_runs_the_model_differently_gets_the_pgd_points(code):
    res = run_graded(A3, {"targeted_pgd": code}, stop_after="test_fish_volcano")
    for gid in PGD_TESTS:
        assert res[gid].passed, (gid, res[gid].error)


def test_the_originals_are_far_enough_apart_for_the_spy_to_match_images_to_them():
    # The spy matches each image it is shown to the nearest original (max-norm): unambiguous when every two originals
    # are more than 2 eps apart (an image within eps of one is then more than eps from every other).
    import torch

    from course_lib import load_dataset

    x = load_dataset("scenes", split="test", n=200, seed=0).images[:64]
    for part, eps in ((x[:12], 8 / 255), (x[12:20], 0.05)):
        d = (part[:, None] - part[None]).abs().flatten(2).amax(2) + 10 * torch.eye(len(part))
        assert float(d.min()) > 2 * eps + 0.1, float(d.min())


def test_gradient_signs_survive_float32_rounding_across_batch_sizes():
    # test_pgd_valid judges only pixels with |grad| > 1e-2 of the image's largest, and test_fgsm allows 1% of the pixels
    # to differ: rounding across batch sizes, reductions, layouts and float64 stays far below both.
    import torch
    import torch.nn.functional as F

    from course_lib import load_dataset, load_model

    data = load_dataset("scenes", split="test", n=200, seed=0)
    x, t = data.images[:12], (data.labels[:12] + 3) % 10
    for name in ("scenes-cnn", "scenes-cnn-spurious"):
        net = load_model(name, device="cpu")
        for seed in range(3):
            z = (x + torch.empty_like(x).uniform_(-8 / 255, 8 / 255, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)

            def grad(z, t, reduction="sum", net=net):
                z = z.clone().requires_grad_(True)
                return torch.autograd.grad(F.cross_entropy(net(z), t, reduction=reduction), z)[0]

            g = grad(z, t)
            scale = g.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
            variants = [torch.cat([grad(z[i:i + 1], t[i:i + 1]) for i in range(len(z))]), grad(z, t, "mean") * len(z),
                        grad(z.contiguous(memory_format=torch.channels_last), t)]
            for other in variants:
                assert float(((other - g).abs() / scale).max()) < 1e-5
            near_zero = ((g.abs() < 1e-5 * scale) & (g != 0)).float().mean()
            assert float(near_zero) < 1e-3, f"{name}: {float(near_zero):.2%} of the pixels have a gradient within 1e-5 of the largest"


def test_curves_with_any_seed_get_the_curve_points():
    other_seed = """
def attack_curves(model, x, y, targets, eps_list):
    acc = [accuracy(model, fgsm(model, x, y, e), y) for e in eps_list]
    succ = [accuracy(model, targeted_pgd(model, x, targets, e, e / 4, 10, seed=12345), targets) for e in eps_list]
    return acc, succ
"""
    res = run_graded(A3, {"curves": other_seed})
    assert res["test_curves"].passed, res["test_curves"].error
