"""Gradient attributions: thin wrappers over captum (Kokhlikyan et al., 2020).

captum already does these well; the wrappers only add what the course needs everywhere:
the model must be in eval mode, inputs go to the model's device, targets may be one class
for the whole batch or one per image, and Grad-CAM can name its layer by a dotted name.

    saliency(model, x, target)                       # |d logit / d x|   (Simonyan et al., 2014)
    integrated_gradients(model, x, target, baseline)  # (Sundararajan et al., 2017)
    grad_cam(model, x, target, layer="features")      # (Selvaraju et al., 2017)
"""
from __future__ import annotations

import torch
from torch import nn

from ..device import model_device, require_eval
from ..hooks import get_module


def _prepare(model: nn.Module, x: torch.Tensor, what: str) -> torch.Tensor:
    require_eval(model, what)
    if x.dim() < 2:
        raise ValueError(f"{what} takes a batch (B, ...); got shape {tuple(x.shape)}. Use x[None] for one input.")
    # requires_grad up front: captum warns (on stderr, fatal in a graded cell) when it must set it itself
    return x.detach().to(model_device(model)).requires_grad_(True)


def saliency(model: nn.Module, x: torch.Tensor, target, *, absolute: bool = True) -> torch.Tensor:
    """Gradient of the target logit with respect to the input, (B, ...) like ``x``."""
    from captum.attr import Saliency

    x = _prepare(model, x, "saliency")
    return Saliency(model).attribute(x, target=target, abs=absolute)


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target,
    baseline: torch.Tensor | float = 0.0,
    *,
    n_steps: int = 64,
    batch_size: int | None = 256,
    return_delta: bool = False,
):
    """Integrated gradients along the straight line from ``baseline`` to ``x``.

    Completeness: the attributions of one input sum to f(x) - f(baseline) up to the
    quadrature error, which ``return_delta=True`` reports per input.
    """
    from captum.attr import IntegratedGradients

    x = _prepare(model, x, "integrated_gradients")
    base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    base = base.expand_as(x) if base.dim() == 0 or base.shape == x.shape[1:] else base
    out = IntegratedGradients(model).attribute(
        x, baselines=base, target=target, n_steps=n_steps, internal_batch_size=batch_size, return_convergence_delta=return_delta
    )
    return out


def grad_cam(model: nn.Module, x: torch.Tensor, target, *, layer: str = "features", upsample: bool = True) -> torch.Tensor:
    """Grad-CAM at module ``layer``: ReLU(sum_k alpha_k A_k) with alpha_k the spatial mean of
    d logit / d A_k. Returns (B, H, W) at the input's size if ``upsample``, else the layer's size."""
    from captum.attr import LayerAttribution, LayerGradCam

    x = _prepare(model, x, "grad_cam")
    cam = LayerGradCam(model, get_module(model, layer)).attribute(x, target=target, relu_attributions=True)  # (B, 1, h, w)
    if upsample:
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return cam[:, 0]
