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
