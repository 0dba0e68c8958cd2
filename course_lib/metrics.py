"""Metrics for explanations: stability across runs, and agreement with a ground truth.

Stability of a randomised explainer (LIME, KernelSHAP) is measured on R repeated runs
``runs`` (R, d) for the same input:

- :func:`topk_jaccard`: |A ∩ B| / |A ∪ B| of the k most important features of two runs;
- :func:`kendall_tau`: Kendall's rank correlation (tau-b, ties handled) of two attributions;
- :func:`vsi` and :func:`csi`: the Variables and Coefficients Stability Indices of Visani,
  Bagli, Chesani, Poluzzi & Capuzzo (2022, "Statistical stability indices for LIME").
- :func:`mean_pairwise`: any of the pairwise ones averaged over the R(R-1)/2 pairs.

Ground truth: :func:`mask_precision_at_k`, the share of the k top superpixels that lie mostly
on the object. For pixel maps (B, H, W) and object masks (B, H, W):

- :func:`pixel_precision_at_k`: the share of the k highest pixels that lie on the object;
- :func:`pointing_game`: whether the highest pixel lies on the object (Zhang et al., 2018);
- :func:`deletion_curve`, :func:`insertion_curve`: the model's score as the highest pixels are
  removed (inserted) step by step, and the area under the curve (Petsiuk, Das & Saenko, 2018).
  The steps are coalitions of one image game, so the model calls are batched by the games engine.
- :func:`spearman`: Spearman's rank correlation of two maps (the sanity checks of Adebayo et al., 2018).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import checks
from .device import model_device, require_eval
from .games import ImageGames, _check_output, _image_baseline

__all__ = [
    "top_k",
    "topk_jaccard",
    "kendall_tau",
    "mean_pairwise",
    "vsi",
    "csi",
    "mask_precision_at_k",
    "pixel_precision_at_k",
    "pointing_game",
    "spearman",
    "PerturbationCurve",
    "deletion_curve",
    "insertion_curve",
]


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


def mask_precision_at_k(
    attr: torch.Tensor, segments: torch.Tensor, object_mask: torch.Tensor, k: int, *, by_abs: bool = False
) -> float:
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


# ----------------------------------------------------------------------------- pixel maps vs ground truth


def _maps_and_masks(heat, object_mask):
    heat = torch.as_tensor(heat).detach()
    obj = torch.as_tensor(object_mask).bool().to(heat.device)
    if heat.dim() == 2:
        heat, obj = heat[None], obj[None] if obj.dim() == 2 else obj
    if heat.dim() != 3 or obj.shape != heat.shape:
        raise ValueError(
            f"maps and object masks must both be (B, H, W) or (H, W); got {tuple(heat.shape)} and {tuple(obj.shape)}. "
            "Reduce colour channels first, e.g. attr.abs().sum(1)."
        )
    if not torch.isfinite(heat).all():
        raise ValueError("the attribution maps contain NaN or infinite values")
    return heat.float(), obj


def pixel_precision_at_k(heat: torch.Tensor, object_mask: torch.Tensor, k: int) -> torch.Tensor:
    """Share of the k highest pixels of each map that lie on the object: heat (B, H, W) or (H, W),
    object_mask the same shape, bool. Returns (B,) (ties broken by the lower pixel index)."""
    heat, obj = _maps_and_masks(heat, object_mask)
    n = heat[0].numel()
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of pixels {n}; got {k}")
    flat = heat.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]  # (B, k)
    return obj.flatten(1).gather(1, order).float().mean(1)


def pointing_game(heat: torch.Tensor, object_mask: torch.Tensor, *, tolerance: int = 0) -> torch.Tensor:
    """Hit (True) if the highest pixel of the map lies on the object or within ``tolerance`` pixels
    of it (Zhang et al., 2018, use 15 pixels on 224 x 224 images). (B,) bool."""
    heat, obj = _maps_and_masks(heat, object_mask)
    if tolerance > 0:
        k = 2 * tolerance + 1
        obj = torch.nn.functional.max_pool2d(obj[:, None].float(), k, stride=1, padding=tolerance)[:, 0] > 0
    best = heat.flatten(1).argmax(1)  # (B,)
    return obj.flatten(1).gather(1, best[:, None])[:, 0]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two maps of any (equal) shape; ties get their average rank."""
    from scipy.stats import spearmanr

    a = torch.as_tensor(a).detach().flatten().double().cpu().numpy()
    b = torch.as_tensor(b).detach().flatten().double().cpu().numpy()
    if a.size != b.size or a.size < 2:
        raise ValueError(f"spearman: need two maps with the same number (>= 2) of entries; got {a.size} and {b.size}")
    for name, v in (("a", a), ("b", b)):
        if not np.isfinite(v).all():
            raise ValueError(f"spearman: {name} contains {int((~np.isfinite(v)).sum())} NaN or infinite value(s); "
                             "a rank correlation of such maps means nothing. Find where they came from.")
    if a.min() == a.max() or b.min() == b.max():
        return float("nan")
    return float(spearmanr(a, b).statistic)


@dataclass
class PerturbationCurve:
    """The model's score as pixels are removed (deletion) or inserted (insertion) in the order of
    an attribution map. fraction: (S+1,) share of pixels changed; scores: (B, S+1); area: (B,) the
    area under each curve (trapezoid rule, fraction from 0 to 1); budget: model evaluations."""

    fraction: torch.Tensor
    scores: torch.Tensor
    area: torch.Tensor
    budget: int


def _curve(model, x, heat, target, *, n_steps, baseline, output, batch_size, insert) -> PerturbationCurve:
    require_eval(model, "deletion_curve / insertion_curve")
    _check_output(output)
    x = torch.as_tensor(x)
    if x.dim() == 3:
        x = x[None]
    heat = torch.as_tensor(heat).detach()
    if heat.dim() == 2:
        heat = heat[None]
    B, _, H, W = x.shape
    if heat.shape != (B, H, W):
        raise ValueError(f"heat must be (B, H, W) = {(B, H, W)}; got {tuple(heat.shape)}. Reduce channels first, e.g. attr.abs().sum(1).")
    if not torch.isfinite(heat).all():
        raise ValueError("the attribution maps contain NaN or infinite values")
    if not 1 <= n_steps <= H * W:
        raise ValueError(f"steps must be between 1 and the number of pixels {H * W}; got {n_steps}")
    dev = model_device(model)
    x = x.to(dev)
    targets = torch.as_tensor(target).expand(B).to(dev)
    steps = torch.arange(n_steps + 1)
    # a pixel of rank r (0 = highest) belongs to step player floor(r * n_steps / HW): equal-size groups
    order = torch.sort(heat.flatten(1).float().cpu(), dim=1, descending=True, stable=True).indices  # (B, HW)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(H * W).expand(B, -1))
    segs = (rank * n_steps // (H * W)).view(B, H, W).to(dev)  # image b's players
    # what a removed player shows: image_game's baseline for each image and its own segments
    base = torch.stack([_image_baseline(x[b], segs[b], baseline) for b in range(B)])  # (B, C, H, W)
    # game s * B + b is image b with segment map s: here only s == b, with its own baseline (base[s])
    games = ImageGames(model, x, segs, base[:, None], targets, output=output, batch_size=batch_size, desc="curve")
    masks = steps[:, None] <= torch.arange(n_steps)[None, :]  # (S+1, S): row t = players t.. present
    if insert:
        masks = ~masks  # row t = players 0..t-1 present
    rows = (torch.arange(B) * (B + 1)).repeat_interleave(n_steps + 1)  # image-major: game b * B + b
    scores = games(rows, masks.repeat(B, 1)).view(B, n_steps + 1).float().cpu()  # one stream of B (S+1) inputs
    area = ((scores[:, 1:] + scores[:, :-1]) / 2).mean(1)
    return PerturbationCurve(steps.float() / n_steps, scores, area, B * (n_steps + 1))


def deletion_curve(
    model, x, heat, target, *, steps: int = 16, baseline="blur", output: str = "prob", batch_size: int | None = None,
    n_steps: int | None = None,
) -> PerturbationCurve:
    """Deletion (Petsiuk et al., 2018): replace the highest-ranked pixels of ``heat`` (B, H, W) by
    ``baseline`` in ``steps`` equal steps (``n_steps``, the older name, is still accepted) and record the
    target's probability. A map that finds
    what the model needs makes the score drop fast: a LOW area is good. x: (B, C, H, W) in [0, 1].

    The default baseline is a blurred copy: with a constant colour (Petsiuk et al. used 0), a
    few scattered removed pixels already look like noise the model never saw, and on ``scenes``
    a random map then scores as well as the object mask itself."""
    steps = checks.step_count(steps, n_steps, default=16, what="deletion_curve")
    return _curve(model, x, heat, target, n_steps=steps, baseline=baseline, output=output, batch_size=batch_size, insert=False)


def insertion_curve(
    model, x, heat, target, *, steps: int = 16, baseline="blur", output: str = "prob", batch_size: int | None = None,
    n_steps: int | None = None,
) -> PerturbationCurve:
    """Insertion (Petsiuk et al., 2018): start from ``baseline`` (default a blurred copy) and put
    back the highest-ranked pixels first. A HIGH area is good."""
    steps = checks.step_count(steps, n_steps, default=16, what="insertion_curve")
    return _curve(model, x, heat, target, n_steps=steps, baseline=baseline, output=output, batch_size=batch_size, insert=True)
