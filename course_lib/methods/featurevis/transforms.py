"""Transformations applied at random before every step (pad, jitter, scale, rotate), and the
default ones done as one bilinear resample with the same draws (:func:`one_resample`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ... import checks
from .fast import _base_grid, _grid_sample

# ============================================================================ transformations
# A transformation is ``t(x, g) -> x'``: x (N, K, H, W) with any number of channels K, g a
# CPU torch.Generator. Each draws one random setting per image (the first axis) and keeps
# pixel values within the range they had (padding uses a constant inside it).

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def pad(p: int, value: float = 0.5) -> Transform:
    """Pad every side by ``p`` pixels of ``value`` (a grey border, so jitter does not wrap around)."""
    p, value = checks.non_negative_int(p, "p", what="pad"), checks.real(value, "value", what="pad")
    return lambda x, g: F.pad(x, [p] * 4, value=value)


def jitter(d: int) -> Transform:
    """Crop each image at a random offset in ``0..d`` along each axis: the result is (H-d, W-d).

    A shift that loses a border, never a roll (rolling would wrap the right edge round to the left).
    """
    d = checks.non_negative_int(d, "d", what="jitter")

    def t(x, g):
        n, _, h, w = x.shape
        oy = torch.randint(0, d + 1, (n,), generator=g).tolist()  # CPU generator: no device sync
        ox = torch.randint(0, d + 1, (n,), generator=g).tolist()
        # one slice per image: its backward is a cheap copy, unlike a gather's scatter-add
        return torch.stack([x[i, :, y : y + h - d, xx : xx + w - d] for i, (y, xx) in enumerate(zip(oy, ox))])  # (N, K, H-d, W-d)

    return t



def _affine(x: torch.Tensor, s: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Zoom by ``s`` (N,) and rotate by ``angle`` (N,) radians about the centre, same size (bilinear)."""
    cos, sin = angle.cos() / s, angle.sin() / s
    zero = torch.zeros_like(s)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return _grid_sample(x, grid, "border")


def _factors(factors, what: str) -> tuple[float, float]:
    """A (low, high) pair of zoom factors, 0 < low <= high."""
    if isinstance(factors, (str, bytes)) or not hasattr(factors, "__len__") or len(factors) != 2:
        raise ValueError(f"{what}: factors must be a pair (low, high) of zoom factors, e.g. (0.9, 1.1); got {factors!r:.40}")
    lo, hi = (checks.positive_number(v, "factors", what=what) for v in factors)
    if lo > hi:
        raise ValueError(f"{what}: factors must be (low, high) with low <= high; got {tuple(factors)}")
    return lo, hi


def scale(factors: tuple[float, float] = (0.9, 1.1)) -> Transform:
    """Zoom each image by a factor drawn uniformly from ``factors`` (>1 zooms in), same size."""
    lo, hi = _factors(factors, "scale")
    return lambda x, g: _affine(x, lo + (hi - lo) * torch.rand(x.shape[0], generator=g), torch.zeros(x.shape[0]))


def rotate(degrees: float = 10.0) -> Transform:
    """Rotate each image by an angle drawn uniformly from ``[-degrees, degrees]``, same size."""
    degrees = checks.real(degrees, "degrees", what="rotate")
    return lambda x, g: _affine(x, torch.ones(x.shape[0]), math.radians(degrees) * (2 * torch.rand(x.shape[0], generator=g) - 1))


def compose(*transforms: Transform) -> Transform:
    """Apply the transformations left to right."""
    for i, f in enumerate(transforms):
        if not callable(f):
            raise TypeError(f"compose: transformation {i} must be a function t(x, g), e.g. pad(4) or jitter(2); "
                            f"got {type(f).__name__} {f!r:.40}")

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
    p, d1, d2 = (checks.non_negative_int(v, name, what="one_resample") for v, name in ((p, "p"), (d1, "d1"), (d2, "d2")))
    degrees, value = checks.real(degrees, "degrees", what="one_resample"), checks.real(value, "value", what="one_resample")
    lo, hi = _factors(factors, "one_resample")
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
