"""Parameterisations: what the optimiser moves (raw pixels, or a 1/f-scaled Fourier spectrum with
decorrelated colour); both map to images in [0, 1] through a sigmoid.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ... import checks
from .fast import _FourierSignal

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
    scales = list(scales) if not isinstance(scales, (str, bytes)) else scales
    if isinstance(scales, (str, bytes)) or len(scales) != 3:
        raise ValueError(f"opponent_colours: scales must be 3 numbers (luminance, red-green, blue-yellow); got {scales!r:.40}")
    for v in scales:
        checks.positive_number(v, "scales", what="opponent_colours")
    axes = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [1.0, 1.0, -2.0]])
    axes = axes / axes.norm(dim=1, keepdim=True)  # rows: luminance, red-green, blue-yellow
    return axes.T * torch.tensor(scales, dtype=torch.float32)  # columns scaled


def colour_basis(images: torch.Tensor) -> torch.Tensor:
    """The square root of the colour covariance of ``images`` (N, 3, H, W), (3, 3), normalised so
    its largest column has norm 1: independent unit-variance coefficients mapped through it
    get the colour correlations of the data (what "decorrelated colour" undoes)."""
    checks.images(images, "images", what="colour_basis", check_range=False)
    if images.shape[1] != 3:
        raise ValueError(f"colour_basis: images must have 3 colour channels (N, 3, H, W); got shape {tuple(images.shape)}")
    if images[0].numel() < 6 and images.shape[0] == 1:
        raise ValueError("colour_basis: images need at least 2 pixels to estimate a colour covariance")
    px = images.permute(1, 0, 2, 3).reshape(3, -1).double()
    cov = torch.cov(px)
    evals, evecs = torch.linalg.eigh(cov)
    sqrt = evecs * evals.clamp_min(0).sqrt()
    return (sqrt / sqrt.norm(dim=0).max()).float()



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
