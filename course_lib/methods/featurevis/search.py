"""Dataset search (the natural images that score highest on an objective) and image analysis."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ... import checks
from ...device import to_model
from ..results import Result
from .objectives import Objective, _spatial
from .reading import activations, evaluate

# ============================================================================ dataset search

@dataclass(kw_only=True, repr=False)
class SearchResult(Result):
    """What :func:`dataset_search` returns: ``indices`` (k,) into the searched images and their
    ``values`` (k,), best first; ``images`` (k, 3, H, W); with a spatial unit, ``boxes`` (k, 4)
    ``(top, left, bottom, right)`` in pixels around the strongest position and ``patches``
    (k, 3, p, p) cut from the images there."""

    indices: torch.Tensor
    values: torch.Tensor
    images: torch.Tensor = field(repr=False)
    boxes: torch.Tensor | None = field(default=None, repr=False)
    patches: torch.Tensor | None = field(default=None, repr=False)


@torch.no_grad()
def dataset_search(
    model: nn.Module,
    objective: Objective,
    images: torch.Tensor,
    *,
    k: int = 9,
    largest: bool = True,
    region: tuple[str, int] | None = None,
    patch_size: int = 24,
    batch_size: int = 64,
) -> SearchResult:
    """The ``k`` images with the highest (``largest=False``: lowest) objective, by batched passes.

    ``region=(layer, c)`` also locates, in each of them, the position where channel ``c`` of
    ``layer`` is strongest and cuts a ``patch_size`` square of pixels centred there (the
    corresponding position in the input, stride = image size / activation size).
    Ties are broken by the lower index. Results are on ``images``' device.
    """
    checks.module(model, what="dataset_search")
    checks.images(images, "images", what="dataset_search", check_range=False)
    k = checks.positive_int(k, "k", what="dataset_search")
    patch_size = checks.positive_int(patch_size, "patch_size", what="dataset_search")
    if region is not None and patch_size > min(images.shape[-2:]):  # the patch is cut only for a region
        raise ValueError(f"dataset_search: patch_size={patch_size} is larger than the images {tuple(images.shape[-2:])}")
    if not 1 <= k <= len(images):
        raise ValueError(f"dataset_search: k should be between 1 and the number of images ({len(images)}); got {k}")
    vals = evaluate(model, objective, images, batch_size=batch_size).cpu()  # (N,)
    idx = torch.sort(vals, descending=largest, stable=True).indices[:k]  # stable: ties keep the lower index first
    top = images[idx.to(images.device)]
    res = SearchResult(indices=idx.to(images.device), values=vals[idx].to(images.device), images=top)
    if region is not None:
        layer, c = region
        with activations(model, [layer]) as acts:
            model(to_model(top, model))
        a = _spatial(acts[layer], layer, "region")[:, c]  # (k, h, w)
        h, w = a.shape[1:]
        pos = a.flatten(1).argmax(1)
        H, W = top.shape[2:]
        cy = ((pos // w).float() + 0.5) * (H / h)
        cx = ((pos % w).float() + 0.5) * (W / w)
        half = patch_size / 2
        top_ = (cy - half).round().long().clamp(0, H - patch_size)
        left = (cx - half).round().long().clamp(0, W - patch_size)
        res.boxes = torch.stack([top_, left, top_ + patch_size, left + patch_size], 1).to(images.device)
        res.patches = torch.stack(
            [top[i, :, y : y + patch_size, x : x + patch_size] for i, (y, x) in enumerate(zip(top_.tolist(), left.tolist()))]
        )
    return res


# ============================================================================ analysis

def radial_spectrum(images: torch.Tensor, n_bins: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean power of ``images`` (N, C, H, W) in rings of spatial frequency, without the mean colour.

    Returns ``(freq, power)``, both (n_bins,): ring centres in cycles per pixel (0 to 0.5*sqrt(2))
    and the mean of ``|FFT|^2`` (orthonormal FFT, averaged over images and channels) in each ring.
    Natural images fall off roughly as 1/f^2; noise is flat.
    """
    checks.images(images, "images", what="radial_spectrum", check_range=False)
    n_bins = checks.positive_int(n_bins, "n_bins", what="radial_spectrum")
    x = images - images.mean((2, 3), keepdim=True)
    power = torch.fft.fft2(x, norm="ortho").abs().pow(2).mean((0, 1))  # (H, W)
    h, w = power.shape
    f = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.fftfreq(w)[None] ** 2).sqrt().to(power.device)
    edges = torch.linspace(0, float(f.max()) + 1e-6, n_bins + 1, device=power.device)
    idx = torch.bucketize(f.flatten(), edges[1:-1])  # (H*W,) ring of each frequency
    total = torch.zeros(n_bins, device=power.device, dtype=power.dtype).index_add_(0, idx, power.flatten())
    count = torch.zeros(n_bins, device=power.device, dtype=power.dtype).index_add_(0, idx, torch.ones_like(power.flatten()))
    return (edges[:-1] + edges[1:]) / 2, total / count.clamp_min(1)
