"""Adversarial examples: move the *input*, not the weights, along the gradient of a loss.

Training descends the loss with respect to the weights. An attack keeps the weights fixed
and changes the image ``x`` inside a small ball ``||x_adv - x|| <= eps`` so that

- untargeted: the loss of the true class ``y`` goes *up* (any wrong answer will do);
- targeted:   the loss of the chosen class ``target`` goes *down* (the model says ``target``).

FGSM (Goodfellow, Shlens & Szegedy 2015) takes one step of size ``eps`` along the sign of
the input gradient. PGD (Madry et al. 2018) starts at a random point of the ball and takes
``steps`` steps of size ``alpha``, projecting back onto the ball and onto [0, 1] after each.

Conventions used by every function here:
- images ``x`` are (B, C, H, W) pixels in [0, 1]; any normalisation belongs inside the model;
- the model is in eval mode; only the input gets gradients (parameters are never touched);
- randomness comes from ``seed`` (a fresh generator on the model's device), never the global RNG;
- results come back on ``x``'s device; each image is attacked independently, so a result
  never depends on what else is in the batch or on ``batch_size`` (chunking only).
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..device import model_device, to_model
from ..progress import progress_bar

__all__ = ["fgsm", "pgd", "attack_loss", "predict", "accuracy_under_attack", "project_to_ball"]

_NORMS = ("linf", "l2")
_LOSSES = ("ce", "margin")
_TINY = 1e-12


# ----------------------------------------------------------------------------- checks

def _labels(v, n: int, k: int, dev: torch.device, what: str, name: str) -> torch.Tensor:
    """An int, a sequence or a tensor of class indices, checked against the model's ``k`` classes
    -> a (n,) long tensor on ``dev``."""
    t = checks.target(v, k, name, what=what, n=n)
    return torch.as_tensor(t, device=dev).long().expand(n)


def _prepare(model: nn.Module, x: torch.Tensor, eps: float, what: str) -> torch.device:
    checks.module(model, what=what)
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{what} needs gradients, but it was called inside torch.inference_mode(); call it outside that block.")
    checks.images(x, "x", what=what)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps >= 0 and eps < float("inf")):
        raise ValueError(f"{what}: eps should be a non-negative number in pixel units (e.g. 8/255); got {eps!r}")
    return model_device(model)


# ----------------------------------------------------------------------------- pieces

@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """The model's top-1 class for each image (B,), on ``x``'s device."""
    checks.module(model, what="predict")
    checks.tensor(x, "x", what="predict")
    checks.float_dtype(x, "x", what="predict")
    if x.dim() == 4:  # images: channels-last (B, H, W, C) is refused
        checks.images(x, "x", what="predict", check_range=False)
    checks.batch(x, "x", what="predict")
    checks.not_meta(x, "x", what="predict")
    checks.finite(x, "x", what="predict")
    bs = len(x) if batch_size is None else checks.positive_int(batch_size, "batch_size", what="predict")
    checks.n_outputs(model, to_model(x[:1], model), what="predict")  # a clear error if the model cannot take x (one image (C, H, W))
    out = [model(to_model(x[s : s + bs], model)).argmax(1) for s in range(0, len(x), bs)]
    return torch.cat(out).to(x.device)


def attack_loss(logits: torch.Tensor, labels: torch.Tensor, *, targeted: bool, loss: str = "ce") -> torch.Tensor:
    """The per-image objective an attack *ascends*, shape (B,).

    - ``"ce"``: cross-entropy of ``labels`` (untargeted), or minus it (targeted: descend the
      loss of the target class, i.e. make the target more likely);
    - ``"margin"`` (Carlini & Wagner 2017): ``max_{j != y} z_j - z_y`` (untargeted), or
      ``z_t - max_{j != t} z_j`` (targeted). It works on logits, so a saturated softmax
      cannot hide the gradient.
    """
    what = "attack_loss"
    checks.values(logits, "logits", what=what, dims=2, shape="(B, K)")
    n_classes = logits.shape[1]
    labels = torch.as_tensor(checks.target(labels, n_classes, "labels", what=what, n=logits.shape[0]),
                             device=logits.device).long().expand(logits.shape[0])
    checks.choice(loss, _LOSSES, "loss", what=what)
    if loss == "ce":
        ce = F.cross_entropy(logits, labels, reduction="none")  # (B,)
        return -ce if targeted else ce
    if loss == "margin":
        z_y = logits.gather(1, labels[:, None])[:, 0]  # (B,)
        others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(1)  # (B,)
        return z_y - others if targeted else others - z_y
    raise ValueError(f"loss should be one of {_LOSSES}; got {loss!r}")


def _per_image_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (v.dim() - 1)))  # (B, 1, 1, 1)


def project_to_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: Literal["linf", "l2"] = "linf") -> torch.Tensor:
    """Closest point to ``x_adv`` in the eps-ball around ``x`` (then clipped to [0, 1])."""
    what = "project_to_ball"
    checks.images(x_adv, "x_adv", what=what, check_range=False)
    checks.images(x, "x", what=what)
    if x_adv.shape != x.shape:
        raise ValueError(f"{what}: x_adv has shape {tuple(x_adv.shape)} but x {tuple(x.shape)}; they must agree")
    checks.same_device(x, x_adv, "x", "x_adv", what=what)
    eps = checks.positive_number(eps, "eps", what=what, allow_zero=True)
    checks.choice(norm, _NORMS, "norm", what=what)
    return _project(x_adv, x, eps, norm)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """project_to_ball without the checks (pgd calls it at every step)."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    elif norm == "l2":
        n = _per_image_norm(delta)
        delta = delta * torch.clamp(eps / n.clamp_min(_TINY), max=1.0)
    else:
        raise ValueError(f"norm should be one of {_NORMS}; got {norm!r}")
    return (x + delta).clamp(0, 1)




def _input_grad(model: nn.Module, x_adv: torch.Tensor, labels: torch.Tensor, targeted: bool, loss: str) -> torch.Tensor:
    """Gradient of the summed objective with respect to the input only (B, C, H, W)."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        obj = attack_loss(model(x_adv), labels, targeted=targeted, loss=loss).sum()
        (grad,) = torch.autograd.grad(obj, x_adv)
    return grad


def _random_start(x: torch.Tensor, eps: float, norm: str, g: torch.Generator) -> torch.Tensor:
    """A random point of the eps-ball around x, clipped to [0, 1] (B, C, H, W). The noise is drawn on the
    generator's device (pgd's own generator is on the model's device, as x is; a caller's generator may
    be elsewhere, e.g. a CPU one with a model on a GPU) and moved to x's."""
    dev = g.device
    if norm == "linf":
        delta = torch.empty_like(x, device=dev).uniform_(-eps, eps, generator=g)
    else:  # uniform direction, radius uniform in [0, eps] (as torchattacks.PGDL2)
        delta = torch.empty_like(x, device=dev).normal_(generator=g)
        r = torch.zeros(x.shape[0], *([1] * (x.dim() - 1)), device=dev, dtype=x.dtype).uniform_(0, 1, generator=g)
        delta = delta * r / _per_image_norm(delta).clamp_min(_TINY) * eps
    return (x + delta.to(x.device)).clamp(0, 1)


def _targets(model, x, y, target, dev, what: str) -> tuple[torch.Tensor, bool]:
    n = x.shape[0]
    if target is not None:
        if y is not None:
            raise ValueError(f"{what}: give either y (untargeted: move away from the true class) or target "
                             "(targeted: move towards that class), not both")
        return _labels(target, n, checks.n_outputs(model, x, what=what), dev, what, "target"), True
    if y is None:  # untargeted against the model's own answer
        return predict(model, x.to(dev)).to(dev), False
    return _labels(y, n, checks.n_outputs(model, x, what=what), dev, what, "y"), False


def _chunks(n: int, batch_size: int | None):
    bs = n if batch_size is None else checks.positive_int(batch_size, "batch_size")
    return [slice(s, s + bs) for s in range(0, n, bs)]


# ----------------------------------------------------------------------------- attacks

def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y=None,
    *,
    eps: float,
    target=None,
    loss: Literal["ce", "margin"] = "ce",
    batch_size: int | None = None,
) -> torch.Tensor:
    """Fast gradient sign method: ``x_adv = clip(x + s * eps * sign(grad_x L), 0, 1)``.

    ``x`` (B, C, H, W) in [0, 1]. Untargeted (``y`` = true classes; None = the model's own
    predictions): ascend the loss of ``y``, ``s = +1``. Targeted (``target`` = one class or
    one per image): descend the loss of ``target``, ``s = -1``. Returns ``x_adv`` on x's device.
    """
    dev = _prepare(model, x, eps, "fgsm")
    checks.choice(loss, _LOSSES, "loss", what="fgsm")
    x0 = to_model(x.detach(), model)
    labels, targeted = _targets(model, x0, y, target, dev, "fgsm")
    out = torch.empty_like(x0)
    for sl in _chunks(len(x0), batch_size):
        grad = _input_grad(model, x0[sl], labels[sl], targeted, loss)  # (b, C, H, W)
        out[sl] = (x0[sl] + eps * grad.sign()).clamp(0, 1)
    return out.to(x.device)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y=None,
    *,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    target=None,
    norm: Literal["linf", "l2"] = "linf",
    random_start: bool = True,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    loss: Literal["ce", "margin"] = "ce",
    batch_size: int | None = None,
) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018) in the L-infinity or L2 ball.

    Start at ``x`` plus uniform noise from the ball (``random_start``; drawn for the whole batch at once, so
    ``batch_size`` cannot change it, from ``generator`` (on any device) or else from a fresh generator on the
    model's device seeded with ``seed``), then ``steps`` times::

        x_adv <- x_adv + s * alpha * d          d = sign(g) (linf) or g / ||g||_2 (l2), g = grad_x L
        x_adv <- clip(x + Proj_eps(x_adv - x), 0, 1)

    with ``s = +1`` for untargeted (ascend the loss of ``y``) and ``s = -1`` for targeted
    (descend the loss of ``target``). ``alpha`` defaults to ``2.5 * eps / steps``.
    ``loss="margin"`` uses the Carlini-Wagner margin on logits instead of cross-entropy.
    Returns ``x_adv`` (B, C, H, W) on x's device.
    """
    dev = _prepare(model, x, eps, "pgd")
    checks.choice(norm, _NORMS, "norm", what="pgd")
    checks.choice(loss, _LOSSES, "loss", what="pgd")
    # steps=0 would return the random start, which is no attack at all
    steps = checks.positive_int(steps, "steps", what="pgd (for no attack, use x itself)")
    alpha = 2.5 * eps / steps if alpha is None else checks.positive_number(alpha, "alpha", what="pgd", allow_zero=True)
    x0 = to_model(x.detach(), model)
    labels, targeted = _targets(model, x0, y, target, dev, "pgd")
    if random_start:  # drawn for the whole batch at once, so chunking cannot change it
        g = generator
        if g is None:
            g = torch.Generator(device=dev)
            if seed is not None:
                g.manual_seed(int(seed))
            else:
                g.seed()
        x_adv = _random_start(x0, eps, norm, g)
    else:
        x_adv = x0.clone()
    for sl in _chunks(len(x0), batch_size):
        xa, xo, lab = x_adv[sl], x0[sl], labels[sl]
        for _ in range(int(steps)):
            grad = _input_grad(model, xa, lab, targeted, loss)  # (b, C, H, W)
            if norm == "linf":
                step = grad.sign()
            else:
                step = grad / (_per_image_norm(grad) + 1e-10)
            xa = _project(xa + alpha * step, xo, eps, norm)  # step ascends attack_loss
        x_adv[sl] = xa
    return x_adv.to(x.device)


# ----------------------------------------------------------------------------- evaluation

def accuracy_under_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps_values: Sequence[float],
    *,
    attack: Literal["fgsm", "pgd"] = "pgd",
    target=None,
    progress: bool = True,
    **kwargs,
) -> torch.Tensor:
    """For each eps: accuracy on ``fgsm``/``pgd`` examples (untargeted), or, with ``target``,
    the targeted success rate (fraction classified as ``target``). Returns (len(eps_values),) on CPU."""
    what = "accuracy_under_attack"
    fn = {"fgsm": fgsm, "pgd": pgd}[checks.choice(attack, ("fgsm", "pgd"), "attack", what=what)]
    checks.module(model, what=what)
    checks.images(x, "x", what=what)
    eps_values = checks.non_empty(eps_values, "eps_values", what=what)
    k = checks.n_outputs(model, to_model(x, model), what=what)
    y = _labels(y, len(x), k, x.device, what, "y")
    tgt = None if target is None else _labels(target, len(y), k, x.device, what, "target")
    keep = None if tgt is None else y != tgt  # targeted success is counted on images not already of the target class
    out = []
    for eps in progress_bar(list(eps_values), total=len(eps_values), desc=f"{attack} over eps", enabled=progress):
        eps = float(eps)  # at eps = 0 nothing can move: no attack needed
        if tgt is None:
            x_adv = x if eps == 0 else fn(model, x, y, eps=eps, **kwargs)
            out.append((predict(model, x_adv) == y).float().mean().item())
        else:
            x_adv = x[keep] if eps == 0 else fn(model, x[keep], eps=eps, target=tgt[keep], **kwargs)
            out.append((predict(model, x_adv) == tgt[keep]).float().mean().item())
    return torch.tensor(out)
