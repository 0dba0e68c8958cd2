"""LIME (Ribeiro, Singh & Guestrin 2016, "Why should I trust you?"), on any game.

The interpretable representation of an input is a binary vector z' in {0, 1}^d (superpixel,
word or feature present or not); a game turns masks z' into model outputs f(z'). LIME

1. samples masks around the all-ones vector x' = (1, ..., 1)      -> Z  (n, d)
2. asks the game for their outputs, in one call                  -> y  (n,) or (n, K)
3. weights each sample by its proximity to x',
       pi(z') = exp(-D(x', z')^2 / sigma^2),  D = cosine distance between x' and z'
4. fits a weighted ridge regression  y ~ b + z' @ w  in closed form, and reports the
   weighted R^2 of that surrogate as its *fidelity* in the neighbourhood.

With ``n_features=K`` it keeps the K largest |w| and refits on them (the "highest weights"
selection of the ``lime`` package; the paper's K-Lasso picks K by the Lasso path instead).

Explain logits or log-probabilities, not probabilities: a saturated probability barely moves
when features are removed, and what is left is noise (the games default to logits).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..games import Game

__all__ = [
    "LimeResult",
    "lime",
    "lime_sweep",
    "sample_masks",
    "cosine_distance",
    "exp_kernel",
    "weighted_ridge",
    "slic_segments",
]


@dataclass
class LimeResult:
    """What one LIME run returns. Shapes for a game with d players and K outputs (K omitted if 1)."""

    weights: torch.Tensor  # (d,) or (d, K): the surrogate's coefficients (0 for unselected features)
    intercept: torch.Tensor  # () or (K,)
    fidelity: torch.Tensor  # () or (K,): weighted R^2 of the surrogate on the samples
    std_err: torch.Tensor  # like weights: standard errors of the coefficients (for CSI)
    masks: torch.Tensor  # (n, d) bool: the samples
    outputs: torch.Tensor  # (n,) or (n, K): the game's answers
    sample_weights: torch.Tensor  # (n,): the kernel pi(z')

    def top(self, k: int, *, by_abs: bool = True) -> torch.Tensor:
        """Indices of the k most important players (by |weight| unless ``by_abs=False``)."""
        w = self.weights if self.weights.dim() == 1 else self.weights[:, 0]
        return torch.topk(w.abs() if by_abs else w, k).indices


def sample_masks(n_players: int, n_samples: int, *, seed: int = 0, sampler: str = "lime", device=None) -> torch.Tensor:
    """``n_samples`` masks ``(n_samples, n_players)`` bool; the first one is all True (the input itself).

    ``sampler="lime"``: as the ``lime`` package for images and text, draw how many players to
    switch off uniformly from 1..d-1, then which ones uniformly. The first n rows of a draw
    of N > n masks are the draw of n masks (for the same seed). ``"bernoulli"``: every player
    present with probability 1/2 (captum's default). Masks are drawn on the CPU from a
    generator seeded with ``seed``, so they are the same on every device.
    """
    if n_samples < 1 or n_players < 1:
        raise ValueError(f"need n_samples >= 1 and n_players >= 1; got {n_samples}, {n_players}")
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


def cosine_distance(masks: torch.Tensor) -> torch.Tensor:
    """Cosine distance between each mask z' (n, d) and the all-ones x': 1 - sqrt(|z'| / d)."""
    z = masks.float()
    return 1.0 - (z.sum(-1) / z.shape[-1]).sqrt()


def exp_kernel(distance: torch.Tensor, kernel_width: float) -> torch.Tensor:
    """pi = exp(-D^2 / sigma^2), the exponential kernel of the LIME paper."""
    return torch.exp(-(distance**2) / kernel_width**2)


def weighted_ridge(Z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, *, alpha: float = 1.0):
    """Closed-form weighted ridge with an unpenalised intercept (what scikit-learn's
    ``Ridge(alpha).fit(Z, y, sample_weight=w)`` computes).

    Z (n, p), y (n, K), w (n,) -> coef (p, K), intercept (K,), fidelity (K,), std_err (p, K).
    """
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


def _fit(masks, outputs, *, kernel_width, alpha, n_features) -> LimeResult:
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
    return LimeResult(out[0], out[1], out[2], out[3], masks, outputs, pi.to(dtype=dtype, device=outputs.device))


def lime(
    game: Game,
    n_samples: int = 1000,
    *,
    seed: int = 0,
    kernel_width: float = 0.25,
    alpha: float = 1.0,
    n_features: int | None = None,
    sampler: str = "lime",
    progress: bool | None = None,
) -> LimeResult:
    """Explain one input with LIME: ``n_samples`` masks, one call to ``game``, a weighted ridge fit.

    kernel_width: sigma of the exponential kernel on the cosine distance (``lime``'s default
    for images is 0.25); alpha: the ridge penalty (``lime`` uses 1); n_features: keep only the
    K largest coefficients and refit (None: all). Deterministic for a given ``seed``.
    """
    masks = sample_masks(game.n_players, n_samples, seed=seed, sampler=sampler, device=game.device)
    outputs = game(masks, progress=progress)
    return _fit(masks, outputs, kernel_width=kernel_width, alpha=alpha, n_features=n_features)


def lime_sweep(
    game: Game,
    sample_sizes: Sequence[int],
    seeds: Sequence[int],
    *,
    kernel_widths: Sequence[float] = (0.25,),
    alpha: float = 1.0,
    n_features: int | None = None,
    sampler: str = "lime",
    progress: bool | None = None,
) -> dict[tuple[int, int, float], LimeResult]:
    """Many LIME runs for a stability study, with ONE call to the game.

    For each seed, masks are drawn once for the largest sample size; the run with n samples
    uses the first n of them, which are exactly the masks ``lime(game, n, seed=seed)`` draws
    (``sample_masks`` uses one row of randomness per sample). Every kernel width reuses the
    same answers. Returns ``{(seed, n_samples, kernel_width): LimeResult}``.
    """
    sizes = sorted(set(int(n) for n in sample_sizes))
    n_max = sizes[-1]
    all_masks = torch.cat([sample_masks(game.n_players, n_max, seed=s, sampler=sampler, device=game.device) for s in seeds])
    outputs = game(all_masks, progress=progress)  # (len(seeds) * n_max, ...)
    results = {}
    for i, s in enumerate(seeds):
        m, y = all_masks[i * n_max : (i + 1) * n_max], outputs[i * n_max : (i + 1) * n_max]
        for n in sizes:
            for kw in kernel_widths:
                results[(s, n, kw)] = _fit(m[:n], y[:n], kernel_width=kw, alpha=alpha, n_features=n_features)
    return results


def slic_segments(x: torch.Tensor, n_segments: int = 50, *, compactness: float = 10.0, sigma: float = 1.0, seed: int = 0) -> torch.Tensor:
    """SLIC superpixels (Achanta et al. 2012, scikit-image) of one image x (3, H, W) in [0, 1] -> (H, W) long labels 0..d-1."""
    from skimage.segmentation import slic

    img = x.detach().float().cpu().permute(1, 2, 0).numpy()  # (H, W, 3)
    seg = slic(img, n_segments=n_segments, compactness=compactness, sigma=sigma, start_label=0)
    seg = torch.as_tensor(seg, dtype=torch.long)
    _, seg = torch.unique(seg, return_inverse=True)
    return seg.to(x.device)
