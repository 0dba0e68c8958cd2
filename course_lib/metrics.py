"""Metrics for explanations: stability across runs, and agreement with a ground truth.

Stability of a randomised explainer (LIME, KernelSHAP) is measured on R repeated runs
``runs`` (R, d) for the same input:

- :func:`topk_jaccard`: |A ∩ B| / |A ∪ B| of the k most important features of two runs;
- :func:`kendall_tau`: Kendall's rank correlation (tau-b, ties handled) of two attributions;
- :func:`vsi` and :func:`csi`: the Variables and Coefficients Stability Indices of Visani,
  Bagli, Chesani, Poluzzi & Capuzzo (2022, "Statistical stability indices for LIME").
- :func:`mean_pairwise`: any of the pairwise ones averaged over the R(R-1)/2 pairs.

Ground truth: :func:`mask_precision_at_k`, the share of the k top superpixels that lie mostly
on the object.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

import torch

__all__ = ["top_k", "topk_jaccard", "kendall_tau", "mean_pairwise", "vsi", "csi", "mask_precision_at_k"]


def top_k(attr: torch.Tensor, k: int, *, by_abs: bool = True) -> set[int]:
    """The indices of the k largest entries of ``attr`` (d,), by absolute value unless ``by_abs=False``.

    Ties are broken by the lower index, so the result is deterministic.
    """
    attr = torch.as_tensor(attr).detach().flatten().double().cpu()
    if not 1 <= k <= attr.numel():
        raise ValueError(f"k must be between 1 and the number of features {attr.numel()}; got {k}")
    score = attr.abs() if by_abs else attr
    order = sorted(range(attr.numel()), key=lambda i: (-float(score[i]), i))
    return set(order[:k])


def topk_jaccard(a: torch.Tensor, b: torch.Tensor, k: int, *, by_abs: bool = True) -> float:
    """Jaccard index of the top-k feature sets of two attributions: 1 = same set, 0 = disjoint."""
    A, B = top_k(a, k, by_abs=by_abs), top_k(b, k, by_abs=by_abs)
    return len(A & B) / len(A | B)


def kendall_tau(a: torch.Tensor, b: torch.Tensor) -> float:
    """Kendall's tau-b between two attributions (d,): +1 same order, -1 reversed (ties count as in scipy)."""
    a = torch.as_tensor(a).detach().flatten().double().cpu()
    b = torch.as_tensor(b).detach().flatten().double().cpu()
    if a.numel() != b.numel() or a.numel() < 2:
        raise ValueError(f"need two attributions of the same length >= 2; got {a.numel()} and {b.numel()}")
    da = torch.sign(a[:, None] - a[None, :])  # (d, d)
    db = torch.sign(b[:, None] - b[None, :])
    iu = torch.triu_indices(a.numel(), a.numel(), 1)
    da, db = da[iu[0], iu[1]], db[iu[0], iu[1]]
    s = float((da * db).sum())  # concordant - discordant
    n_a, n_b = float((da != 0).sum()), float((db != 0).sum())  # pairs not tied in a, in b
    if n_a == 0 or n_b == 0:
        return float("nan")
    return s / math.sqrt(n_a * n_b)


def mean_pairwise(runs: torch.Tensor, fn: Callable[[torch.Tensor, torch.Tensor], float]) -> float:
    """Mean of ``fn(runs[i], runs[j])`` over all pairs i < j of the R runs (R, d)."""
    runs = torch.as_tensor(runs)
    if runs.shape[0] < 2:
        raise ValueError("need at least two runs to compare")
    vals = [fn(runs[i], runs[j]) for i, j in itertools.combinations(range(runs.shape[0]), 2)]
    return float(sum(vals) / len(vals))


def vsi(runs: torch.Tensor, k: int) -> float:
    """Variables Stability Index (Visani et al.), 0..100: over all pairs of runs, the mean share of
    the k selected features (largest |weight|) that both runs select, |A ∩ B| / k, times 100."""
    return 100.0 * mean_pairwise(runs, lambda a, b: len(top_k(a, k) & top_k(b, k)) / k)


def csi(runs: torch.Tensor, std_errs: torch.Tensor, *, z: float = 1.96) -> float:
    """Coefficients Stability Index (Visani et al.), 0..100: over all features and all pairs of
    runs, the share whose confidence intervals coef ± z * std_err overlap, times 100."""
    runs, std_errs = torch.as_tensor(runs).double(), torch.as_tensor(std_errs).double()
    if runs.shape != std_errs.shape or runs.dim() != 2 or runs.shape[0] < 2:
        raise ValueError(f"runs and std_errs must both be (R >= 2, d); got {tuple(runs.shape)}, {tuple(std_errs.shape)}")
    lo, hi = runs - z * std_errs, runs + z * std_errs  # (R, d)
    i, j = torch.triu_indices(runs.shape[0], runs.shape[0], 1)
    overlap = (lo[i] <= hi[j]) & (lo[j] <= hi[i])  # (pairs, d)
    return 100.0 * float(overlap.double().mean())


def mask_precision_at_k(attr: torch.Tensor, segments: torch.Tensor, object_mask: torch.Tensor, k: int, *, by_abs: bool = False) -> float:
    """Share of the k top segments (largest attribution; signed unless ``by_abs``) whose pixels
    are mostly (> 50 %) on the object. attr (d,), segments (H, W) labels 0..d-1, object_mask (H, W) bool."""
    segments = torch.as_tensor(segments).long().cpu()
    obj = torch.as_tensor(object_mask).bool().cpu()
    d = int(segments.max()) + 1
    on = torch.bincount(segments[obj], minlength=d).double()
    size = torch.bincount(segments.flatten(), minlength=d).double().clamp_min(1)
    mostly = (on / size) > 0.5
    picked = top_k(attr, k, by_abs=by_abs)
    return sum(bool(mostly[i]) for i in picked) / k
