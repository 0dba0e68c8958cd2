"""The noise of pgd's random start and of smoothgrad (CONTRIBUTING, house style 7): drawn from a generator seeded with
``seed`` on the model's device (or from the caller's ``generator=``, on any device), never from the global one, for the
whole batch at once, so that the same seed gives the same answer and ``batch_size`` only chunks.

tests/test_contract.py checks the default call of every seeded function; this adds pgd's L2 start, several images
per smoothgrad call, and a caller's CPU generator with a model on a GPU (where there is one).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib.methods.adversarial import pgd
from course_lib.methods.attribution import smoothgrad


def _model() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def _x(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_pgd_start_is_seeded_and_independent_of_batch_size(norm, eps):
    model, x = _model(), _x()
    state = torch.random.get_rng_state()
    a = pgd(model, x, eps=eps, steps=2, norm=norm, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state), "pgd drew from torch's global generator"
    torch.testing.assert_close(pgd(model, x, eps=eps, steps=2, norm=norm, seed=3), a, atol=0, rtol=0)
    torch.testing.assert_close(pgd(model, x, eps=eps, steps=2, norm=norm, seed=3, batch_size=1), a, atol=1e-6, rtol=0)
    torch.testing.assert_close(pgd(model, x, eps=eps, steps=2, norm=norm, generator=torch.Generator().manual_seed(3)), a)
    assert not torch.equal(pgd(model, x, eps=eps, steps=2, norm=norm, seed=4), a)


def test_pgd_continues_the_callers_generator():
    model, x = _model(), _x()
    g = torch.Generator().manual_seed(5)
    first, second = pgd(model, x, eps=8 / 255, steps=1, generator=g), pgd(model, x, eps=8 / 255, steps=1, generator=g)
    assert not torch.equal(first, second), "a caller's generator should advance, not restart"
    torch.testing.assert_close(pgd(model, x, eps=8 / 255, steps=1, generator=torch.Generator().manual_seed(5)), first)


def test_smoothgrad_noise_is_seeded_and_independent_of_batch_size():
    model, x = _model(), _x(3)
    target = torch.tensor([0, 2, 4])
    state = torch.random.get_rng_state()
    a = smoothgrad(model, x, target, n_samples=5, seed=2, absolute=False)
    assert torch.equal(torch.random.get_rng_state(), state), "smoothgrad drew from torch's global generator"
    torch.testing.assert_close(smoothgrad(model, x, target, n_samples=5, seed=2, absolute=False), a, atol=0, rtol=0)
    for bs in (1, 4, 15):
        got = smoothgrad(model, x, target, n_samples=5, seed=2, absolute=False, batch_size=bs)
        torch.testing.assert_close(got, a, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(smoothgrad(model, x, target, n_samples=5, seed=3, absolute=False), a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_pgd_takes_a_cpu_generator_with_a_model_on_the_gpu(norm, eps):
    model, x = _model().cuda(), _x()
    a = pgd(model, x, eps=eps, steps=2, norm=norm, generator=torch.Generator().manual_seed(3))
    b = pgd(model, x, eps=eps, steps=2, norm=norm, generator=torch.Generator().manual_seed(3))
    assert a.device == x.device and torch.equal(a, b)
    own = pgd(model, x, eps=eps, steps=2, norm=norm, seed=3)  # a generator on the model's device
    assert own.device == x.device and torch.equal(own, pgd(model, x, eps=eps, steps=2, norm=norm, seed=3))
    for adv in (a, own):
        d = (adv - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (size <= eps + 1e-5).all()
