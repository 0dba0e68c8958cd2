"""course_lib.methods.adversarial: defining properties, a closed form, and parity with torchattacks."""

import pytest
import torch
from torch import nn


from course_lib.methods.adversarial import accuracy_under_attack, attack_loss, fgsm, pgd, predict, project_to_ball

import torchattacks

FISH, VOLCANO = 0, 1


@pytest.fixture(scope="module")
def batch(scenes_test):
    """32 test scenes (the model gets ~all of them right)."""
    return scenes_test.images[:32], scenes_test.labels[:32]


def _acc(model, x, y):
    return (predict(model, x) == y).float().mean().item()


# ------------------------------------------------------------------ defining properties

@pytest.mark.parametrize("kind", ["fgsm", "pgd", "pgd-targeted"])
@pytest.mark.parametrize("eps", [2 / 255, 8 / 255, 0.1])
def test_linf_ball_and_unit_range(scenes_cnn, batch, kind, eps):
    x, y = batch[0][:16], batch[1][:16]
    if kind == "fgsm":
        x_adv = fgsm(scenes_cnn, x, y, eps=eps)
    elif kind == "pgd":
        x_adv = pgd(scenes_cnn, x, y, eps=eps, steps=3)
    else:
        x_adv = pgd(scenes_cnn, x, eps=eps, steps=3, target=VOLCANO)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    assert (x_adv - x).abs().max().item() > 0.5 * eps  # it did move


def test_l2_ball_and_unit_range(scenes_cnn, batch):
    x, y = batch[0][:16], batch[1][:16]
    eps = 1.0
    x_adv = pgd(scenes_cnn, x, y, eps=eps, steps=5, norm="l2")
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert norms.max().item() <= eps + 1e-4
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    assert _acc(scenes_cnn, x_adv, y) < _acc(scenes_cnn, x, y)


def test_projection_is_the_closest_point():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 5, 5, generator=g)
    z = torch.rand(4, 3, 5, 5, generator=g) * 3 - 1  # far outside the ball and [0, 1]
    p = project_to_ball(z, x, 0.1, "linf")
    # L-inf ball intersected with the box is a box: the projection is a coordinate-wise clip
    torch.testing.assert_close(p, torch.minimum(torch.maximum(z, (x - 0.1).clamp(0, 1)), (x + 0.1).clamp(0, 1)))
    inside = x + 0.05 * torch.sign(torch.randn(4, 3, 5, 5, generator=g))
    inside = inside.clamp(0, 1)
    torch.testing.assert_close(project_to_ball(inside, x, 0.1, "linf"), inside)  # points in the set stay put


def test_pgd_is_at_least_as_strong_as_fgsm(scenes_cnn, batch):
    x, y = batch
    for eps in (2 / 255, 4 / 255):
        a_fgsm = _acc(scenes_cnn, fgsm(scenes_cnn, x, y, eps=eps), y)
        a_pgd = _acc(scenes_cnn, pgd(scenes_cnn, x, y, eps=eps, steps=10), y)
        assert a_pgd <= a_fgsm, (eps, a_pgd, a_fgsm)
    assert a_pgd <= 0.5  # at 4/255 PGD-10 breaks most of these images


def test_accuracy_falls_as_eps_grows(scenes_cnn, batch):
    x, y = batch
    eps = [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255]
    acc = accuracy_under_attack(scenes_cnn, x, y, eps, attack="pgd", steps=5, progress=False)
    assert acc[0].item() == pytest.approx(_acc(scenes_cnn, x, y))
    assert all(acc[i + 1] <= acc[i] + 1e-9 for i in range(len(eps) - 1)), acc
    assert acc[-1].item() <= 0.05 and acc[0].item() >= 0.95


def test_targeted_success_at_stated_eps(scenes_cnn, scenes_test):
    """Stated: PGD-20 at eps = 8/255 turns >= 90% of fish into volcanoes, and >= 90% of all
    images into a random other class."""
    fish = scenes_test.of_class("fish").images[:16]
    x_adv = pgd(scenes_cnn, fish, eps=8 / 255, steps=20, target=VOLCANO)
    assert (predict(scenes_cnn, x_adv) == VOLCANO).float().mean().item() >= 0.9
    x, y = scenes_test.images[48:80], scenes_test.labels[48:80]
    g = torch.Generator().manual_seed(1)
    target = (y + torch.randint(1, 10, y.shape, generator=g)) % 10  # never the true class
    rate = accuracy_under_attack(scenes_cnn, x, y, [0, 1 / 255, 8 / 255], target=target, steps=20, progress=False)
    assert rate[0] == 0 and rate[1] < rate[2] and rate[2] >= 0.9, rate
    x_adv = pgd(scenes_cnn, x[:8], eps=8 / 255, steps=20, target=target[:8])  # the rate counts what predict says
    assert (predict(scenes_cnn, x_adv) == target[:8]).float().mean().item() >= 0.85


# ------------------------------------------------------------------ closed form on a linear model

def test_fgsm_closed_form_on_a_linear_model():
    """Two-class linear model z = W x: grad_x CE(z, y) = p_o (w_o - w_y), so
    FGSM(untargeted) = clip(x + eps * sign(w_o - w_y)) and FGSM(target t) = clip(x + eps * sign(w_t - w_o'))."""
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(12, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, 12, generator=g))
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.rand(6, 3, 2, 2, generator=g)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    w = lin.weight.detach()
    eps = 0.07
    expected = (x + eps * torch.sign(w[1 - y] - w[y]).view(6, 3, 2, 2)).clamp(0, 1)
    torch.testing.assert_close(fgsm(model, x, y, eps=eps), expected)
    # targeted towards the other class moves the same way; towards its own class the opposite way
    torch.testing.assert_close(fgsm(model, x, eps=eps, target=1 - y), expected)
    own = (x + eps * torch.sign(w[y] - w[1 - y]).view(6, 3, 2, 2)).clamp(0, 1)
    torch.testing.assert_close(fgsm(model, x, eps=eps, target=y), own)
    for loss in ("ce", "margin"):  # the margin's gradient is w_o - w_y as well
        torch.testing.assert_close(fgsm(model, x, y, eps=eps, loss=loss), expected)
    assert lin.weight.grad is None  # only the input got a gradient


# ------------------------------------------------------------------ parity with torchattacks

def test_fgsm_matches_torchattacks(scenes_cnn, batch):
    x, y = batch[0][:24], batch[1][:24]
    ref = torchattacks.FGSM(scenes_cnn, eps=4 / 255)(x, y)
    torch.testing.assert_close(fgsm(scenes_cnn, x, y, eps=4 / 255), ref, atol=1e-6, rtol=0)
    atk = torchattacks.FGSM(scenes_cnn, eps=4 / 255)
    atk.set_mode_targeted_by_label(quiet=True)
    ref_t = atk(x, torch.full_like(y, VOLCANO))
    torch.testing.assert_close(fgsm(scenes_cnn, x, eps=4 / 255, target=VOLCANO), ref_t, atol=1e-6, rtol=0)


@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_matches_torchattacks_with_the_same_random_start(scenes_cnn, batch, targeted):
    """torchattacks draws its start from the global CPU RNG; a generator seeded the same draws
    the same numbers, so both start at the same point and must end at the same point."""
    x, y = batch[0][:24], batch[1][:24]
    atk = torchattacks.PGD(scenes_cnn, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)
    labels = y
    if targeted:
        atk.set_mode_targeted_by_label(quiet=True)
        labels = torch.full_like(y, VOLCANO)
    state = torch.get_rng_state()
    torch.manual_seed(123)
    ref = atk(x, labels)
    torch.set_rng_state(state)
    kw = dict(target=labels) if targeted else dict(y=labels)
    ours = pgd(scenes_cnn, x, eps=8 / 255, alpha=2 / 255, steps=10, seed=123, **kw)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_pgd_l2_matches_torchattacks(scenes_cnn, batch):
    """One image per call: torchattacks averages the loss over the batch and adds 1e-10 to the
    gradient norm, which for a confident image's tiny gradient is not negligible after dividing
    by the batch size; we normalise each image's own gradient. With one image the two agree."""
    x, y = batch[0][:6], batch[1][:6]
    state = torch.get_rng_state()
    for i in range(len(x)):
        torch.manual_seed(10 + i)
        ref = torchattacks.PGDL2(scenes_cnn, eps=1.0, alpha=0.2, steps=5)(x[i : i + 1], y[i : i + 1])
        ours = pgd(scenes_cnn, x[i : i + 1], y[i : i + 1], eps=1.0, alpha=0.2, steps=5, norm="l2", seed=10 + i)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    torch.set_rng_state(state)


# ------------------------------------------------------------------ randomness, batching, devices

def test_seeded_and_leaves_the_global_rng_alone(scenes_cnn, batch):
    x, y = batch[0][:8], batch[1][:8]
    state = torch.get_rng_state()
    a = pgd(scenes_cnn, x, y, eps=8 / 255, steps=2, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(pgd(scenes_cnn, x, y, eps=8 / 255, steps=2, seed=1), a, atol=0, rtol=0)
    assert not torch.equal(pgd(scenes_cnn, x, y, eps=8 / 255, steps=2, seed=2), a)
    g = torch.Generator().manual_seed(1)
    torch.testing.assert_close(pgd(scenes_cnn, x, y, eps=8 / 255, steps=2, generator=g), a, atol=0, rtol=0)
    # no random start: a deterministic function of x
    b = pgd(scenes_cnn, x, y, eps=8 / 255, steps=2, random_start=False, seed=None)
    torch.testing.assert_close(pgd(scenes_cnn, x, y, eps=8 / 255, steps=2, random_start=False, seed=7), b)


@pytest.mark.parametrize("bs", [1, 5])
def test_independent_of_batch_size(scenes_cnn, batch, bs):
    x, y = batch[0][:10], batch[1][:10]
    ref = pgd(scenes_cnn, x, y, eps=4 / 255, steps=3, seed=0)
    torch.testing.assert_close(pgd(scenes_cnn, x, y, eps=4 / 255, steps=3, seed=0, batch_size=bs), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        fgsm(scenes_cnn, x, y, eps=4 / 255, batch_size=bs), fgsm(scenes_cnn, x, y, eps=4 / 255), atol=1e-5, rtol=0
    )


def test_untargeted_default_uses_the_models_own_prediction(scenes_cnn, batch):
    x = batch[0][:8]
    torch.testing.assert_close(fgsm(scenes_cnn, x, eps=2 / 255), fgsm(scenes_cnn, x, predict(scenes_cnn, x), eps=2 / 255))


def test_parameters_that_require_grad_are_not_touched():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.rand(5, 3, 8, 8, generator=g)
    pgd(model, x, torch.tensor([0, 1, 2, 0, 1]), eps=0.1, steps=3)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_works_under_no_grad_and_returns_on_the_input_device(scenes_cnn, batch):
    x, y = batch[0][:4], batch[1][:4]
    with torch.no_grad():
        x_adv = pgd(scenes_cnn, x, y, eps=4 / 255, steps=2)
    assert x_adv.device == x.device and not x_adv.requires_grad
    assert (x_adv != x).any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_matches_cpu(scenes_cnn, batch):
    import copy

    x, y = batch[0][:8], batch[1][:8]
    gpu_model = copy.deepcopy(scenes_cnn).cuda()
    out = pgd(gpu_model, x.cuda(), y.cuda(), eps=8 / 255, steps=5, random_start=False)
    assert out.device.type == "cuda"
    ref = pgd(scenes_cnn, x, y, eps=8 / 255, steps=5, random_start=False)
    assert (out.cpu() - ref).abs().gt(1e-3).float().mean() < 0.01  # sign flips only where the gradient is ~0
    out_cpu_in = pgd(gpu_model, x, y, eps=8 / 255, steps=2)  # model on GPU, x on CPU -> result on CPU
    assert out_cpu_in.device == x.device


# ------------------------------------------------------------------ errors a user can act on

def test_refuses_a_model_in_train_mode(scenes_cnn, batch):
    import copy

    m = copy.deepcopy(scenes_cnn).train()
    with pytest.raises(ValueError, match="eval"):
        fgsm(m, batch[0][:2], batch[1][:2], eps=0.01)
    with pytest.raises(ValueError, match="eval"):
        pgd(m, batch[0][:2], batch[1][:2], eps=0.01)


def test_refuses_normalised_inputs_and_says_so(scenes_cnn, batch):
    x = (batch[0][:2] - 0.5) / 0.25  # what transforms.Normalize would give
    with pytest.raises(ValueError, match="normalis"):
        pgd(scenes_cnn, x, batch[1][:2], eps=0.01)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fgsm(scenes_cnn, x, batch[1][:2], eps=0.01)


def test_other_misuse(scenes_cnn, batch):
    x, y = batch[0][:2], batch[1][:2]
    with pytest.raises(ValueError, match="not both"):
        pgd(scenes_cnn, x, y, eps=0.01, target=VOLCANO)
    with pytest.raises(ValueError, match="non-negative"):
        fgsm(scenes_cnn, x, y, eps=-0.1)
    with pytest.raises(ValueError, match="norm"):
        pgd(scenes_cnn, x, y, eps=0.01, norm="l1")
    with pytest.raises(ValueError, match="B, C, H, W"):
        fgsm(scenes_cnn, x[0], y[0], eps=0.01)
    with pytest.raises(RuntimeError, match="inference_mode"):
        with torch.inference_mode():
            fgsm(scenes_cnn, x, y, eps=0.01)


# ------------------------------------------------------------------ gradient masking

def test_margin_loss_sees_through_a_saturated_softmax(scenes_cnn, batch):
    """Scaling the logits by 1e4 changes no prediction but makes the softmax saturate: the
    cross-entropy gradient is exactly zero and CE-PGD looks like a perfect defence. The margin
    loss works on logits and still breaks the model (gradient masking, Carlini & Wagner 2016)."""

    class Scaled(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return 1e4 * self.net(x)

    masked = Scaled(scenes_cnn).eval()
    x, y = batch[0][:24], batch[1][:24]
    logits = masked(x)
    assert torch.equal(logits.argmax(1), scenes_cnn(x).argmax(1))
    a_ce = _acc(masked, pgd(masked, x, y, eps=8 / 255, steps=5, random_start=False), y)
    a_margin = _acc(masked, pgd(masked, x, y, eps=8 / 255, steps=5, loss="margin"), y)
    assert a_ce >= 0.9 and a_margin <= 0.1, (a_ce, a_margin)
    # the margin objective itself
    z = torch.tensor([[3.0, 1.0, 2.0]])
    assert attack_loss(z, torch.tensor([0]), targeted=False, loss="margin").item() == pytest.approx(-1.0)
    assert attack_loss(z, torch.tensor([1]), targeted=True, loss="margin").item() == pytest.approx(-2.0)


# ------------------------------------------------------------------ the graded assignment a3_adversarial
