"""Attribution maps: which input pixels made the model give this output?

Gradient methods are thin wrappers over captum (Kokhlikyan et al., 2020); the wrappers only add
what the course needs everywhere: the model must be in eval mode, inputs must be finite and go to
the model's device, targets are checked against the number of outputs (one class for the whole
batch or one per input), layers are named by dotted names, and randomness comes from ``seed``.

    saliency(model, x, target)                        # |d logit / d x|          (Simonyan et al., 2014)
    input_x_gradient(model, x, target)                # x * d logit / d x        (Shrikumar et al., 2016)
    smoothgrad(model, x, target, noise=0.15)          # mean gradient under noise (Smilkov et al., 2017)
    integrated_gradients(model, x, target, baseline)  # path integral            (Sundararajan et al., 2017)
    cam(model, x, target)                             # sum_k w_ck A_k, GAP nets  (Zhou et al., 2016)
    grad_cam(model, x, target, layer="features")      # ReLU(sum_k alpha_k A_k)  (Selvaraju et al., 2017)
    occlusion(model, x, target, patch=8)              # leave-one-out of a patch game (Zeiler & Fergus, 2014)
    cascading_randomization(model)                    # sanity check             (Adebayo et al., 2018)

Occlusion is a perturbation method: the game of an image (grid patches as players, as
:func:`course_lib.games.image_game` builds it) is asked for the all-present coalition and every
coalition with one patch missing. The coalitions of all images go to the model in one stream,
chunked by the games engine's ``default_batch_size`` (:class:`course_lib.games.ImageGames`, the
multi-image form of ``image_game``), so one forward pass serves many images. :func:`leave_one_out` works on any game.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .. import checks
from ..device import model_device, to_model
from ..games import Game, ImageGames, _image_baseline, default_batch_size
from ..hooks import capture, get_module
from ._checks import game as check_game
from ._checks import module_name
from .results import PerturbationResult

__all__ = [
    "saliency",
    "input_x_gradient",
    "smoothgrad",
    "integrated_gradients",
    "blurred",
    "cam",
    "grad_cam",
    "LeaveOneOutResult",
    "leave_one_out",
    "occlusion",
    "randomize_layers",
    "cascading_randomization",
]


# ----------------------------------------------------------------------------- input checks


def _check_target(model: nn.Module, x: torch.Tensor, target, what: str):
    """``target`` as an int or a (B,) long tensor on x's device, checked against the model's K outputs."""
    k = checks.n_outputs(model, x, what=what)
    t = checks.target(target, k, what=what, n=x.shape[0])
    if isinstance(t, int):
        return t
    return t.to(x.device).expand(x.shape[0]).contiguous()


def _prepare(model: nn.Module, x: torch.Tensor, target, what: str):
    """``(x, target, device)``: x checked, detached, on the model's device and in its dtype (requires_grad);
    the target checked against the model's outputs; the device of the input, where the answer goes back."""
    checks.module(model, what=what)
    checks.tensor(x, "x", what=what)
    checks.float_dtype(x, "x", what=what)
    if x.dim() < 2:
        raise ValueError(f"{what}: x must be a batch (B, ...); got shape {tuple(x.shape)}. Use x[None] for one input.")
    if x.dim() == 4:
        checks.images(x, "x", what=what, check_range=False)  # also refuses channels-last (B, H, W, C)
    checks.batch(x, "x", what=what)
    checks.not_meta(x, "x", what=what)
    checks.finite(x, "x", what=what)
    out_device = x.device
    x = to_model(x.detach(), model)
    target = _check_target(model, x, target, what)
    # requires_grad up front: captum warns (on stderr, fatal in a graded cell) when it must set it itself
    return x.requires_grad_(True), target, out_device


# ----------------------------------------------------------------------------- gradients


def saliency(model: nn.Module, x: torch.Tensor, target, *, absolute: bool = True) -> torch.Tensor:
    """Gradient of the target logit with respect to the input, (B, ...) like ``x``."""
    from captum.attr import Saliency

    x, target, out = _prepare(model, x, target, "saliency")
    return Saliency(model).attribute(x, target=target, abs=absolute).detach().to(out)


def input_x_gradient(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """``x * d logit / d x`` (signed), (B, ...) like ``x``: IG with a zero baseline and one step."""
    from captum.attr import InputXGradient

    x, target, out = _prepare(model, x, target, "input_x_gradient")
    return InputXGradient(model).attribute(x, target=target).detach().to(out)


def smoothgrad(
    model: nn.Module,
    x: torch.Tensor,
    target,
    *,
    noise: float = 0.15,
    n_samples: int = 32,
    seed: int = 0,
    absolute: bool = True,
    batch_size: int | None = None,
) -> torch.Tensor:
    """SmoothGrad: the mean gradient of the target logit over ``n_samples`` copies of ``x`` with
    Gaussian noise of standard deviation ``noise`` (in pixel units; images live in [0, 1], so this
    is the paper's sigma / (x_max - x_min), best at 10-20 %). The mean is taken over signed
    gradients, then ``absolute`` takes |.|, as in the paper. ``noise=0`` gives :func:`saliency`.

    The noisy copies are drawn exactly as captum's ``NoiseTunnel`` draws them (one normal draw,
    inputs repeated ``n_samples`` times in place), from a generator seeded with ``seed``, so the
    result equals ``NoiseTunnel(Saliency(model))`` after ``torch.manual_seed(seed)``; the gradients
    (captum's ``Saliency``) are then taken in chunks of ``batch_size`` model inputs (default: the
    games engine's :func:`~course_lib.games.default_batch_size` for the device). NoiseTunnel's
    own chunking is not used: it draws different noise for different chunk sizes."""
    from captum.attr import Saliency

    checks.positive_number(noise, "noise", what="smoothgrad (a standard deviation in pixel units)", allow_zero=True)
    n_samples = checks.positive_int(n_samples, "n_samples", what="smoothgrad")
    if batch_size is not None:
        checks.positive_int(batch_size, "batch_size", what="smoothgrad")
    x, target, out = _prepare(model, x, target, "smoothgrad")
    x = x.detach()
    B = x.shape[0]
    gen = torch.Generator(device=x.device).manual_seed(seed)
    # the noise is drawn in float32 for a float64 model too, so that its answer is the float32 one up to rounding
    noise_dtype = torch.float32 if x.dtype == torch.float64 else x.dtype
    std = torch.full((B * n_samples,) + tuple(x.shape[1:]), float(noise), dtype=noise_dtype, device=x.device)
    noisy = x.repeat_interleave(n_samples, 0) + torch.normal(0.0, std, generator=gen).to(x.dtype)  # (B * n, ...), image-major
    del std
    t = target if isinstance(target, int) else target.repeat_interleave(n_samples)
    bs = batch_size or default_batch_size(x[0].numel() * x.element_size(), device=x.device)
    sal = Saliency(model)
    grads = []
    for s in range(0, noisy.shape[0], bs):
        chunk = noisy[s : s + bs].requires_grad_(True)
        grads.append(sal.attribute(chunk, target=t if isinstance(t, int) else t[s : s + bs], abs=False).detach())
    g = torch.cat(grads).view(B, n_samples, *x.shape[1:]).mean(1)  # (B, ...)
    return (g.abs() if absolute else g).to(out)


def blurred(x: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """A Gaussian-blurred copy of images (B, C, H, W) or (C, H, W): a baseline that keeps colours, drops shapes."""
    from torchvision.transforms.functional import gaussian_blur

    checks.tensor(x, "x", what="blurred")
    checks.images(x[None] if isinstance(x, torch.Tensor) and x.dim() == 3 else x, "x", what="blurred", check_range=False)
    sigma = checks.positive_number(sigma, "sigma", what="blurred")
    k = 2 * int(math.ceil(3 * sigma)) + 1
    k = min(k, (min(x.shape[-2:]) // 2) * 2 - 1)
    return gaussian_blur(x.detach(), [k, k], [sigma, sigma])


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target,
    baseline: torch.Tensor | float | str = 0.0,
    *,
    steps: int = 64,
    batch_size: int | None = None,
    return_delta: bool = False,
    n_steps: int | None = None,
):
    """Integrated gradients along the straight line from ``baseline`` to ``x``:
    (x - b) * integral_0^1 d f(b + a (x - b)) / d x da, by captum's Gauss-Legendre quadrature.

    ``baseline``: a number (0 = black), an image (C, H, W), a batch (B, C, H, W), or ``"blur"``
    (:func:`blurred` of x). Completeness: the attributions of one input sum to f(x) - f(baseline)
    up to the quadrature error, which ``return_delta=True`` reports per input. The path points go
    through the model in chunks of ``batch_size`` (captum's ``internal_batch_size``; default: the
    games engine's :func:`~course_lib.games.default_batch_size` for the device: on two CPU cores
    chunks of 32 ran 1.5x faster than 128, on an H200 large chunks were fastest).

    ``steps``: the number of path points (captum's ``n_steps``, still accepted under that name).
    """
    from captum.attr import IntegratedGradients

    x, target, out_device = _prepare(model, x, target, "integrated_gradients")
    if isinstance(baseline, str):
        if baseline != "blur":
            raise ValueError(f"integrated_gradients: baseline must be a number, a tensor or 'blur'; got {baseline!r}")
        base = blurred(x)
    else:
        base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
        checks.finite(base, "baseline", what="integrated_gradients")
        if base.dim() == 0 or base.shape == x.shape[1:]:
            base = base.expand_as(x)
        elif base.shape != x.shape:
            raise ValueError(f"integrated_gradients: baseline must be a number, shape {tuple(x.shape[1:])} or {tuple(x.shape)}; "
                             f"got {tuple(base.shape)}")
    n_steps = checks.step_count(steps, n_steps, default=64, what="integrated_gradients")
    if batch_size is not None:
        checks.positive_int(batch_size, "batch_size", what="integrated_gradients")
    # captum evaluates n_steps * B path points in chunks of internal_batch_size (at least B, or it warns)
    bs = batch_size or default_batch_size(x[0].numel() * x.element_size(), device=x.device)
    chunk = max(int(bs), x.shape[0])
    out = IntegratedGradients(model).attribute(
        x, baselines=base, target=target, n_steps=n_steps, internal_batch_size=chunk, return_convergence_delta=return_delta
    )
    return (out[0].detach().to(out_device), out[1].detach().to(out_device)) if return_delta else out.detach().to(out_device)


# ----------------------------------------------------------------------------- class activation maps


def _upsample(maps: torch.Tensor, size) -> torch.Tensor:  # (B, h, w) -> (B, H, W)
    return nn.functional.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def cam(
    model: nn.Module, x: torch.Tensor, target, *, layer: str = "features", head: str = "fc", upsample: bool = True
) -> torch.Tensor:
    """Class activation map (Zhou et al., 2016) of a network that ends in global average pooling of
    ``layer``'s output A (B, K, h, w) and a linear layer ``head``: sum_k w_ck A_k, signed (no ReLU).

    Its spatial mean plus the head's bias is exactly the logit of class c; the function checks
    this and refuses networks where it does not hold. Returns (B, H, W) (input size) if ``upsample``,
    else (B, h, w)."""
    x, target, out = _prepare(model, x, target, "cam")
    module_name(model, layer, "cam")
    fc = get_module(model, module_name(model, head, "cam", "head"))
    if not isinstance(fc, nn.Linear):
        raise ValueError(f"cam: the head {head!r} must be an nn.Linear; it is a {type(fc).__name__}")
    with torch.no_grad(), capture(model, layer) as acts:
        logits = model(x)  # (B, n_classes)
    A = acts[layer]  # (B, K, h, w)
    t = torch.as_tensor(target, device=x.device).expand(x.shape[0])
    w = fc.weight[t]  # (B, K)
    maps = torch.einsum("bk,bkhw->bhw", w, A)  # (B, h, w)
    bias = fc.bias[t] if fc.bias is not None else torch.zeros_like(maps[:, 0, 0])
    want = logits.gather(1, t[:, None])[:, 0]
    if not torch.allclose(maps.mean((1, 2)) + bias, want, atol=1e-3, rtol=1e-3):
        raise ValueError(f"cam: the logits are not the linear head {head!r} applied to the spatial mean of {layer!r}; "
                         "CAM needs a network that ends in global average pooling and one linear layer. Use grad_cam instead.")
    return (_upsample(maps, x.shape[-2:]) if upsample else maps).to(out)


def grad_cam(model: nn.Module, x: torch.Tensor, target, *, layer: str = "features", upsample: bool = True) -> torch.Tensor:
    """Grad-CAM at module ``layer``: ReLU(sum_k alpha_k A_k) with alpha_k the spatial mean of
    d logit / d A_k. Returns (B, H, W) at the input's size if ``upsample``, else the layer's size."""
    from captum.attr import LayerGradCam

    x, target, out = _prepare(model, x, target, "grad_cam")
    module_name(model, layer, "grad_cam")
    maps = (
        LayerGradCam(model, get_module(model, layer)).attribute(x, target=target, relu_attributions=True)[:, 0].detach()
    )  # (B, h, w)
    return (_upsample(maps, x.shape[-2:]) if upsample else maps).to(out)


# ----------------------------------------------------------------------------- occlusion: leave-one-out of a game


@dataclass(kw_only=True, repr=False)
class LeaveOneOutResult(PerturbationResult):
    """Leave-one-out values of one game: ``values[i] = v(all) - v(all without player i)``.

    values: (d,) or (d, K); v_full: v(all players); budget: coalitions the game was asked for;
    method: "leave-one-out". Unlike Shapley values they need not sum to v_full - v(empty).
    """

    v_full: torch.Tensor
    method: str = "leave-one-out"


def leave_one_out(game: Game, players: Sequence[int] | None = None, *, progress: bool | None = None) -> LeaveOneOutResult:
    """Ask ``game`` for the coalition of all players and, in the same batch, for every coalition
    with one of ``players`` (default: all) missing. Values of players not asked for are 0."""
    check_game(game, "leave_one_out")
    d = game.n_players
    if players is None:
        idx = torch.arange(d, device=game.device)
    else:
        players = players if isinstance(players, torch.Tensor) else list(checks.non_empty(players, "players", what="leave_one_out"))
        idx = checks.integers(players, "players", what="leave_one_out", high=d, dims=1, kind="player index").to(game.device)
    masks = torch.ones(1 + len(idx), d, dtype=torch.bool, device=game.device)
    masks[1 + torch.arange(len(idx), device=game.device), idx] = False
    out = game(masks, progress=progress)  # (1 + n, ...)
    values = torch.zeros((d,) + tuple(out.shape[1:]), dtype=out.dtype, device=out.device)
    values[idx] = out[0] - out[1:]
    return LeaveOneOutResult(values=values, v_full=out[0], budget=masks.shape[0], player_names=game.player_names)


def _window_groups(size: int, patch: int, stride: int) -> list[list[int]]:
    """Start positions of the windows along one axis, placed as captum places them (every
    ``stride`` pixels; the last one may stick out of the image and is cut), in groups of
    windows that do not overlap (every ceil(patch / stride)-th window)."""
    starts = [k * stride for k in range(math.ceil((size - patch) / stride) + 1)]
    m = math.ceil(patch / stride)
    return [starts[r::m] for r in range(min(m, len(starts)))]


def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target,
    *,
    patch: int = 8,
    stride: int | None = None,
    baseline: float | torch.Tensor | str = 0.0,
    output: str = "logit",
    batch_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Occlusion (Zeiler & Fergus, 2014): slide a ``patch`` x ``patch`` square of ``baseline`` over
    each image with step ``stride`` (default: ``patch``, a grid) and record how much the target
    output drops; each pixel gets the mean drop of the windows that cover it. Same windows and
    numbers as ``captum.attr.Occlusion``.

    Built on games: for stride == patch the windows are the players of an image game over
    ``grid_segments`` (as :func:`course_lib.games.image_game` builds it), and the map is the
    game's :func:`leave_one_out` value painted back on the pixels. Overlapping windows are split
    into groups of disjoint windows, one game per group and image. All (image, window) pairs of
    all groups go to the model in ONE stream, chunked by ``batch_size`` (default: the games
    engine's ``default_batch_size``), so B images cost ceil(B (P + 1) / batch_size) forward passes
    for P windows, not B ceil((P + 1) / batch_size). The result does not depend on ``batch_size``.

    x: (B, C, H, W) in [0, 1]; baseline: a number, an image (C, H, W), one per image (B, C, H, W),
    ``"blur"`` or ``"mean"`` (each window filled with its own mean colour); returns (B, H, W) on
    x's device.
    """
    patch = checks.positive_int(patch, "patch", what="occlusion")
    stride = patch if stride is None else checks.positive_int(stride, "stride", what="occlusion")
    if not (1 <= stride <= patch):
        raise ValueError(f"occlusion: stride must be between 1 and patch ({patch}); got {stride}")
    if batch_size is not None:
        checks.positive_int(batch_size, "batch_size", what="occlusion")
    checks.module(model, what="occlusion")
    checks.images(x, "x", what="occlusion")
    if isinstance(baseline, torch.Tensor):
        checks.finite(baseline, "baseline", what="occlusion")
    elif not isinstance(baseline, str) and not math.isfinite(baseline):
        raise ValueError(f"occlusion: baseline must be finite; got {baseline}")
    B, C, H, W = x.shape
    if patch > min(H, W):
        raise ValueError(f"occlusion: patch {patch} is larger than the image ({H} x {W})")
    checks.choice(output, ("logit", "logprob", "prob"), "output", what="occlusion")
    dev = model_device(model)
    xd = to_model(x.detach(), model)
    t = torch.as_tensor(_check_target(model, xd, target, "occlusion"), device=dev).expand(B)  # (B,)
    rows, cols = _window_groups(H, patch, stride), _window_groups(W, patch, stride)
    groups = [_window_segments(H, W, rg, cg, patch, dev) for rg in rows for cg in cols]  # [(seg (H, W), n_win)]
    segs = torch.stack([seg for seg, _ in groups])  # (S, H, W): windows 0..n_win-1, gaps n_win
    base = _occlusion_baseline(xd, segs, baseline)  # broadcasts to (S, B, C, H, W)
    games = ImageGames(model, xd, segs, base, t, output=output, batch_size=batch_size, progress=progress, desc="occlusion")
    # one stream: every image whole (game b, nobody missing), then every window of every group and image
    ask_games, ask_missing = [torch.arange(B, device=dev)], [torch.full((B,), -1, device=dev)]
    for s, (_, n_win) in enumerate(groups):
        ask_games.append((s * B + torch.arange(B, device=dev)).repeat_interleave(n_win))  # image-major
        ask_missing.append(torch.arange(n_win, device=dev).repeat(B))
    out = games.leave_one_out(torch.cat(ask_games), torch.cat(ask_missing))  # (B + B * sum(n_win),)
    v_full, at = out[:B], B
    total = torch.zeros(B, H, W, device=dev, dtype=out.dtype)
    count = torch.zeros(H, W, device=dev)
    for seg, n_win in groups:
        values = v_full[:, None] - out[at : at + B * n_win].view(B, n_win)  # (B, n_win): leave-one-out values
        at += B * n_win
        total += nn.functional.pad(values, (0, 1))[:, seg]  # gaps were never removed: 0
        count += (seg < n_win).float()
    return (total / count.clamp_min(1)).to(x.device)


def _occlusion_baseline(x: torch.Tensor, segs: torch.Tensor, baseline) -> torch.Tensor:
    """What a removed window shows, broadcastable to (S, B, C, H, W). Named baselines ("blur",
    "mean") are the image games' own (``games._image_baseline``)."""
    B = x.shape[0]
    if isinstance(baseline, str):
        per_map = segs if baseline == "mean" else segs[:1]  # only "mean" depends on the segments
        return torch.stack(
            [torch.stack([_image_baseline(x[b], seg, baseline) for b in range(B)]) for seg in per_map]
        )  # (S or 1, B, C, H, W)
    base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    if base.dim() == 0 or base.shape == x.shape[1:]:
        return base
    if base.shape == x.shape:
        return base[None]
    raise ValueError(f"occlusion: baseline must be a number, an image {tuple(x.shape[1:])}, one per image {tuple(x.shape)}, "
                     f"'blur' or 'mean'; got shape {tuple(base.shape)}")


def _window_segments(H: int, W: int, row_starts, col_starts, patch: int, device):
    """A segment map (H, W) for disjoint windows: window (i, j) has label i * len(cols) + j, the
    pixels outside every window the label n_windows (a player that is never removed)."""
    n_r, n_c = len(row_starts), len(col_starts)
    r_lab = torch.full((H,), -1, dtype=torch.long, device=device)
    c_lab = torch.full((W,), -1, dtype=torch.long, device=device)
    for i, s in enumerate(row_starts):
        r_lab[s : s + patch] = i
    for j, s in enumerate(col_starts):
        c_lab[s : s + patch] = j
    inside = (r_lab[:, None] >= 0) & (c_lab[None, :] >= 0)
    seg = torch.where(inside, r_lab[:, None] * n_c + c_lab[None, :], torch.full((), n_r * n_c, device=device))
    return seg, n_r * n_c


# ----------------------------------------------------------------------------- sanity checks


def _default_layers(model: nn.Module) -> list[str]:
    """The model's top-level blocks that hold parameters, from the output back to the input."""
    return [n for n, m in model.named_children() if any(True for _ in m.parameters())][::-1]


def randomize_layers(model: nn.Module, names: str | Sequence[str], *, seed: int = 0) -> nn.Module:
    """A copy of ``model`` in which the modules ``names`` are re-initialised (every submodule's
    ``reset_parameters()``: fresh random weights, batch-norm statistics reset); the original is
    untouched. Deterministic for a ``seed``."""
    what = "randomize_layers"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what}: model must be a torch nn.Module; got {type(model).__name__}")
    names = [names] if isinstance(names, str) else list(checks.non_empty(names, "names", what=what))
    for name in names:
        module_name(model, name, what, "names")
    seed = checks.non_negative_int(seed, "seed", what=what)
    new = copy.deepcopy(model)
    devices = [d.index or 0 for d in {p.device for p in new.parameters()} if d.type == "cuda"]
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for name in names:
            mods = [m for m in get_module(new, name).modules() if hasattr(m, "reset_parameters")]
            if not mods:
                raise ValueError(f"randomize_layers: module {name!r} has nothing to re-initialise")
            for m in mods:
                m.reset_parameters()
                if hasattr(m, "reset_running_stats"):
                    m.reset_running_stats()
    return new.eval()


def cascading_randomization(
    model: nn.Module, layers: Sequence[str] | None = None, *, seed: int = 0
) -> list[tuple[str, nn.Module]]:
    """The cascading model-parameter randomisation test of Adebayo et al. (2018): copies of
    ``model`` with the layers randomised one more at a time, from the output back to the input.

    layers: names from the top down (default: the top-level blocks with parameters, reversed).
    Returns ``[(name, copy), ...]``: the k-th copy has layers[0..k] randomised (each layer with the
    same random weights in every copy). The original model is not modified."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"cascading_randomization: model must be a torch nn.Module; got {type(model).__name__}")
    layers = _default_layers(model) if layers is None else list(checks.non_empty(layers, "layers", what="cascading_randomization"))
    if not layers:
        raise ValueError("cascading_randomization: the model has no layers with parameters")
    return [(name, randomize_layers(model, layers[: k + 1], seed=seed)) for k, name in enumerate(layers)]
