"""Prototypes, class entanglement and feature isolation, built on :mod:`featurevis`.

A *prototype* of a class is a regularised class visualisation: an image that maximises the
class logit under transformation robustness and image priors (Tagade & Rumbelow 2023,
"Prototype Generation: Robust Feature Visualisation for Data Independent Interpretability").
The paper *evaluates* prototypes (it does not optimise them with this) by the Spearman rank
correlation, layer by layer, between a prototype's spatially pooled activations and the mean
pooled activations of the class's natural images: a prototype that the network processes like
its natural images ranks the channels in the same order.

- :func:`prototypes`: all classes in one batch, ``n`` per class;
- :func:`pooled_activations`, :func:`spearman`, :func:`spearman_score`: the evaluation;
- :func:`entanglement`: how strongly each class's prototypes drive every class's logit, next to
  :func:`confusion_matrix` and :func:`class_weight_similarity`;
- :func:`isolate`: which region of one input drives class ``a`` *rather than* ``b`` (the
  gradient of the logit difference times the input, pooled over patches).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import checks
from ..device import model_device, to_model
from . import featurevis as fv

__all__ = ["prototypes", "pooled_activations", "spearman", "spearman_score", "entanglement",
           "confusion_matrix", "class_weight_similarity", "isolate", "DEFAULT_LAYERS"]

DEFAULT_LAYERS = ("conv1", "conv2", "conv3", "features")


def prototypes(
    model: nn.Module,
    classes: Sequence[int] | None = None,
    *,
    n: int = 1,
    steps: int = 128,
    tv: float = 10.0,
    l1: float = 5.0,
    diversity: float = 0.0,
    diversity_layer: str = "features",
    seed: int = 0,
    progress: bool = True,
    **render_kwargs,
) -> fv.RenderResult:
    """Prototypes for ``classes`` (default: every class of the model's output), ``n`` each, one batch.

    Objective per class: ``logit_c - tv * TV - l1 * L1 (+ diversity * diversity)`` with the Fourier
    parameterisation and the default transformations of :func:`featurevis.render`. Returns its
    :class:`featurevis.RenderResult`: images (K*n, 3, H, W), class-major.
    """
    what = "prototypes"
    checks.module(model, what=what)
    tv, l1 = checks.positive_number(tv, "tv", what=what, allow_zero=True), checks.positive_number(l1, "l1", what=what, allow_zero=True)
    diversity = checks.real(diversity, "diversity", what=what)
    n_classes = checks.n_outputs(model, torch.full((1, 3, 64, 64), 0.5, device=model_device(model)), what=what)
    if classes is None:
        classes = range(n_classes)
    else:
        classes = checks.target(list(checks.non_empty(classes, "classes", what=what)), n_classes, "classes", what=what).tolist()
    objs = []
    for c in classes:
        o = fv.class_logit(int(c)) - tv * fv.total_variation() - l1 * fv.l1()
        if diversity:
            o = o + diversity * fv.diversity(diversity_layer)
        objs.append(o)
    return fv.render(model, objs, n=n, steps=steps, seed=seed, progress=progress, **render_kwargs)


@torch.no_grad()
def pooled_activations(model: nn.Module, images: torch.Tensor, layers: Sequence[str] = DEFAULT_LAYERS,
                       *, batch_size: int = 100) -> dict[str, torch.Tensor]:
    """Spatially averaged activations ``{layer: (N, C)}`` of ``images``, in chunks of ``batch_size`` (on the CPU)."""
    what = "pooled_activations"
    checks.module(model, what=what)
    checks.images(images, "images", what=what, check_range=False)
    layers = list(checks.non_empty(layers, "layers", what=what)) if not isinstance(layers, str) else [layers]
    batch_size = checks.positive_int(batch_size, "batch_size", what=what)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    for s in range(0, len(images), batch_size):
        with fv.activations(model, layers) as acts:
            model(to_model(images[s : s + batch_size], model))
        for name in layers:
            a = acts[name]
            out[name].append((a.mean((2, 3)) if a.dim() == 4 else a).cpu())
    return {name: torch.cat(v) for name, v in out.items()}


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n along the last axis, ties sharing their average rank (as scipy.stats.rankdata)."""
    x = x.double()
    order = x.argsort(dim=-1, stable=True)
    sorted_x = x.gather(-1, order)
    n = x.shape[-1]
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=x.device).expand_as(x)
    ranks_sorted = torch.empty_like(pos)
    for row in range(x.reshape(-1, n).shape[0]):  # tie groups differ per row
        sx, ps = sorted_x.reshape(-1, n)[row], pos.reshape(-1, n)[row]
        _, inverse, counts = torch.unique_consecutive(sx, return_inverse=True, return_counts=True)
        sums = torch.zeros(len(counts), dtype=torch.float64, device=x.device).index_add_(0, inverse, ps)
        ranks_sorted.reshape(-1, n)[row] = (sums / counts)[inverse]
    ranks = torch.empty_like(ranks_sorted)
    ranks.scatter_(-1, order, ranks_sorted)
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation along the last axis (broadcasting): Pearson correlation of the ranks.
    NaN has no rank: inputs with NaN are refused (they would be ranked as the largest values)."""
    for name, t in (("a", a), ("b", b)):
        checks.tensor(t, name, what="spearman")
        if t.dim() == 0 or t.shape[-1] < 2:
            raise ValueError(f"spearman: {name} needs at least 2 values along its last axis; got shape {tuple(t.shape)}")
        checks.not_meta(t, name, what="spearman")
        checks.finite(t, name, what="spearman")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = torch.broadcast_tensors(ra, rb)
    ra = ra - ra.mean(-1, keepdim=True)
    rb = rb - rb.mean(-1, keepdim=True)
    return ((ra * rb).sum(-1) / (ra.norm(dim=-1) * rb.norm(dim=-1)).clamp_min(1e-12)).float()


def spearman_score(model: nn.Module, images: torch.Tensor, class_images: torch.Tensor,
                   layers: Sequence[str] = DEFAULT_LAYERS) -> torch.Tensor:
    """(N, L): for each image and layer, the Spearman correlation between the image's pooled
    activations and the mean pooled activations of ``class_images`` (the class's natural images)."""
    checks.images(images, "images", what="spearman_score", check_range=False)
    checks.images(class_images, "class_images", what="spearman_score", check_range=False)
    mine = pooled_activations(model, images, layers)
    ref = pooled_activations(model, class_images, layers)
    return torch.stack([spearman(mine[name], ref[name].mean(0, keepdim=True)) for name in layers], 1)


@torch.no_grad()
def entanglement(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    """(K, K): entry ``[i, j]`` is the mean logit of class ``j`` over the prototypes of class ``i``
    (``labels`` says which class each image is a prototype of). One batched forward pass.
    Large off-diagonal entries mean class i's prototype also looks like class j to the model."""
    what = "entanglement"
    checks.module(model, what=what)
    checks.images(images, "images", what=what, check_range=False)
    logits = model(to_model(images, model)).cpu()  # (N, K)
    k = logits.shape[1] if n_classes is None else checks.positive_int(n_classes, "n_classes", what=what)
    labels = _labels(labels, k, len(images), what)
    total = torch.zeros(k, logits.shape[1], dtype=logits.dtype).index_add_(0, labels, logits)
    return total / torch.bincount(labels, minlength=k).clamp_min(1)[:, None]


@torch.no_grad()
def confusion_matrix(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 100) -> torch.Tensor:
    """(K, K) counts: row = true class, column = predicted class."""
    what = "confusion_matrix"
    checks.module(model, what=what)
    checks.images(images, "images", what=what, check_range=False)
    batch_size = checks.positive_int(batch_size, "batch_size", what=what)
    labels = _labels(labels, checks.n_outputs(model, to_model(images[:1], model), what=what), len(images), what)
    preds = torch.cat([model(to_model(images[s : s + batch_size], model)).argmax(1).cpu() for s in range(0, len(images), batch_size)])
    k = int(max(preds.max(), labels.max())) + 1
    return torch.bincount(labels * k + preds, minlength=k * k).view(k, k)


def _labels(labels, k: int, n: int, what: str) -> torch.Tensor:
    """One class index per image, (n,) long on the CPU, checked against the ``k`` classes."""
    t = checks.target(labels, k, "labels", what=what, n=n)
    if isinstance(t, int) or t.numel() != n:
        raise ValueError(f"{what}: labels must hold one class index per image ({n}); got {_count(labels)}")
    return t.cpu().long()


def _count(labels) -> str:
    return f"shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else repr(labels)[:40]


def class_weight_similarity(linear: nn.Linear) -> torch.Tensor:
    """(K, K) cosine similarity between the rows (class weight vectors) of the final linear layer."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"class_weight_similarity: linear must be the model's final nn.Linear (e.g. model.fc); "
                        f"got {type(linear).__name__}")
    w = torch.nn.functional.normalize(linear.weight.detach().cpu(), dim=1)
    return w @ w.T


def isolate(model: nn.Module, x: torch.Tensor, a: int, b: int, *, patch: int = 8) -> torch.Tensor:
    """Where ``x`` (B, 3, H, W) drives class ``a`` rather than ``b``: gradient x input of the
    logit difference ``z_a - z_b``, summed over colours and over ``patch`` x ``patch`` squares,
    (B, H/patch, W/patch). Positive: the square pushes towards ``a``; negative: towards ``b``."""
    what = "isolate"
    checks.module(model, what=what)
    checks.images(x, "x", what=what, check_range=False)
    patch = checks.positive_int(patch, "patch", what=what)
    xx = to_model(x.detach(), model)
    k = checks.n_outputs(model, xx[:1], what=what)
    a = checks.target(a, k, "a", what=what, allow_many=False)
    b = checks.target(b, k, "b", what=what, allow_many=False)
    xx = xx.requires_grad_(True)
    with torch.enable_grad():
        logits = model(xx)
        (grad,) = torch.autograd.grad((logits[:, a] - logits[:, b]).sum(), xx)
    # gradient x (input - grey): the first-order change of z_a - z_b from greying out each pixel, with the sign flipped
    contrib = (grad * (xx.detach() - 0.5)).sum(1, keepdim=True)  # (B, 1, H, W)
    return torch.nn.functional.avg_pool2d(contrib, patch)[:, 0].mul(patch * patch).to(x.device)
