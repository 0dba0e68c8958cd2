"""LIME (Ribeiro, Singh & Guestrin 2016, "Why should I trust you?"), on any game.

The interpretable representation of an input is a binary vector z' in {0, 1}^d (superpixel,
word or feature present or not); a game turns masks z' into model outputs f(z'). This LIME

1. samples masks around the all-ones vector x' = (1, ..., 1)      -> Z  (n, d)
2. asks the game for their outputs, in one call                  -> y  (n,) or (n, K)
3. weights each sample by its proximity to x',
       pi(z') = exp(-D(x', z')^2 / sigma^2),  D = cosine distance between x' and z'
4. fits a weighted ridge regression  y ~ b + z' @ w  on all d features in closed form, and
   reports the weighted R^2 of that surrogate as its *fidelity* in the neighbourhood.

How this differs from the ``lime`` package (lime 0.2.0.1, checked against its source):

- Sampling. ``sampler="lime"`` draws how many players to switch off uniformly from 1..d-1 and
  then which ones: it never draws the empty coalition. ``lime_text`` draws the number of
  removed words from 1..d (the empty text is possible there); ``lime_image`` switches every
  superpixel off with probability 1/2, independently (our ``sampler="bernoulli"``).
  ``LimeTabularExplainer`` does not remove features at all: by default it discretises each
  feature into training quartiles, draws bins with their training frequencies and records
  "same bin as x" (0/1); without discretisation it draws rows from normal distributions with
  the training means and standard deviations. It weights samples by the *Euclidean* distance
  of the standardised rows, with width 0.75 * sqrt(d). What :func:`~course_lib.games.tabular_game`
  builds (missing features taken from background rows) is KernelSHAP's sampling instead.
- Kernel. The package's kernel is ``sqrt(exp(-D^2 / w^2))`` = ``exp(-D^2 / (sqrt(2) w)^2)``:
  its ``kernel_width=0.25`` for images is our ``kernel_width = 0.25 * sqrt(2)`` (ours is the
  sigma of the paper's formula). ``lime_text`` uses the cosine distance times 100 with width 25,
  which is the same kernel as width 0.25 on the plain cosine distance.
- Feature selection. The package's ``feature_selection="auto"`` uses forward selection when at
  most 6 features are asked for, else "highest weights" (a ridge fit with alpha 0.01 on all
  features, keep the ``num_features`` largest |coefficients|); then it refits ``Ridge(alpha=1)``
  on the kept ones. ``lime_image`` asks for ``num_features=100000`` by default, so it keeps all
  superpixels; ``lime_text`` and ``lime_tabular`` ask for 10. Here ``n_features=K`` is the
  "highest weights" rule and ``None`` (default) keeps all features; the paper's K-Lasso picks
  K features along the Lasso path instead.

Explain logits or log-probabilities, not probabilities: a saturated probability barely moves
when features are removed, and what is left is noise (the games default to logits).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from .. import checks
from ..games import (
    Game,
    require_finite,
    slic_segments,  # noqa: F401  (moved to games with the other segmentation helpers)
)
from ._checks import game as check_game
from .results import PerturbationResult

__all__ = [
    "LimeResult",
    "lime",
    "lime_sweep",
    "fit_surrogate",
    "sample_masks",
    "cosine_distance",
    "exp_kernel",
    "weighted_ridge",
    "slic_segments",
]


@dataclass(kw_only=True, repr=False)
class LimeResult(PerturbationResult):
    """What one LIME run returns. Shapes for a game with d players and K outputs (K omitted if 1).

    ``values`` (d,) or (d, K): the surrogate's coefficients (0 for unselected features; also
    available as ``weights``); ``budget``: the number of samples (masks the game answered).
    """

    intercept: torch.Tensor  # () or (K,)
    fidelity: torch.Tensor  # () or (K,): weighted R^2 of the surrogate on the samples
    std_err: torch.Tensor = field(repr=False)  # like values: standard errors of the coefficients (for CSI)
    masks: torch.Tensor = field(repr=False)  # (n, d) bool: the samples
    outputs: torch.Tensor = field(repr=False)  # (n,) or (n, K): the game's answers
    sample_weights: torch.Tensor = field(repr=False)  # (n,): the kernel pi(z')

    @property
    def weights(self) -> torch.Tensor:
        """The surrogate's coefficients: the same tensor as ``values`` (the name LIME's paper uses)."""
        return self.values


Sampler = Literal["lime", "bernoulli"]


def sample_masks(n_players: int, n_samples: int, *, seed: int = 0, sampler: Sampler = "lime", device=None) -> torch.Tensor:
    """``n_samples`` masks ``(n_samples, n_players)`` bool; the first one is all True (the input itself).

    ``sampler="lime"``: draw how many players to switch off uniformly from 1..d-1, then which
    ones uniformly (close to ``lime_text``, which draws 1..d; this sampler never draws the
    empty coalition). ``"bernoulli"``: every player present with probability 1/2, independently
    (what ``lime_image`` and captum's ``Lime`` do). The first n rows of a draw of N > n masks are
    the draw of n masks (for the same seed). Masks are drawn on the CPU from a generator seeded
    with ``seed``, so they are the same on every device.
    """
    n_players = checks.positive_int(n_players, "n_players", what="sample_masks")
    n_samples = checks.positive_int(n_samples, "n_samples", what="sample_masks")
    checks.choice(sampler, ("lime", "bernoulli"), "sampler", what="sample_masks")
    g = torch.Generator().manual_seed(int(seed))
    n, d = n_samples - 1, n_players
    if sampler == "lime":
        u = torch.rand(n, d + 1, generator=g)  # one row of randomness per sample: the first n rows
        n_off = 1 + (u[:, :1] * max(1, d - 1)).long().clamp_max(max(1, d - 1) - 1)  # (n, 1) in 1..d-1
        rank = u[:, 1:].argsort(1).argsort(1)  # (n, d) a random permutation per row
        masks = rank >= n_off  # exactly n_off players off per row (for d >= 2)
    elif sampler == "bernoulli":
        masks = torch.rand(n, d, generator=g) < 0.5
    else:
        raise ValueError(f"sampler must be 'lime' or 'bernoulli'; got {sampler!r}")
    masks = torch.cat([torch.ones(1, d, dtype=torch.bool), masks])
    return masks.to(device) if device is not None else masks


def _check_masks(masks, what: str, name: str = "masks") -> torch.Tensor:
    """Coalitions (n, d): bool (or 0/1) with n >= 1 samples of d >= 1 players, on a real device."""
    checks.tensor(masks, name, what=what)
    if masks.dim() != 2:
        raise ValueError(f"{what}: {name} must be coalitions (n, d), one row per sample; got shape {tuple(masks.shape)}"
                         + (f". For one coalition use {name}[None]." if masks.dim() == 1 else ""))
    if masks.shape[0] == 0 or masks.shape[1] == 0:
        raise ValueError(f"{what}: {name} has shape {tuple(masks.shape)}; it needs at least one sample and one player")
    checks.not_meta(masks, name, what=what)
    if masks.dtype != torch.bool and not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError(f"{what}: {name} must be bool (True = present) or 0/1; got other values of dtype {masks.dtype}")
    return masks


def cosine_distance(masks: torch.Tensor) -> torch.Tensor:
    """Cosine distance between each mask z' (n, d) and the all-ones x': 1 - sqrt(|z'| / d)."""
    z = _check_masks(masks, "cosine_distance").float()
    return 1.0 - (z.sum(-1) / z.shape[-1]).sqrt()


def exp_kernel(distance: torch.Tensor, kernel_width: float) -> torch.Tensor:
    """pi = exp(-D^2 / sigma^2), the exponential kernel of the LIME paper. (The ``lime`` package
    uses sqrt(exp(-D^2 / sigma^2)), i.e. this kernel with sigma * sqrt(2).)"""
    checks.values(distance, "distance", what="exp_kernel")
    checks.positive_number(kernel_width, "kernel_width", what="exp_kernel")
    return torch.exp(-(distance**2) / kernel_width**2)


def weighted_ridge(Z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, *, alpha: float = 1.0):
    """Closed-form weighted ridge with an unpenalised intercept (what scikit-learn's
    ``Ridge(alpha).fit(Z, y, sample_weight=w)`` computes).

    Z (n, p), y (n, K), w (n,) -> coef (p, K), intercept (K,), fidelity (K,), std_err (p, K).
    """
    what = "weighted_ridge"

    def numbers(t, name, dims, shape):  # bool and integer tensors (0/1 masks, counts) are numbers too
        checks.tensor(t, name, what=what)
        checks.not_meta(t, name, what=what)
        return checks.values(t if t.is_floating_point() else t.double(), name, what=what, dims=dims, shape=shape)

    Z, y, w = numbers(Z, "Z", 2, "(n, p)"), numbers(y, "y", (1, 2), "(n, K)"), numbers(w, "w", 1, "(n,)")
    if not Z.shape[0] == y.shape[0] == w.shape[0]:
        raise ValueError(f"{what}: Z {tuple(Z.shape)}, y {tuple(y.shape)} and w {tuple(w.shape)} must have the same n rows")
    if bool((w < 0).any()) or not bool((w > 0).any()):
        raise ValueError(f"{what}: the sample weights w must be >= 0 and not all 0")
    checks.positive_number(alpha, "alpha", what=what, allow_zero=True)
    Z, y, w = Z.double(), y.double(), w.double()
    sw = w.sum()
    z_mean = (w @ Z) / sw  # (p,)
    y_mean = (w @ y) / sw  # (K,)
    Zc, yc = Z - z_mean, y - y_mean
    A = Zc.T @ (w[:, None] * Zc) + alpha * torch.eye(Z.shape[1], dtype=Z.dtype, device=Z.device)  # (p, p)
    A_inv = torch.linalg.inv(A)
    coef = A_inv @ (Zc.T @ (w[:, None] * yc))  # (p, K)
    intercept = y_mean - z_mean @ coef
    resid = yc - Zc @ coef
    ss_res = w @ resid**2  # (K,)
    ss_tot = w @ yc**2
    fidelity = 1.0 - ss_res / ss_tot.clamp_min(1e-300)
    # standard errors as for weighted least squares: Cov(coef) ~ A^-1 * weighted RSS / (n - p - 1)
    n, p = Z.shape
    std_err = (torch.diagonal(A_inv).clamp_min(0)[:, None] * (ss_res / max(1, n - p - 1))[None]).sqrt()
    return coef, intercept, fidelity, std_err


def fit_surrogate(masks: torch.Tensor, outputs: torch.Tensor, *, kernel_width: float = 0.25, alpha: float = 1.0,
                  n_features: int | None = None, player_names: list[str] | None = None) -> LimeResult:
    """LIME's steps 3-4 on samples a game already answered: masks (n, d) bool and outputs
    (n,) or (n, K) -> the weighted ridge surrogate (for re-fitting with another kernel width or
    fewer samples without asking the model again)."""
    _check_masks(masks, "fit_surrogate")
    checks.tensor(outputs, "outputs", what="fit_surrogate")
    if outputs.is_floating_point():  # integer outputs (counts, labels) are fitted as floats
        checks.values(outputs, "outputs", what="fit_surrogate", dims=(1, 2), shape="(n,) or (n, K)")
    checks.not_meta(outputs, "outputs", what="fit_surrogate")
    if masks.dim() != 2 or outputs.dim() not in (1, 2) or outputs.shape[0] != masks.shape[0]:
        raise ValueError(f"fit_surrogate: masks must be (n, d) and outputs (n,) or (n, K) with the same n; "
                         f"got {tuple(masks.shape)} and {tuple(outputs.shape)}")
    if masks.shape[0] < 2:
        raise ValueError(f"fit_surrogate: needs at least 2 samples (better: more than d + 1 = {masks.shape[1] + 1}); "
                         f"got {masks.shape[0]}")
    _check_fit(kernel_width, alpha, n_features, masks.shape[1], "fit_surrogate")
    require_finite(outputs, "the game's outputs")
    squeeze = outputs.dim() == 1
    y = outputs[:, None] if squeeze else outputs  # (n, K)
    pi = exp_kernel(cosine_distance(masks), kernel_width)  # (n,)
    fit_device = torch.device("cpu") if y.device.type == "mps" else y.device  # mps has no float64
    y, Z, pi = y.to(fit_device), masks.to(fit_device).double(), pi.to(fit_device)
    coef, b, r2, se = weighted_ridge(Z, y, pi, alpha=alpha)
    if n_features is not None and n_features < Z.shape[1]:
        d = Z.shape[1]
        keep = torch.topk(coef.abs().sum(1), n_features).indices.sort().values  # same features for every output
        c2, b, r2, se2 = weighted_ridge(Z[:, keep], y, pi, alpha=alpha)
        coef = torch.zeros(d, y.shape[1], dtype=c2.dtype, device=c2.device).index_copy_(0, keep, c2)
        se = torch.zeros_like(coef).index_copy_(0, keep, se2)
    dtype = outputs.dtype if outputs.is_floating_point() else torch.float32
    out = [t.to(dtype=dtype, device=outputs.device) for t in (coef, b, r2, se)]
    if squeeze:
        out = [out[0][:, 0], out[1][0], out[2][0], out[3][:, 0]]
    return LimeResult(
        values=out[0], intercept=out[1], fidelity=out[2], std_err=out[3], masks=masks, outputs=outputs,
        sample_weights=pi.to(dtype=dtype, device=outputs.device), budget=int(masks.shape[0]),
        method=f"LIME ({'ridge' if n_features is None else f'{n_features} features'}, sigma={kernel_width:g})",
        player_names=player_names,
    )


def _check_n_samples(n, d: int, what: str, name: str) -> int:
    """At least d + 1 samples: the surrogate has d coefficients and an intercept. With fewer, it fits
    the samples perfectly whatever the model does, and its fidelity says nothing (n=1 gave R^2 = 1)."""
    n = checks.positive_int(n, name, what=what)
    if n < d + 1:
        raise ValueError(f"{what}: {name}={n} is too few samples for a surrogate of {d} features and an intercept; "
                         f"use at least {d + 1} (LIME usually takes hundreds to thousands).")
    return n


def _check_fit(kernel_width, alpha, n_features, d: int, what: str, kernel_name: str = "kernel_width") -> None:
    checks.positive_number(kernel_width, kernel_name, what=what)
    checks.positive_number(alpha, "alpha", what=what, allow_zero=True)
    if n_features is not None:
        checks.positive_int(n_features, "n_features", what=what)


def lime(
    game: Game,
    n_samples: int = 1000,
    *,
    seed: int = 0,
    kernel_width: float = 0.25,
    alpha: float = 1.0,
    n_features: int | None = None,
    sampler: Sampler = "lime",
    progress: bool | None = None,
) -> LimeResult:
    """Explain one input with LIME: ``n_samples`` masks, one call to ``game``, a weighted ridge fit.

    kernel_width: sigma of the exponential kernel on the cosine distance (the ``lime`` package's
    0.25 for images is 0.25 * sqrt(2) here, see the module docstring); alpha: the ridge penalty
    (``lime`` uses 1); n_features: keep only the K largest coefficients and refit (None: all).
    Deterministic for a given ``seed``; tensors come back on the game's device.
    """
    check_game(game, "lime")
    n_samples = _check_n_samples(n_samples, game.n_players, "lime", "n_samples")
    _check_fit(kernel_width, alpha, n_features, game.n_players, "lime")
    checks.choice(sampler, ("lime", "bernoulli"), "sampler", what="lime")
    masks = sample_masks(game.n_players, n_samples, seed=seed, sampler=sampler, device=game.device)
    outputs = game(masks, progress=progress)
    return fit_surrogate(
        masks, outputs, kernel_width=kernel_width, alpha=alpha, n_features=n_features, player_names=game.player_names
    )


def lime_sweep(
    game: Game,
    sample_sizes: Sequence[int],
    seeds: Sequence[int],
    *,
    kernel_widths: Sequence[float] = (0.25,),
    alpha: float = 1.0,
    n_features: int | None = None,
    sampler: Sampler = "lime",
    progress: bool | None = None,
) -> dict[tuple[int, int, float], LimeResult]:
    """Many LIME runs for a stability study, with ONE call to the game.

    For each seed, masks are drawn once for the largest sample size; the run with n samples
    uses the first n of them, which are exactly the masks ``lime(game, n, seed=seed)`` draws
    (``sample_masks`` uses one row of randomness per sample). Every kernel width reuses the
    same answers. Returns ``{(seed, n_samples, kernel_width): LimeResult}``.
    """
    check_game(game, "lime_sweep")
    checks.non_empty(sample_sizes, "sample_sizes", what="lime_sweep")
    seeds = list(checks.non_empty(seeds, "seeds", what="lime_sweep"))
    kernel_widths = checks.non_empty(kernel_widths, "kernel_widths", what="lime_sweep")
    for kw in kernel_widths:
        _check_fit(kw, alpha, n_features, game.n_players, "lime_sweep", kernel_name="kernel_widths")
    checks.choice(sampler, ("lime", "bernoulli"), "sampler", what="lime_sweep")
    sizes = sorted(set(_check_n_samples(n, game.n_players, "lime_sweep", "sample_sizes") for n in sample_sizes))
    n_max = sizes[-1]
    all_masks = torch.cat([sample_masks(game.n_players, n_max, seed=s, sampler=sampler, device=game.device) for s in seeds])
    outputs = game(all_masks, progress=progress)  # (len(seeds) * n_max, ...)
    results = {}
    for i, s in enumerate(seeds):
        m, y = all_masks[i * n_max : (i + 1) * n_max], outputs[i * n_max : (i + 1) * n_max]
        for n in sizes:
            for kw in kernel_widths:
                results[(s, n, kw)] = fit_surrogate(m[:n], y[:n], kernel_width=kw, alpha=alpha, n_features=n_features,
                                          player_names=game.player_names)
    return results
