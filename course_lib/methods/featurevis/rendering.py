"""render: optimise images, one batch for many objectives, under random transformations."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ... import checks
from ...device import forward_fast, model_device
from ...progress import progress_bar
from ..results import Result
from .objectives import INPUT, LOGITS, Objective
from .params import Fourier, Pixels
from .plan import _plan
from .reading import _forward, activations
from .transforms import _NAMED_TRANSFORMS, DEFAULT_TRANSFORMS, Transform

# ============================================================================ render

@dataclass(kw_only=True, repr=False)
class RenderResult(Result):
    """What :func:`render` returns. ``images`` (K*n, 3, H, W) in [0, 1], objective-major
    (objective k's images are ``images[k*n:(k+1)*n]``); ``values`` (K*n,) each image's objective
    without transformations; ``history`` (steps, K*n) the objective at every step (with the
    random transformations, as the optimiser saw it); ``params`` the optimised parameters."""

    images: torch.Tensor
    values: torch.Tensor
    history: torch.Tensor
    params: torch.Tensor = field(repr=False)
    n_per_objective: int = 1


def _param(param, size) -> Pixels | Fourier:
    if param == "fourier":
        return Fourier(size)
    if param == "pixels":
        return Pixels(size)
    if callable(param) and hasattr(param, "init"):
        return param
    raise ValueError(f"param should be 'fourier', 'pixels' or a Pixels/Fourier instance; got {param!r}")


def _param_dtype(model: nn.Module) -> torch.dtype:
    """The dtype render optimises in: the model's if it is float32 or float64, else float32."""
    dt = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return dt if dt in (torch.float32, torch.float64) else torch.float32


def _same_draws(t: Transform, x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """Apply ``t`` to ``x`` (K*n, C, H, W), objective-major, so that the n images of every objective
    get the same n random draws: the K objectives are folded into the channel axis,
    (n, K*C, H, W), and ``t`` runs once (transformations act on any number of channels)."""
    kn, c, h, w = x.shape
    n = kn // k
    folded = x.reshape(k, n, c, h, w).transpose(0, 1).reshape(n, k * c, h, w)  # (n, K*C, H, W)
    out = t(folded, g)  # (n, K*C, H', W')
    return out.reshape(n, k, c, *out.shape[2:]).transpose(0, 1).contiguous().view(kn, c, *out.shape[2:])  # (K*n, C, H', W')



def render(
    model: nn.Module,
    objectives: Objective | Sequence[Objective],
    *,
    param: str | Pixels | Fourier = "fourier",
    size: int = 64,
    n: int = 1,
    steps: int = 128,
    lr: float = 0.05,
    transforms: str | Transform | None = DEFAULT_TRANSFORMS,
    seed: int = 0,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> RenderResult:
    """Find images that maximise each objective, all objectives in one batch.

    ``n`` images per objective (K objectives give K*n images). The seed fixes the starting
    parameters and the random transformation of each step; every objective gets the same
    ones, so an objective's images do not depend on which other objectives share the batch.
    Adam with learning rate ``lr`` ascends the sum of the objectives for ``steps`` steps;
    ``transforms`` is ``"default"`` (pad 4, jitter 4, scale 0.9-1.1, rotate +-10 degrees, jitter 2,
    done as one bilinear resample by :func:`one_resample`; ``"one_resample"`` is the same),
    ``"composed"`` (the same steps and draws one after the other, :func:`default_transforms`: two
    interpolations, so a little blurrier, and slower), None, or your own ``t(x, g)``; it must work
    for any number of channels, since the objectives are folded into the channel axis (n, K*3, H, W) to share the
    draws. A term that several objectives share (``- 10 * total_variation()`` in each) is evaluated
    once for the batch, and channel or logit objectives of one layer at once (see :class:`Objective`).
    Images come back on ``device`` (default: the model's device). The parameters are optimised in the
    model's dtype (float32 or float64); on the CPU the model sees its images channels-last (faster, the
    same values; see :func:`course_lib.device.forward_fast`).
    """
    objs = [objectives] if isinstance(objectives, Objective) else list(objectives)
    if not objs or not all(isinstance(o, Objective) for o in objs):
        raise TypeError("objectives should be an Objective or a list of them, e.g. [channel('features', c) for c in range(8)]")
    checks.module(model, what="render")
    steps = checks.positive_int(steps, "steps", what="render")
    n = checks.positive_int(n, "n", what="render")
    size = checks.positive_int(size, "size", what="render")
    lr = checks.positive_number(lr, "lr", what="render")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("render needs gradients, but it was called inside torch.inference_mode(); call it outside.")
    dev = model_device(model)
    out_dev = torch.device(device) if device is not None else dev
    k = len(objs)
    par = _param(param, size)
    if isinstance(transforms, str):
        if transforms not in _NAMED_TRANSFORMS:
            raise ValueError(f"transforms should be one of {sorted(_NAMED_TRANSFORMS)}, None or t(x, g); got {transforms!r}")
        t = _NAMED_TRANSFORMS[transforms]()
    else:
        t = transforms
    g = torch.Generator().manual_seed(int(seed))
    p0 = par.init(n, g)  # (n, ...) the same start for every objective
    dtype = _param_dtype(model)
    params = p0.repeat(k, *([1] * (p0.dim() - 1))).to(dev, dtype).requires_grad_(True)  # (K*n, ...)
    # fused: one pass over the parameters per step instead of several (CPU and CUDA; same update up to rounding)
    opt = torch.optim.Adam([params], lr=lr, fused=dev.type in ("cpu", "cuda") and params.dtype in (torch.float32, torch.float64))
    layers = [name for o in objs for name in o.layers]
    values_of = _plan(objs, n)  # which terms the objectives share, worked out once
    history = torch.empty(steps, k * n, device=dev)  # filled on the device, copied once at the end (no sync per step)
    with activations(model, layers) as acts:  # hooks registered once; each forward overwrites ``acts``
        for step in progress_bar(range(steps), total=steps, desc="render", enabled=progress):
            x = par(params)  # (K*n, 3, H, W)
            seen = x if t is None else _same_draws(t, x, k, g)  # (K*n, 3, H', W')
            logits = forward_fast(model, seen)  # channels-last on a CPU
            a = dict(acts)
            a[LOGITS], a[INPUT] = logits, x
            values = values_of(a)  # (K*n,)
            opt.zero_grad(set_to_none=True)
            (-values.sum()).backward()
            opt.step()
            history[step] = values.detach()
    with torch.no_grad():
        images = par(params).contiguous()
        acts = _forward(model, sum(objs[1:], objs[0]), images)
        final = values_of(acts)
    return RenderResult(images=images.detach().to(out_dev), values=final.to(out_dev), history=history.cpu(),
                        params=params.detach().to(out_dev), n_per_objective=n)
