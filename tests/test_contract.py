"""One contract for every method that takes a game or a model (DESIGN.md, "One API across methods").

For each method, on every device this machine has:
- the result comes back on the device of the input (the game's device, or x's device);
- the same ``seed`` gives the same answer, and (for a random method) another seed another one;
- the answer does not depend on ``batch_size`` (chunking only);
- perturbation results share one family: ``values``, ``budget``, ``method``, ``player_names``,
  a short ``str`` naming the top players, big tensors kept out of the ``repr``.
"""
from __future__ import annotations

import pytest
import torch

from course_lib.games import grid_segments, image_game, tabular_game
from course_lib.methods.adversarial import fgsm, pgd
from course_lib.methods.lime import lime
from course_lib.methods.results import PerturbationResult
from course_lib.methods.shapley import exact_interactions, exact_shapley, kernel_shap, permutation_shapley

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# name -> (method(game, seed) -> result, is it random?)
GAME_METHODS = {
    "lime": (lambda g, seed: lime(g, 120, seed=seed), True),
    "lime-bernoulli": (lambda g, seed: lime(g, 120, seed=seed, sampler="bernoulli"), True),
    "exact_shapley": (lambda g, seed: exact_shapley(g), False),
    "exact_interactions": (lambda g, seed: exact_interactions(g), False),
    "kernel_shap": (lambda g, seed: kernel_shap(g, 100, seed=seed), True),
    "permutation_shapley": (lambda g, seed: permutation_shapley(g, 100, seed=seed), True),
}


def _close(a: torch.Tensor, b: torch.Tensor, device: str) -> bool:
    # TF32 convolutions on a GPU: chunks of different sizes may round differently (DESIGN.md)
    tol = dict(rtol=1e-4, atol=1e-5) if device == "cpu" else dict(rtol=7e-3, atol=1e-3)
    return torch.allclose(a.double().cpu(), b.double().cpu(), **tol)


def _image_game(model, x, device, batch_size):
    # 3 x 3 patches: 9 players, so that exact enumeration costs 512 forward passes
    return image_game(model.to(device), x.to(device), grid_segments(64, 64, 22), baseline="mean", target=2, batch_size=batch_size)


def _tabular_game(device, batch_size):
    torch.manual_seed(0)
    # 8 features: 256 coalitions, more than the samplers' budget of 100 (so they really sample)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).eval().to(device)
    x, bg = torch.randn(8, device=device), torch.randn(20, 8, device=device)
    return tabular_game(net, x, bg, target=1, output="logit", batch_size=batch_size, feature_names=list("abcdefgh"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["image", "tabular"])
@pytest.mark.parametrize("name", list(GAME_METHODS))
def test_game_methods(name, kind, device, scenes_cnn, scenes_test):
    method, random = GAME_METHODS[name]

    def game(bs):
        return _image_game(scenes_cnn, scenes_test.images[0], device, bs) if kind == "image" else _tabular_game(device, bs)

    a = method(game(7), 0)
    b = method(game(1000), 0)
    c = method(game(7), 0)
    # device
    assert a.values.device.type == device, f"{name} returned values on {a.values.device}, the game is on {device}"
    # batch-size independence and determinism
    assert _close(a.values, b.values, device), f"{name}: the answer changed with batch_size"
    assert torch.equal(a.values, c.values), f"{name}: the same seed gave a different answer"
    if random:
        d = method(game(7), 1)
        assert not torch.equal(a.values, d.values), f"{name}: another seed gave the very same answer"
    # one result family
    assert isinstance(a, PerturbationResult)
    assert a.budget > 0 and isinstance(a.method, str) and a.method
    assert a.values.shape[0] == (9 if kind == "image" else 8)
    text = str(a)
    assert "budget" in text and len(text) < 400
    assert "masks" not in repr(a) and "outputs" not in repr(a) and "moebius" not in repr(a)
    if kind == "tabular":
        assert a.player_names == list("abcdefgh")
        assert a.name(int(a.top(1))) in text, "str(result) should name the top player"


ATTACKS = {
    "fgsm": lambda m, x, y, seed, bs: fgsm(m, x, y, eps=4 / 255, batch_size=bs),
    "pgd": lambda m, x, y, seed, bs: pgd(m, x, y, eps=4 / 255, steps=3, seed=seed, batch_size=bs),
    "pgd-l2": lambda m, x, y, seed, bs: pgd(m, x, y, eps=0.5, steps=3, norm="l2", seed=seed, batch_size=bs),
    "pgd-targeted": lambda m, x, y, seed, bs: pgd(m, x, eps=4 / 255, steps=3, target=(y + 1) % 10, seed=seed, batch_size=bs),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks(name, device, scenes_cnn, scenes_test):
    attack = ATTACKS[name]
    model = scenes_cnn.to(device)
    x, y = scenes_test.images[:6].to(device), scenes_test.labels[:6].to(device)
    a = attack(model, x, y, 0, 2)
    b = attack(model, x, y, 0, None)
    c = attack(model, x, y, 0, 2)
    assert a.device.type == device
    atol = 1e-6 if device == "cpu" else 0.06  # sign steps flip where gradients are near zero (TF32)
    assert (a - b).abs().max() <= atol, f"{name}: the answer changed with batch_size"
    assert torch.equal(a, c), f"{name}: the same seed gave a different answer"
    if name != "fgsm":
        assert not torch.equal(a, attack(model, x, y, 1, 2)), f"{name}: another seed gave the very same answer"


def test_bad_inputs_are_refused_with_a_clear_message(scenes_cnn, scenes_test):
    x = scenes_test.images[0].clone()
    x[0, 0, 0] = float("nan")
    seg = grid_segments(64, 64, 16)
    with pytest.raises(ValueError, match="NaN"):
        image_game(scenes_cnn, x, seg)
    with pytest.raises(ValueError, match="NaN"):
        pgd(scenes_cnn, x[None], eps=0.01)
    with pytest.raises(ValueError, match="NaN"):
        fgsm(scenes_cnn, x[None], eps=0.01)
    with pytest.raises(ValueError, match="NaN"):
        tabular_game(lambda r: r.sum(1), torch.tensor([1.0, float("inf")]), torch.zeros(3, 2))
    good = scenes_test.images[0]
    with pytest.raises(ValueError, match=r"0\.\.9"):
        image_game(scenes_cnn, good, seg, target=10)(torch.ones(1, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"0\.\.9"):
        pgd(scenes_cnn, good[None], eps=0.01, target=12)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        fgsm(scenes_cnn, good[None], torch.tensor([-1]), eps=0.01)
