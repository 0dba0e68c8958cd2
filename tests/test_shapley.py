"""Shapley values and interactions: exact toys, axioms, brute-force references, shapiq and shap parity."""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from course_lib import load_dataset, load_model
from course_lib.games import function_game, tabular_game
from course_lib.methods.shapley import (
    all_masks,
    exact_interactions,
    exact_shapley,
    kernel_shap,
    moebius,
    permutation_shapley,
)


# ----------------------------------------------------------------------------- helpers


def table_game(table: torch.Tensor, d: int, **kw):
    """A game given by its value on each coalition index sum_i 2**i [i in S]."""
    powers = 2 ** torch.arange(d)

    def fn(m):  # (B, d) float -> (B, ...)
        return table[(m.long() * powers).sum(1)]

    return function_game(fn, d, **kw)


def random_table(d: int, seed: int, k: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (2**d,) if k is None else (2**d, k)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def value_of(table, S):
    return table[sum(2**i for i in S)]


def brute_shapley(table, d):
    """phi_i = sum_{S without i} |S|! (d-|S|-1)! / d! [v(S + i) - v(S)], by itertools."""
    phi = torch.zeros(d, *table.shape[1:], dtype=torch.float64)
    for i in range(d):
        others = [j for j in range(d) if j != i]
        for r in range(d):
            for S in itertools.combinations(others, r):
                w = math.factorial(r) * math.factorial(d - r - 1) / math.factorial(d)
                phi[i] += w * (value_of(table, S + (i,)) - value_of(table, S))
    return phi


def brute_sii(table, d):
    """SII_ij = sum_{S without i,j} |S|! (d-|S|-2)! / (d-1)! [v(S+ij) - v(S+i) - v(S+j) + v(S)]."""
    sii = torch.zeros(d, d, dtype=torch.float64)
    for i, j in itertools.combinations(range(d), 2):
        others = [k for k in range(d) if k not in (i, j)]
        for r in range(d - 1):
            for S in itertools.combinations(others, r):
                w = math.factorial(r) * math.factorial(d - r - 2) / math.factorial(d - 1)
                delta = value_of(table, S + (i, j)) - value_of(table, S + (i,)) - value_of(table, S + (j,)) + value_of(table, S)
                sii[i, j] = sii[j, i] = sii[i, j] + w * delta
    return sii


def small_mlp(d: int, seed: int, k: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, k))
    if k == 1:
        net = nn.Sequential(net, nn.Flatten(0))
    return net.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- fever / cough


def fever_cough(name):
    bg = load_dataset("fever-cough")["X"]
    return tabular_game(load_model(name), torch.tensor([1.0, 1.0]), bg, feature_names=["fever", "cough"])


def test_fever_cough_a_exact_table():
    r = exact_interactions(fever_cough("fever-cough-a"))
    assert r.v_empty.item() == 20.0 and r.v_full.item() == 80.0
    torch.testing.assert_close(r.values, torch.tensor([30.0, 30.0], dtype=torch.float64))
    torch.testing.assert_close(r.sii, torch.tensor([[0.0, 20.0], [20.0, 0.0]], dtype=torch.float64))
    # SHAP interaction values: interaction 10 off the diagonal, main effects 20 on it
    torch.testing.assert_close(r.shap_interaction, torch.tensor([[20.0, 10.0], [10.0, 20.0]], dtype=torch.float64))
    torch.testing.assert_close(r.ksii_main, torch.tensor([20.0, 20.0], dtype=torch.float64))
    assert r.budget == 4 and r.player_names == ["fever", "cough"]


def test_fever_cough_b_consistency():
    a = exact_shapley(fever_cough("fever-cough-a"))
    b = exact_shapley(fever_cough("fever-cough-b"))
    torch.testing.assert_close(b.values, torch.tensor([30.0, 35.0], dtype=torch.float64))
    assert b.v_empty.item() == 25.0
    assert b.values[1] >= a.values[1]  # cough matters more in B, so its value must not drop


@pytest.mark.parametrize("name", ["fever-cough-a", "fever-cough-b"])
def test_fever_cough_estimators_are_exact_for_two_players(name):
    exact = exact_shapley(fever_cough(name)).values
    torch.testing.assert_close(kernel_shap(fever_cough(name), budget=4).values, exact)
    # two antithetic permutations are both orders of two players
    torch.testing.assert_close(permutation_shapley(fever_cough(name), budget=4).values, exact)


# ----------------------------------------------------------------------------- references and axioms


@pytest.mark.parametrize("d,seed", [(3, 0), (5, 1), (6, 2)])
def test_exact_matches_brute_force_formulas(d, seed):
    table = random_table(d, seed)
    r = exact_interactions(table_game(table, d))
    torch.testing.assert_close(r.values, brute_shapley(table, d))
    torch.testing.assert_close(r.sii, brute_sii(table, d))
    torch.testing.assert_close(r.shap_interaction.sum(1), r.values)  # rows sum to phi
    off = ~torch.eye(d, dtype=torch.bool)
    torch.testing.assert_close(r.shap_interaction[off], r.sii[off] / 2)
    total = r.v_full - r.v_empty
    torch.testing.assert_close(r.ksii_main.sum() + r.ksii_pairs.triu(1).sum(), total)


def test_moebius_inverts_to_the_game():
    d = 4
    table = random_table(d, 3)
    m = moebius(table)
    masks = all_masks(d)
    for s in range(2**d):  # v(S) = sum_{T subset of S} m(T)
        subsets = [t for t in range(2**d) if t & s == t]
        assert torch.isclose(m[subsets].sum(), table[s])
    assert torch.equal(masks[5], torch.tensor([True, False, True, False]))


def axiom_game(d: int, seed: int) -> torch.Tensor:
    """Random game where players 0 and 1 are symmetric and player d-1 is a dummy."""
    t = random_table(d, seed)
    idx = torch.arange(2**d)
    swapped = idx & ~3 | (idx & 1) << 1 | (idx & 2) >> 1
    t = (t + t[swapped]) / 2
    return t[idx & ~(1 << (d - 1))]  # ignore the last player's bit


@pytest.mark.parametrize("method", ["exact", "kernel_full", "kernel_sampled", "permutation"])
@pytest.mark.parametrize("d,seed", [(4, 0), (7, 5)])
def test_axioms_on_random_games(method, d, seed):
    table = axiom_game(d, seed)
    game = table_game(table, d)
    if method == "exact":
        r = exact_shapley(game)
    elif method == "kernel_full":
        r = kernel_shap(game, budget=2**d)
    elif method == "kernel_sampled":
        r = kernel_shap(game, budget=40, seed=seed)
    else:
        r = permutation_shapley(game, budget=2 + 6 * (d - 1), seed=seed)
    # efficiency holds for every estimator here
    torch.testing.assert_close(r.values.sum(), table[-1] - table[0])
    if method != "kernel_sampled":  # dummy: a dummy adds nothing to any coalition
        assert abs(r.values[d - 1].item()) < 1e-12
    if method in ("exact", "kernel_full"):
        torch.testing.assert_close(r.values[0], r.values[1])  # symmetry
        torch.testing.assert_close(r.values, brute_shapley(table, d))


def test_additivity():
    d = 5
    t1, t2 = random_table(d, 10), random_table(d, 11)
    a = exact_interactions(table_game(t1, d))
    b = exact_interactions(table_game(t2, d))
    ab = exact_interactions(table_game(t1 + 2 * t2, d))
    torch.testing.assert_close(ab.values, a.values + 2 * b.values)
    torch.testing.assert_close(ab.sii, a.sii + 2 * b.sii)


def test_multi_output_games_are_per_output():
    d, k = 5, 3
    table = random_table(d, 4, k)
    r = exact_interactions(table_game(table, d))
    assert r.values.shape == (d, k) and r.sii.shape == (d, d, k) and r.shap_interaction.shape == (d, d, k)
    for c in range(k):
        one = exact_interactions(table_game(table[:, c].contiguous(), d))
        torch.testing.assert_close(r.values[:, c], one.values)
        torch.testing.assert_close(r.shap_interaction[..., c], one.shap_interaction)
    ks = kernel_shap(table_game(table, d), budget=2**d)
    torch.testing.assert_close(ks.values, r.values)
    ps = permutation_shapley(table_game(table, d), budget=50, seed=0)
    assert ps.values.shape == (d, k)


# ----------------------------------------------------------------------------- estimators


def test_kernel_shap_exact_at_full_budget_and_converges():
    d = 8
    table = random_table(d, 7)
    exact = exact_shapley(table_game(table, d)).values
    full = kernel_shap(table_game(table, d), budget=2**d)
    torch.testing.assert_close(full.values, exact)
    assert full.budget == 2**d
    err = [float((kernel_shap(table_game(table, d), budget=b, seed=0).values - exact).abs().max()) for b in (20, 2000)]
    assert err[1] < err[0] and err[1] < 0.25 * exact.abs().max()
    perr = [float((permutation_shapley(table_game(table, d), budget=b, seed=0).values - exact).abs().max()) for b in (30, 3000)]
    assert perr[1] < perr[0] and perr[1] < 0.25 * exact.abs().max()


def test_budget_is_what_the_game_was_asked():
    d = 6
    game = table_game(random_table(d, 0), d)
    r = kernel_shap(game, budget=30, seed=1)
    assert r.budget == 30 == game.n_calls
    r = permutation_shapley(game, budget=30, seed=1)  # 2 + 5 * (6 - 1) = 27 fit into 30
    assert r.budget == 27 == game.n_calls - 30
    r = exact_shapley(game)
    assert r.budget == 64


def test_deterministic_for_a_seed():
    d = 7
    table = random_table(d, 9)
    for fn in (kernel_shap, permutation_shapley):
        a = fn(table_game(table, d), budget=60, seed=3).values
        b = fn(table_game(table, d), budget=60, seed=3).values
        c = fn(table_game(table, d), budget=60, seed=4).values
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_independent_of_batch_size():
    d = 7
    model = small_mlp(d, 0)
    x = torch.randn(d)
    bg = torch.randn(12, d)
    results = []
    for bs in (12, 100, 5000):
        game = tabular_game(model, x, bg, batch_size=bs)
        assert game.chunk == max(1, bs // 12)
        results.append((exact_interactions(game), kernel_shap(game, budget=50, seed=0), permutation_shapley(game, budget=50, seed=0)))
    for other in results[1:]:
        for r0, r1 in zip(results[0], other):
            a0 = r0.shap_interaction if hasattr(r0, "sii") else r0.values
            a1 = r1.shap_interaction if hasattr(r1, "sii") else r1.values
            torch.testing.assert_close(a0, a1, atol=1e-5, rtol=1e-5)


def test_too_many_players_says_what_to_do():
    game = function_game(lambda m: m.sum(1), 24)
    with pytest.raises(ValueError, match="sampling estimator"):
        exact_shapley(game)
    assert game.n_calls == 0


# ----------------------------------------------------------------------------- peer libraries


def test_parity_with_shapiq_exact_computer():
    import shapiq
    d = 7
    model = small_mlp(d, 1)
    x = torch.randn(d)
    bg = torch.randn(8, d)
    game = tabular_game(model, x, bg)
    ours = exact_interactions(game)

    def value(coalitions):  # (n, d) 0/1 numpy -> (n,) numpy
        with torch.no_grad():
            return game(torch.as_tensor(np.asarray(coalitions, dtype=bool))).double().numpy()

    ref = shapiq.ExactComputer(game=value, n_players=d)
    sv = ref(index="SV", order=1)
    np.testing.assert_allclose(sv.get_n_order_values(1), ours.values.numpy(), atol=1e-6)
    sii = ref(index="SII", order=2)
    np.testing.assert_allclose(sii.get_n_order_values(2), ours.sii.numpy(), atol=1e-6)
    ksii = ref(index="k-SII", order=2)
    np.testing.assert_allclose(ksii.get_n_order_values(2), ours.ksii_pairs.numpy(), atol=1e-6)
    np.testing.assert_allclose(ksii.get_n_order_values(1), ours.ksii_main.numpy(), atol=1e-6)
    moeb = ref(index="Moebius", order=d)
    np.testing.assert_allclose(moeb.get_n_order_values(2), sii_order2_moebius(ours.moebius, d), atol=1e-6)


def sii_order2_moebius(m, d):
    out = np.zeros((d, d))
    for i, j in itertools.combinations(range(d), 2):
        out[i, j] = out[j, i] = m[(1 << i) | (1 << j)].item()
    return out


def test_parity_with_shap_kernel_explainer_full_budget():
    import shap
    d = 6
    model = small_mlp(d, 2)
    x = torch.randn(d)
    bg = torch.randn(10, d)

    def f(a):
        with torch.no_grad():
            return model(torch.as_tensor(a, dtype=torch.float32)).double().numpy()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = shap.KernelExplainer(f, bg.numpy())
        ref = explainer.shap_values(x.numpy()[None], nsamples=2**d, l1_reg=False, silent=True)
    ref = np.asarray(ref).reshape(-1)
    game = tabular_game(model, x, bg)
    np.testing.assert_allclose(kernel_shap(game, budget=2**d).values.numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(exact_shapley(game).values.numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(float(exact_shapley(game).v_empty), explainer.expected_value, atol=1e-5)


def test_diabetes_mlp_all_ten_features():
    data = load_dataset("diabetes", split="all")
    model = load_model("diabetes-mlp", device="cpu")
    game = tabular_game(model, data["X"][0], data["X"][:50], feature_names=data["feature_names"])
    r = exact_interactions(game)
    assert r.budget == 1024 and r.sii.shape == (10, 10)
    torch.testing.assert_close(r.values.sum(), r.v_full - r.v_empty, atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        pred = model(data["X"][:1]).double()[0]
    torch.testing.assert_close(r.v_full, pred, atol=1e-4, rtol=1e-5)


def test_image_game_results_do_not_depend_on_batch_size():
    from course_lib.games import grid_segments, image_game

    model = load_model("scenes-cnn", device="cpu")
    x = load_dataset("scenes", split="test", n=2, seed=0).images[0]
    segments = grid_segments(64, 64, 32)  # 4 players
    out = []
    for bs in (3, 16):
        game = image_game(model, x, segments, baseline="mean", target=0, batch_size=bs)
        out.append((exact_interactions(game), kernel_shap(game, budget=10, seed=0)))
    torch.testing.assert_close(out[0][0].shap_interaction, out[1][0].shap_interaction, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0][1].values, out[1][1].values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0][0].v_full.float(), model(x[None])[0, 0].double().float(), atol=1e-4, rtol=1e-5)
