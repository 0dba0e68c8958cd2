"""Feature visualisation: optimise an *image* so that a unit of the network responds strongly.

Training moves the weights to lower a loss. Here the weights stay fixed and we move the
input to *raise* an objective: a class logit, the mean of a channel, one neuron, a direction
in a layer's activation space (Erhan et al. 2009; Simonyan et al. 2014; Olah, Mordvintsev &
Schubert, "Feature Visualization", Distill 2017). Plain gradient ascent on pixels finds
high-frequency patterns, the same kind of pattern an adversarial example uses; the tools
here keep the image closer to something natural:

- **objectives** form a small algebra: they add, subtract and scale (``channel(...) - 0.1 * tv()``),
  and penalties on the image (L1, L2, total variation, blur) are objectives too;
- **parameterisations** say what the optimiser moves: raw pixels, or a Fourier spectrum
  scaled by 1/frequency with decorrelated colour (Mordvintsev et al., "Differentiable Image
  Parameterizations", Distill 2018); both map to images in [0, 1] through a sigmoid;
- **transformations** (pad, jitter, scale, rotate) are applied at random before every
  step, so the image must work wherever it lands ("transformation robustness");
  :func:`render` does the default ones with the same draws as one bilinear resample
  (:func:`one_resample`);
- :func:`render` optimises many objectives at once as one batch; :func:`dataset_search`
  finds the natural images that score highest on the same objective.

Conventions:
- images are (B, 3, H, W) in [0, 1]; the zoo models normalise inside themselves;
- an objective reads activations by dotted module name through :mod:`course_lib.hooks`, with
  two reserved names: ``"input"`` (the image before the random transformations) and
  ``"logits"`` (the model's output); it returns one value per image, (B,), to be *maximised*;
- randomness comes from ``seed`` through a CPU ``torch.Generator`` (the same numbers on every
  device), never the global RNG; results come back on the caller's device.
"""
from __future__ import annotations

import functools
import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..device import forward_fast, model_device, require_eval
from ..hooks import get_module, patch

__all__ = [
    "Objective",
    "channel",
    "neuron",
    "class_logit",
    "direction",
    "diversity",
    "l1",
    "l2",
    "total_variation",
    "blur_penalty",
    "Pixels",
    "Fourier",
    "opponent_colours",
    "colour_basis",
    "pad",
    "jitter",
    "scale",
    "rotate",
    "compose",
    "default_transforms",
    "one_resample",
    "DEFAULT_TRANSFORMS",
    "ONE_RESAMPLE",
    "COMPOSED",
    "render",
    "RenderResult",
    "activations",
    "evaluate",
    "dataset_search",
    "SearchResult",
    "radial_spectrum",
]

INPUT, LOGITS = "input", "logits"
_RESERVED = (INPUT, LOGITS)


# ============================================================================ objectives

class Objective:
    """A function of the activations, ``acts -> (B,)`` values to maximise, with the layers it reads.

    Objectives form a vector space: ``a + b``, ``a - b``, ``-a``, ``2 * a``, ``a / 2`` and
    ``sum([a, b, c])`` are objectives, and ``(a + b)(acts) == a(acts) + b(acts)``.
    ``acts`` maps layer names (and ``"input"``, ``"logits"``) to tensors whose first axis is
    the batch.

    Every objective also keeps its linear form, ``terms`` (a list of ``(weight, leaf)``) plus
    ``const``: ``o(acts) == const + sum(w * leaf(acts))``. :func:`render` uses it to evaluate a
    term that several objectives share (the same penalty, say ``tv()``, subtracted from every
    class logit) once for the whole batch instead of once per objective. Terms count as the
    same when their ``key`` is equal (the built-in penalties set one from their settings; a
    leaf without a key is only ever the same as itself); only ``rowwise`` terms (each image's
    value depends on that image alone, unlike :func:`diversity`) are shared.
    """

    def __init__(self, fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], layers: Sequence[str] = (), name: str = "objective",
                 *, key: tuple | None = None, rowwise: bool = False):
        self.fn, self.layers, self.name = fn, tuple(dict.fromkeys(layers)), name
        self.key, self.rowwise = key, rowwise
        # (family, index, fn): leaves of one family differ only in an index (a channel, a class) and
        # ``fn(acts, idx)`` evaluates them for a whole batch at once, image b with index idx[b]
        self.family: tuple | None = None
        self.terms: list[tuple[float, Objective]] = [(1.0, self)]
        self.const = 0.0

    @staticmethod
    def _combined(fn, layers, name, terms, const) -> "Objective":
        o = Objective(fn, layers, name)
        o.terms, o.const = terms, const
        return o

    def __call__(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [n for n in self.layers if n not in acts]
        if missing:
            raise KeyError(f"objective {self.name!r} reads {missing}, which are not among the activations {sorted(acts)}")
        return self.fn(acts)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    # --- the algebra
    def __add__(self, other):
        if isinstance(other, (int, float)):
            if other == 0:
                return self
            return Objective._combined(lambda acts: self(acts) + other, self.layers, f"{self.name} + {other:g}",
                                       self.terms, self.const + other)
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective._combined(
            lambda acts: self(acts) + other(acts),
            self.layers + other.layers,
            f"{self.name} + {other.name}",
            self.terms + other.terms,
            self.const + other.const,
        )

    __radd__ = __add__  # sum([...]) starts from 0

    def __neg__(self):
        return Objective._combined(lambda acts: -self(acts), self.layers, f"-({self.name})",
                                   [(-w, leaf) for w, leaf in self.terms], -self.const)

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, k):
        if not isinstance(k, (int, float)):
            return NotImplemented
        return Objective._combined(lambda acts: k * self(acts), self.layers, f"{k:g} * {self.name}",
                                   [(k * w, leaf) for w, leaf in self.terms], k * self.const)

    __rmul__ = __mul__

    def __truediv__(self, k):
        if not isinstance(k, (int, float)):
            return NotImplemented
        return self * (1.0 / k)


def _spatial(a: torch.Tensor, layer: str, what: str) -> torch.Tensor:
    if a.dim() != 4:
        raise ValueError(f"{what} needs a convolutional layer with outputs (B, C, H, W); {layer!r} gives shape {tuple(a.shape)}")
    return a


def _family(o: Objective, family: tuple, index: int, fn) -> Objective:
    o.family = (family, index, fn)
    return o


def _in_range(a: torch.Tensor, c: int, what: str, name: str, unit: str) -> torch.Tensor:
    """``a`` (B, K, ...) after checking that index ``c`` is one of its K entries along axis 1."""
    if c >= a.shape[1]:
        raise ValueError(f"{what}: {name}={c} is out of range; this layer has {a.shape[1]} {unit}, "
                         f"so {name} must lie in 0..{a.shape[1] - 1}.")
    return a


def _index(c, name: str, what: str) -> int:
    """A channel or class index >= 0 (negative indices are refused, not counted from the end)."""
    return checks.non_negative_int(c, name, what=what)


def channel(layer: str, c: int) -> Objective:
    """Mean activation of channel ``c`` of ``layer`` over all positions: ``acts[layer][:, c].mean()`` (B,)."""
    c = _index(c, "c", "channel")

    def fn(acts):
        return _in_range(_spatial(acts[layer], layer, "channel"), c, "channel", "c", "channels")[:, c].mean((1, 2))

    o = Objective(fn, [layer], f"channel({layer}:{c})", key=("channel", layer, c), rowwise=True)
    return _family(o, ("channel", layer), c,
                   lambda acts, idx: _spatial(acts[layer], layer, "channel").mean((2, 3)).gather(1, idx[:, None])[:, 0])


def neuron(layer: str, c: int, y: int | None = None, x: int | None = None) -> Objective:
    """One unit: channel ``c`` of ``layer`` at position ``(y, x)`` (default: the centre), (B,)."""

    c = _index(c, "c", "neuron")
    y = None if y is None else _index(y, "y", "neuron")
    x = None if x is None else _index(x, "x", "neuron")

    def fn(acts):
        a = _in_range(_spatial(acts[layer], layer, "neuron"), c, "neuron", "c", "channels")  # (B, C, H, W)
        yy = a.shape[2] // 2 if y is None else y
        xx = a.shape[3] // 2 if x is None else x
        if yy >= a.shape[2] or xx >= a.shape[3]:
            raise ValueError(f"neuron: position (y={yy}, x={xx}) is outside {layer!r}'s {a.shape[2]} x {a.shape[3]} grid")
        return a[:, c, yy, xx]

    return Objective(fn, [layer], f"neuron({layer}:{c}@{y},{x})", key=("neuron", layer, c, y, x), rowwise=True)


def class_logit(c: int) -> Objective:
    """The pre-softmax logit of class ``c`` (B,). Maximising the logit, not the probability, keeps
    the image about class ``c`` itself rather than about pushing the other classes down (Simonyan et al. 2014)."""
    c = _index(c, "c", "class_logit")
    o = Objective(lambda acts: _in_range(acts[LOGITS], c, "class_logit", "c", "classes")[:, c], [LOGITS], f"logit({c})",
                  key=("logit", c), rowwise=True)
    return _family(o, ("logit",), c, lambda acts, idx: acts[LOGITS].gather(1, idx[:, None])[:, 0])


def direction(layer: str, v: torch.Tensor) -> Objective:
    """Projection of the activations on a direction ``v`` (C,) of the layer's channel space.

    For a conv layer: ``sum_c v_c * mean_{h,w} acts[b, c, h, w]``; for a flat layer ``acts @ v``.
    ``channel(layer, c)`` is ``direction(layer, e_c)``.
    """
    v = torch.as_tensor(v, dtype=torch.float32)

    def fn(acts):
        a = acts[layer]
        if a.dim() == 4:
            a = a.mean((2, 3))  # (B, C)
        return a @ v.to(a.device, a.dtype)

    return Objective(fn, [layer], f"direction({layer})", rowwise=True)


def diversity(layer: str) -> Objective:
    """Minus the mean cosine similarity between an image's Gram matrix at ``layer`` and those of the
    other images rendered for the same objective (Nguyen et al. 2016; Olah et al. 2017), (B,).

    Only meaningful when :func:`render` makes several images per objective (``n > 1``); it is
    0 for a single image. Gram matrices ignore *where* things are, so the images are pushed to
    differ in *what* they show, not only in position.
    """

    def fn(acts):
        a = _spatial(acts[layer], layer, "diversity")  # (B, C, H, W)
        b = a.shape[0]
        if b < 2:
            return a.new_zeros(b)
        flat = a.flatten(2)  # (B, C, HW)
        gram = F.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)  # (B, C*C)
        sim = gram @ gram.T  # (B, B)
        return -(sim.sum(1) - sim.diagonal()) / (b - 1)

    return Objective(fn, [layer], f"diversity({layer})")


# --- penalties on the image: objectives too; subtract them with a weight

def l1(centre: float = 0.5) -> Objective:
    """Mean absolute deviation of the pixels from ``centre`` (B,): subtract it to keep the image plain."""
    return Objective(lambda acts: (acts[INPUT] - centre).abs().mean((1, 2, 3)), [INPUT], "l1", key=("l1", centre), rowwise=True)


def l2(centre: float = 0.5) -> Objective:
    """Mean squared deviation from ``centre`` (B,): the L2 term of Simonyan et al. (2014)."""
    return Objective(lambda acts: ((acts[INPUT] - centre) ** 2).mean((1, 2, 3)), [INPUT], "l2", key=("l2", centre), rowwise=True)


class _AnisotropicTV(torch.autograd.Function):
    """``sum |x[i+1,j] - x[i,j]| + |x[i,j+1] - x[i,j]|`` over channels and pixels, per image (B,).

    The same values and gradient as that expression under autograd (the gradient of ``|d|`` taken
    as ``sign(d)``, 0 at 0), in fewer passes over the image: autograd's backward goes through four
    slices, each writing a zero-filled gradient of the whole image, and two ``abs``. For the 10
    prototypes of :mod:`prototypes` this penalty is evaluated at every step of the optimisation."""

    @staticmethod
    def forward(ctx, x):
        dy = x[:, :, 1:] - x[:, :, :-1]  # (B, C, H-1, W)
        dx = x[:, :, :, 1:] - x[:, :, :, :-1]  # (B, C, H, W-1)
        tv = dy.abs().sum((1, 2, 3)) + dx.abs().sum((1, 2, 3))
        ctx.save_for_backward(dy.sign_(), dx.sign_())  # the differences are ours: their signs overwrite them
        return tv

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        sy, sx = ctx.saved_tensors
        g = g[:, None, None, None]
        sy, sx = sy * g, sx * g
        grad = torch.zeros(sy.shape[0], sy.shape[1], sx.shape[2], sx.shape[3] + 1, dtype=sy.dtype, device=sy.device)
        grad[:, :, 1:] += sy  # d|x[i+1] - x[i]| / dx[i+1] = sign
        grad[:, :, :-1] -= sy  # ... / dx[i] = -sign
        grad[:, :, :, 1:] += sx
        grad[:, :, :, :-1] -= sx
        return grad


def total_variation(isotropic: bool = False) -> Objective:
    """Total variation (B,): summed differences between neighbouring pixels, per pixel.

    Anisotropic (default): ``sum |x[i+1,j] - x[i,j]| + |x[i,j+1] - x[i,j]|``; isotropic: the
    Euclidean length of the two differences at each pixel. Both are divided by the number of
    pixels (H * W), summed over channels. Subtract it to penalise high frequencies.
    """

    def fn(acts):
        x = acts[INPUT]  # (B, C, H, W)
        if isotropic:
            dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]  # (B, C, H-1, W-1)
            dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
            tv = (dy**2 + dx**2 + 1e-12).sqrt().sum((1, 2, 3))
        else:
            tv = _AnisotropicTV.apply(x)
        return tv / (x.shape[2] * x.shape[3])

    return Objective(fn, [INPUT], "tv", key=("tv", isotropic), rowwise=True)


def _box_blur(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    c = x.shape[1]
    w = x.new_full((c, 1, k, k), 1.0 / (k * k))
    return F.conv2d(F.pad(x, [k // 2] * 4, mode="replicate"), w, groups=c)


def blur_penalty(k: int = 3) -> Objective:
    """Squared distance of the image to its own (fixed) box-blurred copy, per pixel (B,).

    The gradient of ``-penalty`` moves every pixel a little towards the blurred image, like the
    blur applied between steps by Yosinski et al. (2015, "Understanding neural networks through
    deep visualization").
    """
    return Objective(lambda acts: ((acts[INPUT] - _box_blur(acts[INPUT], k).detach()) ** 2).mean((1, 2, 3)), [INPUT], "blur",
                     key=("blur", k), rowwise=True)


# ============================================================================ parameterisations

def _logit(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x) - torch.log1p(-x)


class Pixels:
    """The image is ``sigmoid(p)`` for unconstrained ``p`` (n, 3, H, W): plain pixels, kept in (0, 1)."""

    def __init__(self, size: int | tuple[int, int] = 64, *, sd: float = 0.5, channels: int = 3):
        self.hw = (size, size) if isinstance(size, int) else tuple(size)
        self.sd, self.channels = sd, channels

    def init(self, n: int, g: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.channels, *self.hw, generator=g) * self.sd  # (n, 3, H, W)

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(p)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return _logit(x)


def opponent_colours(scales: Sequence[float] = (1.0, 0.5, 0.25)) -> torch.Tensor:
    """A fixed colour basis (3, 3): luminance, red-green and blue-yellow axes (orthonormal),
    scaled so that luminance varies most, as in natural images. ``rgb = basis @ coefficients``."""
    axes = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [1.0, 1.0, -2.0]])
    axes = axes / axes.norm(dim=1, keepdim=True)  # rows: luminance, red-green, blue-yellow
    return axes.T * torch.tensor(scales, dtype=torch.float32)  # columns scaled


def colour_basis(images: torch.Tensor) -> torch.Tensor:
    """The square root of the colour covariance of ``images`` (N, 3, H, W), (3, 3), normalised so
    its largest column has norm 1: independent unit-variance coefficients mapped through it
    get the colour correlations of the data (what "decorrelated colour" undoes)."""
    px = images.permute(1, 0, 2, 3).reshape(3, -1).double()
    cov = torch.cov(px)
    evals, evecs = torch.linalg.eigh(cov)
    sqrt = evecs * evals.clamp_min(0).sqrt()
    return (sqrt / sqrt.norm(dim=0).max()).float()


class _FourierSignal(torch.autograd.Function):
    """``colour @ irfft2(view_as_complex(p) * scale)`` with its backward written out.

    The map is linear in the real and imaginary parts ``p``: ``x = Re(A c)`` with ``c`` the half
    spectrum, so the gradient is ``conj(A)^T g``: ``rfft2`` of the colour-mixed gradient, each bin
    times its scale and times 2 where ``irfft2`` counts the bin twice (all but the first column
    and, for even W, the last). The same numbers as autograd through the three operations, in
    fewer passes: autograd's backward of the complex product and of ``irfft2`` goes through
    conjugates, masks and copies of the whole spectrum (~40% of this map's time for 16 images).
    First derivatives only (``once_differentiable``): nothing here needs the gradient of a gradient."""

    @staticmethod
    def forward(ctx, p, scale, colour, weight, hw):
        n = p.shape[0]
        spec = torch.view_as_complex((p * scale).contiguous())  # (n, 3, H, W//2+1)
        img = torch.fft.irfft2(spec, s=hw, norm="ortho")  # (n, 3, H, W), decorrelated channels
        ctx.save_for_backward(colour, weight)
        return torch.matmul(colour, img.reshape(n, 3, -1)).view(img.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        colour, weight = ctx.saved_tensors
        n = g.shape[0]
        gi = torch.matmul(colour.T, g.reshape(n, 3, -1)).view(g.shape)  # (n, 3, H, W)
        gs = torch.view_as_real(torch.fft.rfft2(gi, norm="ortho"))  # (n, 3, H, W//2+1, 2)
        return gs * weight, None, None, None, None


class Fourier:
    """The image is ``sigmoid(colour @ irfft2(spectrum * scale))`` (Mordvintsev et al. 2018).

    ``spectrum`` (n, 3, H, W//2+1, 2) holds real and imaginary parts; ``scale`` is
    ``1 / max(|f|, 1/max(H, W)) ** decay`` with ``|f|`` the frequency in cycles per pixel. The
    optimiser moves ``spectrum``, whose coefficients all start with the same spread, and every
    move reaches the image multiplied by ``scale``: a step changes low frequencies far *more*
    than high ones (the image change has a ~1/f amplitude spectrum, as natural images do; with
    plain SGD the gradient is scaled once more, ~1/f**2). Plain pixels do the opposite: the
    gradient of a CNN is dominated by high frequencies, so pixel steps add fine-grained noise.
    Lecture 05 measures the low-to-high power ratio of the image change for both.
    ``decorrelate`` mixes the three channels through a colour
    basis (default :func:`opponent_colours`; ``colour_basis(images)`` fits one to data).
    The map is invertible: ``param(param.inverse(x)) == x`` for images in (0, 1). Its backward is
    written out (first derivatives only; see ``_FourierSignal``).
    """

    def __init__(self, size: int | tuple[int, int] = 64, *, decay: float = 1.0, decorrelate: bool = True,
                 colour: torch.Tensor | None = None, sd: float = 0.01):
        self.hw = (size, size) if isinstance(size, int) else tuple(size)
        self.decay, self.sd = decay, sd
        h, w = self.hw
        fy = torch.fft.fftfreq(h)[:, None]  # (H, 1) cycles per pixel
        fx = torch.fft.rfftfreq(w)[None, :]  # (1, W//2+1)
        freq = (fy**2 + fx**2).sqrt()
        self.scale = 1.0 / freq.clamp_min(1.0 / max(h, w)) ** decay  # (H, W//2+1)
        if decorrelate:
            self.colour = (opponent_colours() if colour is None else torch.as_tensor(colour, dtype=torch.float32))
        else:
            self.colour = torch.eye(3)

    def init(self, n: int, g: torch.Generator) -> torch.Tensor:
        h, w = self.hw
        return torch.randn(n, 3, h, w // 2 + 1, 2, generator=g) * self.sd  # (n, 3, H, W//2+1, 2)

    def _on(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(scale, colour, adjoint weight)`` on ``device``, copied there once (not at every step of :func:`render`);
        the scale and the weight as (H, W//2+1, 2)."""
        key = (device, dtype, id(self.scale), id(self.colour))  # a reassigned scale or colour is copied afresh
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            cache.clear()
            scale = self.scale.to(device, dtype)
            # irfft2 counts the bins of the half spectrum twice, except the first and (W even) the last
            twice = torch.full((scale.shape[-1],), 2.0, dtype=dtype, device=device)
            twice[0] = 1.0
            if self.hw[1] % 2 == 0:
                twice[-1] = 1.0
            # (H, W//2+1, 2): the same number for the real and imaginary part, laid out like the parameters
            # (a product that broadcasts over a last axis of 2 is several times slower than one that does not)
            pair = lambda t: t[..., None].expand(*t.shape, 2).contiguous()
            cache[key] = (pair(scale), self.colour.to(device, dtype), pair(scale * twice))
        return cache[key]

    def signal(self, p: torch.Tensor) -> torch.Tensor:
        """The pre-sigmoid image ``colour @ irfft2(spectrum * scale)`` (n, 3, H, W)."""
        scale, colour, weight = self._on(p.device, p.dtype)
        return _FourierSignal.apply(p, scale, colour, weight, self.hw)

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.signal(p))

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.einsum("ij,njhw->nihw", torch.linalg.inv(self.colour).to(x.device, x.dtype), _logit(x))
        spec = torch.fft.rfft2(z, norm="ortho") / self.scale.to(x.device)
        return torch.view_as_real(spec).contiguous()


# ============================================================================ transformations
# A transformation is ``t(x, g) -> x'``: x (N, K, H, W) with any number of channels K, g a
# CPU torch.Generator. Each draws one random setting per image (the first axis) and keeps
# pixel values within the range they had (padding uses a constant inside it).

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def pad(p: int, value: float = 0.5) -> Transform:
    """Pad every side by ``p`` pixels of ``value`` (a grey border, so jitter does not wrap around)."""
    return lambda x, g: F.pad(x, [p] * 4, value=value)


def jitter(d: int) -> Transform:
    """Crop each image at a random offset in ``0..d`` along each axis: the result is (H-d, W-d).

    A shift that loses a border, never a roll (rolling would wrap the right edge round to the left).
    """

    def t(x, g):
        n, _, h, w = x.shape
        oy = torch.randint(0, d + 1, (n,), generator=g).tolist()  # CPU generator: no device sync
        ox = torch.randint(0, d + 1, (n,), generator=g).tolist()
        # one slice per image: its backward is a cheap copy, unlike a gather's scatter-add
        return torch.stack([x[i, :, y : y + h - d, xx : xx + w - d] for i, (y, xx) in enumerate(zip(oy, ox))])  # (N, K, H-d, W-d)

    return t


def _grid_sample(x: torch.Tensor, grid: torch.Tensor, padding_mode: str, channels: int = 3) -> torch.Tensor:
    """``F.grid_sample`` (bilinear, align_corners=False), on the CPU by images of at most ``channels`` channels.

    :func:`render` folds its K objectives into the channel axis (n, K*3, H, W) so that they share
    the draws. On the CPU, ``grid_sample`` and above all its backward are much slower per channel
    for an image with many channels than for many images with few (one thread, 48 channels of
    64 x 64 onto 66 x 66, forward and backward: 9.2 ms as one image, 5.8 ms as 16 images of 3
    channels); they also share the work out over images only. So the channels are cut into
    groups of at most ``channels`` (the largest divisor of the count), each group becomes an image
    of its own with its image's grid, and the result is put back together: the same numbers, since
    every channel is sampled on its own. On other devices the call is left as it is."""
    n, c = x.shape[:2]
    per = next(k for k in range(min(channels, c), 0, -1) if c % k == 0)
    if x.device.type != "cpu" or per == c:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    groups = c // per
    grids = grid[:, None].expand(n, groups, *grid.shape[1:]).reshape(n * groups, *grid.shape[1:])  # a view when n == 1
    out = F.grid_sample(x.reshape(n * groups, per, *x.shape[2:]), grids, mode="bilinear", padding_mode=padding_mode,
                        align_corners=False)
    return out.view(n, c, *out.shape[2:])


def _affine(x: torch.Tensor, s: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Zoom by ``s`` (N,) and rotate by ``angle`` (N,) radians about the centre, same size (bilinear)."""
    cos, sin = angle.cos() / s, angle.sin() / s
    zero = torch.zeros_like(s)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return _grid_sample(x, grid, "border")


def scale(factors: tuple[float, float] = (0.9, 1.1)) -> Transform:
    """Zoom each image by a factor drawn uniformly from ``factors`` (>1 zooms in), same size."""
    lo, hi = factors
    return lambda x, g: _affine(x, lo + (hi - lo) * torch.rand(x.shape[0], generator=g), torch.zeros(x.shape[0]))


def rotate(degrees: float = 10.0) -> Transform:
    """Rotate each image by an angle drawn uniformly from ``[-degrees, degrees]``, same size."""
    return lambda x, g: _affine(x, torch.ones(x.shape[0]), math.radians(degrees) * (2 * torch.rand(x.shape[0], generator=g) - 1))


def compose(*transforms: Transform) -> Transform:
    """Apply the transformations left to right."""

    def t(x, g):
        for f in transforms:
            x = f(x, g)
        return x

    return t


def default_transforms() -> Transform:
    """pad 4, jitter 4, scale 0.9-1.1, rotate +-10 degrees, jitter 2 (for 64x64 images), step by step.

    :func:`render` does the same steps with the same draws as one resample (:func:`one_resample`)
    unless told ``transforms="composed"``."""
    return compose(pad(4), jitter(4), scale((0.9, 1.1)), rotate(10), jitter(2))


@functools.lru_cache(maxsize=8)
def _base_grid(h: int, w: int) -> torch.Tensor:
    """(h*w, 3): the normalised centre ``(x, y, 1)`` of each pixel (align_corners=False), row-major, the grid that
    ``F.affine_grid`` builds afresh at every call and multiplies by theta; kept here (it is read, never written)."""
    ys = torch.arange(h, dtype=torch.float64).mul_(2).add_(1).div_(h).sub_(1)
    xs = torch.arange(w, dtype=torch.float64).mul_(2).add_(1).div_(w).sub_(1)
    return torch.stack([xs.repeat(h), ys.repeat_interleave(w), torch.ones(h * w, dtype=torch.float64)], 1).float()


def one_resample(p: int = 4, d1: int = 4, factors: tuple[float, float] = (0.9, 1.1), degrees: float = 10.0,
                 d2: int = 2, value: float = 0.5) -> Transform:
    """``compose(pad(p, value), jitter(d1), scale(factors), rotate(degrees), jitter(d2))`` as ONE bilinear
    resample: the same random draws, taken from ``g`` in the same order, and the same output size.

    The composition resamples twice (scale, then rotate), and each resample blurs a little; here the
    four geometric steps become one map from output pixels to input positions, sampled once. Where
    the slow path clamps a position to the border of an intermediate image (``grid_sample``'s
    ``border`` mode) this path clamps the position there too, so the two agree exactly (up to
    rounding) whenever at most one of the two resamples moves pixels off the grid (a scale of
    exactly 1 or an angle of 0); otherwise they differ by the blur of the second interpolation.
    Pixels from outside the image take ``value``, as with :func:`pad`. About twice as fast as the
    composition (one ``grid_sample`` and its backward instead of two, no padded copy, no crops).
    This is what :func:`render` uses by default.
    """
    lo, hi = factors
    rad = math.radians(degrees)

    def t(x, g):
        n, _, h, w = x.shape
        oy1 = torch.randint(0, d1 + 1, (n,), generator=g)  # the draws of compose(pad, jitter, scale, rotate, jitter), in order
        ox1 = torch.randint(0, d1 + 1, (n,), generator=g)
        s = lo + (hi - lo) * torch.rand(n, generator=g)
        angle = rad * (2 * torch.rand(n, generator=g) - 1)
        oy2 = torch.randint(0, d2 + 1, (n,), generator=g)
        ox2 = torch.randint(0, d2 + 1, (n,), generator=g)
        hm, wm = h + 2 * p - d1, w + 2 * p - d1  # the size of the middle images (after pad and the first jitter)
        ho, wo = hm - d2, wm - d2  # the output size
        # Normalised coordinates (align_corners=False: pixel i of a size-m axis sits at (2i+1)/m - 1).
        # 1) output pixel -> middle image B (second jitter): u = x_out * wo/wm + (wo + 2*ox2)/wm - 1, then the
        #    rotation (the last resample of the composition) about B's centre: one affine_grid for both;
        # 2) clamped to B as grid_sample's border mode does, zoomed by 1/s (the first resample), clamped again;
        # 3) B -> the padded image (first jitter) -> the input image (pad): u_in = (u + 1) * wm/w + 2(o1 - p)/w - 1.
        # the per-image numbers are few: computed in Python (float64), then one small tensor each
        sx, sy = wo / wm, ho / hm
        theta, inv, shift = [], [], []
        for a, z, y1, x1, y2, x2 in zip(angle.tolist(), s.tolist(), oy1.tolist(), ox1.tolist(), oy2.tolist(), ox2.tolist()):
            c, si = math.cos(a), math.sin(a)
            tx, ty = (wo + 2 * x2) / wm - 1, (ho + 2 * y2) / hm - 1
            theta.append([[c * sx, -si * sy, c * tx - si * ty], [si * sx, c * sy, si * tx + c * ty]])
            inv.append(1 / z)
            shift.append([(wm + 2 * (x1 - p)) / w - 1, (hm + 2 * (y1 - p)) / h - 1])
        grid = (_base_grid(ho, wo) @ torch.tensor(theta).transpose(1, 2)).view(n, ho, wo, 2)  # in B, x then y: F.affine_grid's
        edge = torch.tensor([1 - 1 / wm, 1 - 1 / hm])  # the centres of B's border pixels
        grid = torch.clamp(grid, -edge, edge)
        grid = torch.clamp(grid * torch.tensor(inv)[:, None, None, None], -edge, edge)
        grid = torch.addcmul(torch.tensor(shift)[:, None, None, :], grid, torch.tensor([wm / w, hm / h]))  # in the input image
        # zeros outside the image, shifted by value: bilinear weights sum to 1, so this is padding with value
        out = _grid_sample(x - value, grid.to(x.device, x.dtype), "zeros")
        return out + value  # (n, K, ho, wo)

    return t


DEFAULT_TRANSFORMS = "default"
ONE_RESAMPLE = "one_resample"
COMPOSED = "composed"
# render's named transformations: "default" and "one_resample" are the default transformations done as one
# resample (the same draws as the composition, one interpolation instead of two); "composed" runs them step by step
_NAMED_TRANSFORMS = {DEFAULT_TRANSFORMS: one_resample, ONE_RESAMPLE: one_resample, COMPOSED: default_transforms}


# ============================================================================ reading activations

@contextmanager
def activations(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of ``layers`` during the block, in the autograd graph, in a dict.

    Built on :func:`course_lib.hooks.patch`: each output is recorded and a *copy* goes on
    through the network, so a later in-place operation (``ReLU(inplace=True)`` after a
    batch-norm) cannot change what was recorded. Hooks are removed on exit.
    """
    acts: dict[str, torch.Tensor] = {}

    def recorder(name):
        def fn(out):
            acts[name] = out
            return out.clone()

        return fn

    with ExitStack() as stack:
        for name in dict.fromkeys(layers):
            if name in _RESERVED:
                continue
            get_module(model, name)  # a clear error for a wrong name
            stack.enter_context(patch(model, name, recorder(name)))
        yield acts


def _forward(
    model: nn.Module, objective: Objective, x: torch.Tensor, x_seen: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``x_seen`` (default ``x``) and return the activations the objective reads."""
    with activations(model, objective.layers) as acts:
        logits = model(x if x_seen is None else x_seen)
    acts = dict(acts)
    acts[LOGITS], acts[INPUT] = logits, x
    return acts


@torch.no_grad()
def evaluate(model: nn.Module, objective: Objective, images: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """The objective's value on each image (N,), on ``images``' device, computed in chunks of ``batch_size``.

    Objectives that compare images with each other (:func:`diversity`) see one chunk at a time.
    """
    require_eval(model, "evaluate")
    dev = model_device(model)
    out = [objective(_forward(model, objective, images[s : s + batch_size].to(dev))) for s in range(0, len(images), batch_size)]
    return torch.cat(out).to(images.device)


# ============================================================================ render

@dataclass
class RenderResult:
    """What :func:`render` returns. ``images`` (K*n, 3, H, W) in [0, 1], objective-major
    (objective k's images are ``images[k*n:(k+1)*n]``); ``values`` (K*n,) each image's objective
    without transformations; ``history`` (steps, K*n) the objective at every step (with the
    random transformations, as the optimiser saw it); ``params`` the optimised parameters."""

    images: torch.Tensor
    values: torch.Tensor
    history: torch.Tensor
    params: torch.Tensor = field(repr=False)
    n_per_objective: int = 1

    def __repr__(self) -> str:
        return (f"RenderResult(images={tuple(self.images.shape)}, steps={self.history.shape[0]}, "
                f"final values={[round(v, 3) for v in self.values.tolist()[:8]]}{'...' if len(self.values) > 8 else ''})")


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


def _plan(objs: Sequence[Objective], n: int) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """A function ``acts -> (K*n,)``: objective ``i`` on its own ``n`` images, from the activations of all K*n images.

    Through the objectives' linear forms: a row-wise term that several objectives share (the same
    ``key``) is evaluated once on the whole batch and weighted per image; the other terms see their
    objective's part of each layer. The parts are cut once with ``split`` (its backward writes all
    parts into one gradient tensor), not sliced per objective (each slice's backward would fill and
    add a zero gradient of the whole layer). Each image's value is the same as ``objs[i]`` on its
    own images (up to the order of the additions). Which terms are shared is worked out here, once:
    :func:`render` calls the plan at every step (for 16 channel objectives the bookkeeping took
    ~1.5 ms per call, about as long as a tenth of the model's forward pass).
    """
    k = len(objs)
    users: dict[object, dict[int, float]] = {}  # term -> {objective: summed weight}
    leaves: dict[object, Objective] = {}
    for i, o in enumerate(objs):
        for w, leaf in o.terms:
            gk = leaf if leaf.key is None else leaf.key
            leaves.setdefault(gk, leaf)
            users.setdefault(gk, {})[i] = users.get(gk, {}).get(i, 0.0) + w
    shared = [gk for gk, us in users.items() if len(us) > 1 and leaves[gk].rowwise]
    # families (channel c of one layer, logit c): one batched evaluation, each image at its own index,
    # where several objectives use the family and none uses two of its members
    members: dict[tuple, list] = {}
    for gk, leaf in leaves.items():
        if leaf.family is not None and gk not in shared:
            members.setdefault(leaf.family[0], []).append(gk)
    families = []
    for gks in members.values():
        objectives_of = [i for gk in gks for i in users[gk]]
        if len(objectives_of) > 1 and len(set(objectives_of)) == len(objectives_of):
            families.append(gks)
    if not shared and not families and k == 1:
        return objs[0]
    shared_set = set(shared) | {gk for gks in families for gk in gks}
    own: list[tuple[list[tuple[float, Objective]], float]] = []  # per objective: (weighted terms on its own part, constant)
    for i, o in enumerate(objs):
        terms, done = [], set()
        for _w, leaf in o.terms:
            gk = leaf if leaf.key is None else leaf.key
            if gk in shared_set or gk in done:
                continue
            done.add(gk)
            terms.append((users[gk][i], leaf))
        own.append((terms, float(o.const)))
    shared_weights = [
        (leaves[gk], torch.tensor([users[gk].get(i, 0.0) for i in range(k)], dtype=torch.float64).repeat_interleave(n))
        for gk in shared
    ]  # (K*n,) each
    family_terms = []
    for gks in families:
        weights, index = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.long)
        for gk in gks:
            for i, w in users[gk].items():
                weights[i], index[i] = w, leaves[gk].family[1]
        family_terms.append(
            (leaves[gks[0]], index.repeat_interleave(n), None if bool((weights == 1).all()) else weights.repeat_interleave(n))
        )
    family_max = [max(leaves[gk].family[1] for gk in gks) for gks in families]  # checked against the layer once
    any_own = any(terms for terms, _ in own)
    consts = torch.tensor([c for _, c in own], dtype=torch.float64).repeat_interleave(n)  # (K*n,) when no term is an objective's own
    on_device: dict[tuple, tuple] = {}  # the weights and indices, copied once per (device, dtype)

    def evaluate(acts: dict[str, torch.Tensor]) -> torch.Tensor:
        ref = next(iter(acts.values()))
        key = (ref.device, ref.dtype)
        if key not in on_device:
            for (leaf, _, _), top in zip(family_terms, family_max):
                fam = leaf.family[0]
                name = LOGITS if fam[0] == "logit" else fam[1]
                if name in acts:
                    _in_range(acts[name], top, "class_logit" if fam[0] == "logit" else "channel", "c",
                              "classes" if fam[0] == "logit" else "channels")
            on_device[key] = (
                [w.to(ref.device, ref.dtype) for _, w in shared_weights],
                [(idx.to(ref.device), None if w is None else w.to(ref.device, ref.dtype)) for _, idx, w in family_terms],
                consts.to(ref.device, ref.dtype),
            )
        shared_w, family_iw, out = on_device[key]
        if any_own:
            parts = {name: v.split(n) for name, v in acts.items()}  # {name: K views (n, ...)}
            values = []
            for i, (terms, const) in enumerate(own):
                mine = {name: p[i] for name, p in parts.items()}
                v = None
                for w, leaf in terms:
                    t = leaf(mine)
                    t = t if w == 1.0 else w * t
                    v = t if v is None else v + t
                if v is None:
                    v = ref.new_full((n,), const)
                elif const:
                    v = v + const
                values.append(v)
            out = torch.cat(values)  # (K*n,)
        for (leaf, _), w in zip(shared_weights, shared_w):
            out = out + w * leaf(acts)
        for (leaf, _, _), (idx, w) in zip(family_terms, family_iw):
            for name in leaf.layers:  # the same clear error as calling the leaf
                if name not in acts:
                    raise KeyError(f"objective {leaf.name!r} reads {[name]}, which are not among the activations {sorted(acts)}")
            term = leaf.family[2](acts, idx)  # (K*n,)
            out = out + (term if w is None else w * term)
        return out

    return evaluate


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
    require_eval(model, "render")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("render needs gradients, but it was called inside torch.inference_mode(); call it outside.")
    from ..games import progress_bar

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
    return RenderResult(images.detach().to(out_dev), final.to(out_dev), history.cpu(), params.detach().to(out_dev), n)


# ============================================================================ dataset search

@dataclass
class SearchResult:
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
    if not 1 <= k <= len(images):
        raise ValueError(f"k should be between 1 and the number of images ({len(images)}); got {k}")
    vals = evaluate(model, objective, images, batch_size=batch_size).cpu()  # (N,)
    idx = torch.sort(vals, descending=largest, stable=True).indices[:k]  # stable: ties keep the lower index first
    top = images[idx.to(images.device)]
    res = SearchResult(idx.to(images.device), vals[idx].to(images.device), top)
    if region is not None:
        layer, c = region
        dev = model_device(model)
        with activations(model, [layer]) as acts:
            model(top.to(dev))
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
    x = images - images.mean((2, 3), keepdim=True)
    power = torch.fft.fft2(x, norm="ortho").abs().pow(2).mean((0, 1))  # (H, W)
    h, w = power.shape
    f = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.fftfreq(w)[None] ** 2).sqrt().to(power.device)
    edges = torch.linspace(0, float(f.max()) + 1e-6, n_bins + 1, device=power.device)
    idx = torch.bucketize(f.flatten(), edges[1:-1])  # (H*W,) ring of each frequency
    total = torch.zeros(n_bins, device=power.device).index_add_(0, idx, power.flatten())
    count = torch.zeros(n_bins, device=power.device).index_add_(0, idx, torch.ones_like(power.flatten()))
    return (edges[:-1] + edges[1:]) / 2, total / count.clamp_min(1)
