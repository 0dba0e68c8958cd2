"""Objectives: functions of the activations to maximise, ``acts -> (B,)``, that add, subtract and scale.

An objective reads activations by dotted module name, with two reserved names: ``"input"``
(the image before the random transformations) and ``"logits"`` (the model's output).
Penalties on the image (L1, L2, total variation, blur) are objectives too.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ... import checks
from .fast import _AnisotropicTV

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
    v = checks.values(v if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=torch.float32), "v", what="direction",
                      dims=1, shape="(C,)").float()

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
    centre = checks.real(centre, "centre", what="l1")
    return Objective(lambda acts: (acts[INPUT] - centre).abs().mean((1, 2, 3)), [INPUT], "l1", key=("l1", centre), rowwise=True)


def l2(centre: float = 0.5) -> Objective:
    """Mean squared deviation from ``centre`` (B,): the L2 term of Simonyan et al. (2014)."""
    centre = checks.real(centre, "centre", what="l2")
    return Objective(lambda acts: ((acts[INPUT] - centre) ** 2).mean((1, 2, 3)), [INPUT], "l2", key=("l2", centre), rowwise=True)



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
    k = checks.positive_int(k, "k", what="blur_penalty")
    return Objective(lambda acts: ((acts[INPUT] - _box_blur(acts[INPUT], k).detach()) ** 2).mean((1, 2, 3)), [INPUT], "blur",
                     key=("blur", k), rowwise=True)
