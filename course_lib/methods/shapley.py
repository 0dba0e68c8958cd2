"""Shapley values and Shapley interactions of a game.

A game ``v`` maps coalitions ``S`` of the ``d`` players to numbers (see
:mod:`course_lib.games`). Everything exact here comes from ONE batched evaluation of all
``2**d`` coalitions followed by the Moebius transform

    m(S) = sum_{T subset of S} (-1)^(|S| - |T|) v(T)          (the "pure" effect of S)

computed by an in-place subset-sum butterfly in ``O(d 2**d)`` (summing over all subsets of
every coalition directly costs ``O(3**d)``). Every index is then a
weighted sum of Moebius coefficients (Grabisch 1997; Fujimoto, Kojadinovic & Marichal 2006):

    Shapley value           phi_i  = sum_{S containing i}      m(S) / |S|
    Shapley interaction     SII_ij = sum_{S containing i, j}   m(S) / (|S| - 1)
    SHAP interaction values Phi_ij = SII_ij / 2 (i != j),   Phi_ii = phi_i - sum_{j != i} Phi_ij
    2-SII (k-SII, k = 2)    main_i = phi_i - 1/2 sum_{j != i} SII_ij,   pair_ij = SII_ij

The sampling estimators (KernelSHAP with paired sampling, permutation sampling) ask the game
for a batch of masks too. Every result says how many coalitions it cost (``budget``).

Coalition ``S`` has index ``sum_{i in S} 2**i`` in the enumeration: bit ``i`` is player ``i``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .. import checks
from ..games import Game, require_finite
from ._checks import game as check_game
from .results import PerturbationResult

__all__ = [
    "ShapleyResult",
    "Interactions",
    "all_masks",
    "moebius",
    "shapley_from_moebius",
    "sii_from_moebius",
    "exact_values",
    "exact_shapley",
    "exact_interactions",
    "kernel_shap",
    "permutation_shapley",
    "shapley_kernel_weights",
]

MAX_EXACT_PLAYERS = 20  # 2**20 coalitions is about a million model evaluations


@dataclass(kw_only=True, repr=False)
class ShapleyResult(PerturbationResult):
    """Shapley values of one game.

    values: (d,) or (d, K); v_empty: v(empty coalition) () or (K,); v_full: v(all players);
    budget: coalitions the game was asked for (model evaluations); method: how it was computed.
    Efficiency: ``values.sum(0) == v_full - v_empty`` (exactly for every method here).
    """

    v_empty: torch.Tensor
    v_full: torch.Tensor


@dataclass(kw_only=True, repr=False)
class Interactions(PerturbationResult):
    """Exact Shapley values and pairwise interactions of one game (all from one enumeration).

    values: (d, ...) Shapley values; sii: (d, d, ...) Shapley interaction
    index (Grabisch & Roubens 1999), zero on the diagonal; shap_interaction: (d, d, ...) SHAP
    interaction values (Lundberg et al. 2020), SII / 2 off the diagonal, main effects on it, rows
    sum to ``values``; ksii_main (d, ...) and ksii_pairs (d, d, ...): 2-SII, the k-SII of Fumagalli
    et al. (2023) (the n-Shapley values of Bordt & von Luxburg 2023) for k = 2, whose
    mains plus pairs (i < j) sum to ``v_full - v_empty``; moebius: (2**d, ...) the Moebius coefficients.
    """

    sii: torch.Tensor = field(repr=False)
    shap_interaction: torch.Tensor = field(repr=False)
    ksii_main: torch.Tensor = field(repr=False)
    ksii_pairs: torch.Tensor = field(repr=False)
    moebius: torch.Tensor = field(repr=False)
    v_empty: torch.Tensor
    v_full: torch.Tensor


# ----------------------------------------------------------------------------- enumeration


def all_masks(d: int, device=None) -> torch.Tensor:
    """Every coalition of ``d`` players: (2**d, d) bool, row ``s`` has bit ``i`` of ``s`` in column ``i``."""
    d = checks.positive_int(d, "d", what="all_masks")
    if d > MAX_EXACT_PLAYERS:
        raise ValueError(
            f"{d} players means 2**{d} = {2**d:,} coalitions; exact enumeration is limited to "
            f"{MAX_EXACT_PLAYERS} players. Use fewer players (bigger superpixels, grouped features) "
            "or a sampling estimator (kernel_shap, permutation_shapley)."
        )
    idx = torch.arange(2**d, device=device)
    return (idx[:, None] >> torch.arange(d, device=device)) & 1 == 1


def _work_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps the alternating Moebius sums exact enough; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def moebius(values: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """Moebius transform of a game given on all coalitions: (2**d, ...) -> (2**d, ...).

    Subset-sum butterfly: for each player i, every coalition containing i subtracts the value
    of the same coalition without i. d passes over the table, no 2**d x 2**d matrix.
    """
    checks.values(values, "values", what="moebius")
    n = values.shape[0]
    d = n.bit_length() - 1
    if n != 2**d:
        raise ValueError(f"moebius needs the values of all 2**d coalitions; got {n} rows")
    if inplace and not values.is_contiguous():
        raise ValueError("moebius(inplace=True) needs a contiguous tensor; pass values.contiguous()")
    m = values if inplace else values.clone(memory_format=torch.contiguous_format)
    rest = m.shape[1:]
    for i in range(d):
        view = m.view(n // 2 ** (i + 1), 2, 2**i, *rest)  # (high bits, bit i, low bits, ...)
        view[:, 1] -= view[:, 0]
    return m


def _check_table(m, masks, what: str) -> int:
    """The number of players d of a table ``m`` (2**d, ...) of Moebius dividends (and of its ``masks``)."""
    checks.values(m, "m", what=what)
    n = m.shape[0]
    d = n.bit_length() - 1
    if n != 2**d or d < 1:
        raise ValueError(f"{what}: m must hold the dividends of all 2**d coalitions (d >= 1), one row each; got {n} rows")
    if masks is not None:
        checks.tensor(masks, "masks", what=what)
        if tuple(masks.shape) != (n, d):
            raise ValueError(f"{what}: masks must be the ({n}, {d}) coalitions m was computed on; got shape {tuple(masks.shape)}")
    return d


def shapley_from_moebius(m: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """phi_i = sum_{S containing i} m(S) / |S|: (2**d, ...) -> (d, ...).

    ``m``: the Moebius transform of a game on all 2**d coalitions (:func:`moebius`).

    One matrix product of the transposed mask table with the size-scaled dividends; pass the
    ``masks`` (2**d, d) the game was evaluated on to save building them again.
    """
    d = _check_table(m, masks, "shapley_from_moebius")
    n = m.shape[0]
    if masks is None:
        masks = all_masks(d, m.device)
    masks = masks.to(m.dtype)  # (2**d, d)
    w = m.reshape(n, -1) / masks.sum(1).clamp_min(1)[:, None]  # (2**d, K); row 0 has no members
    return (masks.T @ w).reshape(d, *m.shape[1:])


def sii_from_moebius(m: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """SII_ij = sum_{S containing i and j} m(S) / (|S| - 1), zero diagonal: (2**d, ...) -> (d, d, ...)."""
    d = _check_table(m, masks, "sii_from_moebius")
    if masks is None:
        masks = all_masks(d, m.device)
    masks = masks.to(m.dtype)  # (2**d, d)
    size = masks.sum(1)
    flat = m.reshape(m.shape[0], -1)  # (2**d, K)
    w = torch.where((size >= 2)[:, None], flat / (size - 1).clamp_min(1)[:, None], torch.zeros_like(flat))
    sii = torch.einsum("si,sj,sk->ijk", masks, masks, w)  # (d, d, K)
    sii.diagonal(dim1=0, dim2=1).zero_()
    return sii.reshape(d, d, *m.shape[1:])


def exact_values(game: Game) -> torch.Tensor:
    """The game on every coalition, in one call: (2**d, ...) in the game's output dtype."""
    check_game(game, "exact_values")
    return game(all_masks(game.n_players, game.device))


def _enumerate(game: Game):
    """All 2**d masks, the game on them (one call), their Moebius transform, and the calls spent."""
    check_game(game, "exact Shapley values")
    before = game.n_calls
    masks = all_masks(game.n_players, game.device)
    v = game(masks)
    require_finite(v, "the game's outputs")
    dtype = _work_dtype(v.device)
    m = moebius(v.to(dtype, copy=True), inplace=True)
    return masks, v.to(dtype), m, game.n_calls - before


def exact_shapley(game: Game) -> ShapleyResult:
    """Exact Shapley values from one batched evaluation of all 2**d coalitions."""
    masks, v, m, spent = _enumerate(game)
    phi = shapley_from_moebius(m, masks)
    return ShapleyResult(values=phi, v_empty=v[0], v_full=v[-1], budget=spent, method="exact", player_names=game.player_names)


def exact_interactions(game: Game) -> Interactions:
    """Exact Shapley values, SII, SHAP interaction values and 2-SII from one enumeration."""
    masks, v, m, spent = _enumerate(game)
    phi = shapley_from_moebius(m, masks)  # (d, ...)
    sii = sii_from_moebius(m, masks)  # (d, d, ...)
    half = sii / 2
    shap_iv = half.clone()
    diag = shap_iv.diagonal(dim1=0, dim2=1)  # (..., d): view into shap_iv
    diag.copy_(torch.movedim(phi - half.sum(1), 0, -1))
    ksii_main = phi - half.sum(1)  # Bernoulli weight B_1 = -1/2 on each pair
    return Interactions(values=phi, sii=sii, shap_interaction=shap_iv, ksii_main=ksii_main, ksii_pairs=sii.clone(),
                        moebius=m, v_empty=v[0], v_full=v[-1], budget=spent, method="exact (all coalitions)",
                        player_names=game.player_names)


# ----------------------------------------------------------------------------- KernelSHAP


def shapley_kernel_weights(d: int, sizes: torch.Tensor) -> torch.Tensor:
    """Shapley kernel (Lundberg & Lee 2017): (d - 1) / (C(d, s) s (d - s)); infinite at s = 0 and d."""
    d = checks.positive_int(d, "d", what="shapley_kernel_weights", minimum=2)
    sizes = checks.integers(sizes, "sizes", what="shapley_kernel_weights", low=1, high=d, kind="coalition size")
    s = sizes.to(torch.float64)
    logc = torch.lgamma(torch.tensor(d + 1.0, dtype=torch.float64)) - torch.lgamma(s + 1) - torch.lgamma(d - s + 1)
    return (d - 1) / (torch.exp(logc) * s * (d - s))


def _constrained_wls(Z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """argmin_phi sum_k w_k (y_k - Z_k phi)^2 subject to sum(phi) = total.

    Z: (M, d) 0/1; y: (M, K); w: (M,); total: (K,). Returns (d, K). Closed form from the
    Lagrangian: phi = A^-1 (b - 1 * (1' A^-1 b - total) / (1' A^-1 1)), A = Z'WZ, b = Z'Wy.
    """
    A = Z.T @ (w[:, None] * Z)  # (d, d)
    b = Z.T @ (w[:, None] * y)  # (d, K)
    ones = torch.ones(Z.shape[1], 1, dtype=Z.dtype, device=Z.device)
    rhs = torch.cat([b, ones], 1)
    try:
        sol = torch.linalg.solve(A, rhs)
    except RuntimeError:  # singular: too few distinct coalitions for d players
        sol = torch.linalg.pinv(A) @ rhs
    Ainv_b, Ainv_1 = sol[:, :-1], sol[:, -1:]
    lam = (Ainv_b.sum(0) - total) / Ainv_1.sum()  # (K,)
    return Ainv_b - Ainv_1 * lam[None, :]


def kernel_shap(game: Game, budget: int, *, seed: int = 0, paired: bool = True) -> ShapleyResult:
    """KernelSHAP (Lundberg & Lee 2017): Shapley values as a weighted linear regression.

    The empty and the full coalition enter as a hard constraint (efficiency); they are the
    two coalitions with infinite kernel weight. If ``budget >= 2**d`` every coalition is used
    with its kernel weight and the answer is exact. Otherwise ``budget - 2`` coalitions are
    drawn with probability proportional to the kernel (sizes s with p(s) ~ 1/(s (d - s)), then a
    uniformly random set of that size) and weighted equally; with ``paired=True`` each draw
    comes with its complement (Covert & Lee 2021), which cancels much of the noise.
    """
    check_game(game, "kernel_shap")
    budget = checks.positive_int(budget, "budget", what="kernel_shap")
    d = game.n_players
    if d < 2:
        return exact_shapley(game)
    dev = game.device
    before = game.n_calls
    if budget < 4:
        raise ValueError(f"kernel_shap needs a budget of at least 4 coalitions (empty, full and one pair); got {budget}")
    if d <= MAX_EXACT_PLAYERS and budget >= 2**d:
        masks = all_masks(d, dev)  # empty first, full last
        v = game(masks)
        inner = masks[1:-1]
        w = shapley_kernel_weights(d, inner.sum(1).cpu()).to(dev)
        method = "kernel (all coalitions)"
    else:
        g = torch.Generator().manual_seed(seed)
        n_draw = budget - 2
        n_base = n_draw // 2 if paired else n_draw
        sizes = torch.arange(1, d)
        p = 1.0 / (sizes * (d - sizes)).double()
        s = sizes[torch.multinomial(p / p.sum(), n_base, replacement=True, generator=g)]  # (n_base,)
        ranks = torch.rand(n_base, d, generator=g).argsort(1).argsort(1)  # a random permutation per row
        inner = ranks < s[:, None]  # (n_base, d): a uniform random set of size s
        if paired:
            inner = torch.cat([inner, ~inner], 0)
        empty_full = torch.stack([torch.zeros(d, dtype=torch.bool), torch.ones(d, dtype=torch.bool)])
        masks = torch.cat([empty_full[:1], inner, empty_full[1:]], 0).to(dev)
        v = game(masks)
        inner = masks[1:-1]
        w = torch.ones(inner.shape[0], dtype=torch.float64, device=dev)
        method = f"kernel ({'paired ' if paired else ''}sampling)"
    require_finite(v, "the game's outputs")
    dtype = _work_dtype(v.device)
    v = v.to(dtype)
    flat = v.reshape(v.shape[0], -1)  # (M, K)
    v0, v1 = flat[0], flat[-1]
    phi = _constrained_wls(inner.to(dtype), flat[1:-1] - v0, w.to(dtype), v1 - v0)  # (d, K)
    return ShapleyResult(values=phi.reshape(d, *v.shape[1:]), v_empty=v[0], v_full=v[-1], budget=game.n_calls - before,
                         method=method, player_names=game.player_names)


# ----------------------------------------------------------------------------- permutations


def permutation_shapley(game: Game, budget: int, *, seed: int = 0, antithetic: bool = True) -> ShapleyResult:
    """Permutation sampling (Castro, Gomez & Tejada 2009): average marginal contributions.

    Each permutation adds the players one by one; player i gets v(before i and i) - v(before i).
    One permutation costs d - 1 coalitions (the empty and full ones are shared), so
    ``(budget - 2) // (d - 1)`` permutations fit. ``antithetic=True`` pairs each permutation
    with its reverse. All coalitions go to the game in one call. Efficiency holds exactly.
    """
    check_game(game, "permutation_shapley")
    budget = checks.positive_int(budget, "budget", what="permutation_shapley")
    d = game.n_players
    dev = game.device
    before = game.n_calls
    if d < 2:
        return exact_shapley(game)
    n_perm = (budget - 2) // (d - 1)
    if n_perm < 1:
        raise ValueError(f"permutation_shapley needs a budget of at least {d + 1} coalitions for {d} players; got {budget}")
    g = torch.Generator().manual_seed(seed)
    n_base = math.ceil(n_perm / 2) if antithetic else n_perm
    perms = torch.rand(n_base, d, generator=g).argsort(1)  # (P, d) order in which players join
    if antithetic:
        perms = torch.cat([perms, perms.flip(1)], 0)[:n_perm] if n_perm > 1 else perms[:1]
    P = perms.shape[0]
    position = perms.argsort(1)  # (P, d): when each player joins
    steps = torch.arange(1, d)  # prefixes of length 1 .. d-1
    prefix = position[:, None, :] < steps[None, :, None]  # (P, d-1, d)
    empty_full = torch.stack([torch.zeros(d, dtype=torch.bool), torch.ones(d, dtype=torch.bool)])
    masks = torch.cat([empty_full[:1], prefix.reshape(-1, d), empty_full[1:]], 0).to(dev)
    v = game(masks)
    require_finite(v, "the game's outputs")
    dtype = _work_dtype(v.device)
    flat = v.to(dtype).reshape(v.shape[0], -1)  # (M, K)
    K = flat.shape[1]
    chain = torch.cat([flat[:1].expand(P, 1, K), flat[1:-1].reshape(P, d - 1, K), flat[-1:].expand(P, 1, K)], 1)  # (P, d+1, K)
    gains = chain[:, 1:] - chain[:, :-1]  # (P, d, K): gain of the t-th player to join
    phi = torch.zeros(P, d, K, dtype=dtype, device=dev)
    phi.scatter_(1, perms.to(dev)[:, :, None].expand(P, d, K), gains)
    phi = phi.mean(0)
    return ShapleyResult(values=phi.reshape(d, *v.shape[1:]), v_empty=v[0].to(dtype), v_full=v[-1].to(dtype),
                         budget=game.n_calls - before, method=f"permutation ({P} permutations)", player_names=game.player_names)
