"""LIME: closed forms on linear games, scikit-learn and captum parity, batch-size independence,
determinism, and stability that does not fall as samples grow."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.games import function_game, image_game, tabular_game
from course_lib.methods.lime import cosine_distance, exp_kernel, lime, lime_sweep, sample_masks, slic_segments, weighted_ridge
from course_lib.metrics import mean_pairwise, topk_jaccard


def linear_game(w: torch.Tensor, b: float = 0.5, **kw):
    return function_game(lambda m: b + m @ w, len(w), **kw)


def interaction_game(d: int, seed: int = 0):
    """A smooth nonlinear game: main effects plus pairwise products (LIME cannot fit it exactly)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    W = torch.randn(d, d, generator=g).triu(1) * 0.3
    return function_game(lambda m: m @ w + ((m @ W) * m).sum(1), d)


# ----------------------------------------------------------------------------- the pieces


def test_sample_masks_shape_counts_and_determinism():
    m = sample_masks(10, 500, seed=3)
    assert m.shape == (500, 10) and m.dtype == torch.bool
    assert m[0].all(), "the first sample is the input itself"
    off = (~m[1:]).sum(1)
    assert off.min() >= 1 and off.max() <= 9, "the lime sampler switches off 1..d-1 players"
    # every count of switched-off players appears, roughly uniformly
    counts = torch.bincount(off, minlength=10)[1:]
    assert counts.min() > 30
    assert torch.equal(m, sample_masks(10, 500, seed=3))
    assert not torch.equal(m, sample_masks(10, 500, seed=4))
    assert torch.equal(sample_masks(10, 120, seed=3), m[:120]), "a smaller draw is a prefix of a larger one"
    b = sample_masks(12, 4000, seed=0, sampler="bernoulli")
    assert abs(b[1:].float().mean().item() - 0.5) < 0.02


def test_cosine_distance_matches_sklearn():
    from sklearn.metrics.pairwise import cosine_distances

    m = sample_masks(7, 50, seed=1)
    ref = cosine_distances(m.numpy().astype(float), np.ones((1, 7))).ravel()
    np.testing.assert_allclose(cosine_distance(m).numpy(), ref, atol=1e-6)
    assert cosine_distance(torch.tensor([[True, False, False, False]])).item() == pytest.approx(0.5)
    assert exp_kernel(torch.tensor([0.0, 0.25]), 0.25).tolist() == pytest.approx([1.0, np.exp(-1.0)])


@pytest.mark.parametrize("alpha", [1e-8, 1.0, 10.0])
def test_weighted_ridge_matches_sklearn(alpha):
    from sklearn.linear_model import Ridge

    g = torch.Generator().manual_seed(0)
    Z = torch.rand(60, 5, generator=g)
    y = torch.randn(60, 2, generator=g)
    w = torch.rand(60, generator=g)
    coef, b, r2, _ = weighted_ridge(Z, y, w, alpha=alpha)
    ref = Ridge(alpha=alpha).fit(Z.numpy(), y.numpy(), sample_weight=w.numpy())
    np.testing.assert_allclose(coef.T.numpy(), ref.coef_, atol=1e-5)
    np.testing.assert_allclose(b.numpy(), ref.intercept_, atol=1e-5)
    pred = ref.predict(Z.numpy())
    for k in range(2):
        from sklearn.metrics import r2_score

        assert r2[k].item() == pytest.approx(r2_score(y[:, k].numpy(), pred[:, k], sample_weight=w.numpy()), abs=1e-6)


# ----------------------------------------------------------------------------- LIME on known answers


def test_recovers_exact_linear_coefficients():
    w = torch.tensor([3.0, -2.0, 0.5, 0.0, -0.1, 1.5])
    res = lime(linear_game(w), 300, seed=0, alpha=1e-9)
    torch.testing.assert_close(res.weights, w, atol=1e-5, rtol=0)
    assert res.intercept.item() == pytest.approx(0.5, abs=1e-5)
    assert res.fidelity.item() == pytest.approx(1.0, abs=1e-6)
    # with the default ridge penalty the coefficients shrink, but signs and ranking survive
    res = lime(linear_game(w), 1000, seed=1)
    nz = w != 0
    assert torch.equal(torch.sign(res.weights[nz]), torch.sign(w[nz]))
    assert torch.equal(res.weights.argsort(), w.argsort())


def test_tabular_linear_model_coefficients():
    """For f(x) = a.x + c with missing features from a background B, the game is linear in the
    mask with coefficients a_i (x_i - mean(B_i)): LIME must find them."""
    torch.manual_seed(0)
    lin = nn.Linear(8, 1).eval().requires_grad_(False)
    x, bg = torch.randn(8), torch.randn(30, 8)
    game = tabular_game(lambda r: lin(r).squeeze(-1), x, bg)
    expected = lin.weight[0] * (x - bg.mean(0))
    res = lime(game, 400, seed=2, alpha=1e-9)
    torch.testing.assert_close(res.weights, expected, atol=1e-4, rtol=1e-4)


def test_n_features_keeps_the_k_largest():
    w = torch.tensor([3.0, -2.0, 0.5, 0.0, -0.1, 1.5, 0.05])
    res = lime(linear_game(w), 500, seed=0, n_features=3, alpha=1e-6)
    assert set(torch.nonzero(res.weights).flatten().tolist()) == {0, 1, 5}
    torch.testing.assert_close(res.weights[[0, 1, 5]], w[[0, 1, 5]], atol=0.6, rtol=0)


def test_multi_output_game_fits_each_output():
    W = torch.tensor([[1.0, -1.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 1.0]])  # (d, K)
    game = function_game(lambda m: m @ W, 4)
    res = lime(game, 200, seed=0, alpha=1e-9)
    assert res.weights.shape == (4, 2) and res.intercept.shape == (2,)
    torch.testing.assert_close(res.weights, W, atol=1e-5, rtol=0)


def test_deterministic_for_a_seed():
    game = interaction_game(12)
    a, b, c = lime(game, 300, seed=5), lime(game, 300, seed=5), lime(game, 300, seed=6)
    assert torch.equal(a.weights, b.weights)
    assert not torch.equal(a.weights, c.weights)


def test_fidelity_drops_on_an_interaction():
    """On the AND game a linear surrogate over all four coalitions cannot fit: R^2 = 2/3 with
    weights 40 and 40 (the fever/cough lesson). A narrow kernel hides it: the empty coalition gets
    weight exp(-16) and three points are fitted exactly."""
    game = function_game(lambda m: 80.0 * m[:, 0] * m[:, 1], 2)
    wide = lime(game, 4000, seed=0, sampler="bernoulli", kernel_width=1e3, alpha=1e-9)
    assert wide.fidelity.item() == pytest.approx(2 / 3, abs=0.02)
    torch.testing.assert_close(wide.weights, torch.tensor([40.0, 40.0]), atol=2.0, rtol=0)
    narrow = lime(game, 4000, seed=0, sampler="bernoulli", alpha=1e-9)
    assert narrow.fidelity.item() > 0.99
    res = wide
    assert res.weights[0].item() == pytest.approx(res.weights[1].item(), rel=0.3)


# ----------------------------------------------------------------------------- batching


def test_independent_of_batch_size_tabular():
    torch.manual_seed(1)
    mlp = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1)).eval().requires_grad_(False)
    f = lambda r: mlp(r).squeeze(-1)  # noqa: E731
    x, bg = torch.randn(6), torch.randn(5, 6)
    r1 = lime(tabular_game(f, x, bg, batch_size=5), 250, seed=0)  # one mask per chunk
    r2 = lime(tabular_game(f, x, bg, batch_size=100000), 250, seed=0)  # all at once
    torch.testing.assert_close(r1.weights, r2.weights, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r1.fidelity, r2.fidelity, atol=1e-6, rtol=1e-6)


def test_independent_of_batch_size_image():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))
    cnn.eval().requires_grad_(False)
    x = torch.rand(3, 32, 32)
    seg = slic_segments(x, 20)
    r1 = lime(image_game(cnn, x, seg, target=1, batch_size=7), 150, seed=0)
    r2 = lime(image_game(cnn, x, seg, target=1, batch_size=150), 150, seed=0)
    torch.testing.assert_close(r1.weights, r2.weights, atol=1e-4, rtol=1e-4)


def test_sweep_is_one_call_and_equals_single_runs():
    game = interaction_game(10)
    res = lime_sweep(game, [50, 200], seeds=[0, 1, 2], kernel_widths=(0.25, 1.0))
    assert game.n_calls == 3 * 200, "the sweep asks the game once, for the largest size only"
    assert len(res) == 3 * 2 * 2
    for s in (0, 2):
        single = lime(interaction_game(10), 50, seed=s, kernel_width=1.0)
        torch.testing.assert_close(res[(s, 50, 1.0)].weights, single.weights)


def test_slic_segments():
    from course_lib.zoo import load_dataset

    x = load_dataset("scenes", n=1, seed=0).images[0]
    seg = slic_segments(x, 50)
    assert seg.shape == (64, 64) and seg.dtype == torch.long
    d = int(seg.max()) + 1
    assert set(seg.unique().tolist()) == set(range(d)) and 20 <= d <= 80


# ----------------------------------------------------------------------------- captum parity


def test_parity_with_captum_lime():
    """Same samples and same kernel -> captum.attr.Lime with a ridge surrogate gives our weights."""
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime

    torch.manual_seed(3)
    mlp = nn.Sequential(nn.Linear(7, 16), nn.Tanh(), nn.Linear(16, 1)).eval().requires_grad_(False)
    x, base = torch.randn(7), torch.randn(7)
    game = tabular_game(lambda r: mlp(r).squeeze(-1), x, base)
    n, width = 300, 0.5
    ours = lime(game, n, seed=4, kernel_width=width, alpha=1.0)

    masks = iter(sample_masks(7, n, seed=4).long())

    def perturb(_inp, **kw):
        return next(masks)[None]  # (1, d) interpretable sample

    def similarity(_inp, _pert, interp, **kw):  # the exact kernel of LIME on the binary vector
        z = interp.float()
        dist = 1 - torch.sqrt(z.sum() / z.numel())
        return torch.exp(-(dist**2) / width**2)

    explainer = Lime(
        lambda r: mlp(r).squeeze(-1), interpretable_model=SkLearnRidge(alpha=1.0), similarity_func=similarity, perturb_func=perturb
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = explainer.attribute(
            x[None],
            baselines=base[None],
            feature_mask=torch.arange(7)[None],
            n_samples=n,
            perturbations_per_eval=50,
            return_input_shape=False,
        )[0]
    torch.testing.assert_close(ours.weights, theirs.float(), atol=1e-4, rtol=1e-3)


# ----------------------------------------------------------------------------- stability


def test_stability_does_not_fall_as_samples_grow():
    game = interaction_game(16, seed=1)
    res = lime_sweep(game, [30, 200, 2000], seeds=range(8))
    jac = {}
    for n in (30, 200, 2000):
        runs = torch.stack([res[(s, n, 0.25)].weights for s in range(8)])
        jac[n] = mean_pairwise(runs, lambda a, b: topk_jaccard(a, b, 5))
    assert jac[30] <= jac[200] + 0.05 and jac[200] <= jac[2000] + 0.05, jac
    assert jac[2000] > 0.8 and jac[30] < jac[2000]


# ----------------------------------------------------------------------------- the graded assignment a1_lime

# The graded assignment a1_lime is tested in tests/test_a1_grading.py.


def test_lime_explorer_builds_without_a_front_end():
    import matplotlib

    matplotlib.use("Agg")
    from course_lib.widgets import lime_explorer

    game = interaction_game(6)
    runs = lime_sweep(game, [20, 40], seeds=[0, 1])
    calls_before = game.n_calls
    drawn = []
    box = lime_explorer(game, lambda res, ax: drawn.append(res.weights.shape), max_samples=40, n_seeds=3, runs=runs)
    assert drawn == [(6,)], "the first picture is drawn at creation"
    assert game.n_calls == calls_before, "answers from the sweep are reused: no new game call"
    box.children[0].children[2].value = 2  # a seed not seen yet: one call of max_samples
    assert game.n_calls == calls_before + 40 and len(drawn) == 2


def test_kernel_width_relation_to_the_lime_package():
    """The lime package's kernel is sqrt(exp(-d^2 / w^2)): our exp_kernel with sigma = w * sqrt(2)
    (what the lecture and the module docstring say)."""
    import numpy as np
    from lime.lime_image import LimeImageExplainer

    from course_lib.methods.lime import exp_kernel

    d = np.linspace(0, 1, 11)
    theirs = LimeImageExplainer(kernel_width=0.25).base.kernel_fn(d)
    ours = exp_kernel(torch.tensor(d), 0.25 * 2**0.5).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_result_family_names_and_old_aliases():
    from course_lib.methods.results import PerturbationResult

    game = function_game(lambda m: m @ torch.tensor([3.0, -1.0, 0.5]), 3, player_names=["a", "b", "c"])
    res = lime(game, 50, seed=0)
    assert isinstance(res, PerturbationResult) and res.weights is res.values and res.budget == 50
    assert str(res).startswith("LIME") and "a +" in str(res)
    assert "masks" not in repr(res) and "tensor(" not in repr(res)
