"""The speed machinery of feature visualisation, kept apart so the teaching path reads top to bottom.

Each piece computes exactly what a plain torch expression computes (tests compare them with
autograd, ``gradcheck`` and ``F.grid_sample``), with fewer passes over memory on the CPU:
total variation and the Fourier image with their backward written out, and ``grid_sample`` by
images of 3 channels. Measurements: tests/benchmarks/bench_featurevis.py.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


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

def _grid_sample(x: torch.Tensor, grid: torch.Tensor, padding_mode: str, channels: int = 3) -> torch.Tensor:
    """``F.grid_sample`` (bilinear, align_corners=False), on the CPU by images of at most ``channels`` channels.

    :func:`render` folds its K objectives into the channel axis (n, K*3, H, W) so that they share
    the draws. On the CPU, ``grid_sample`` and above all its backward are much slower per channel
    for an image with many channels than for many images with few (~1.6x: tests/benchmarks/bench_featurevis.py);
    they also share the work out over images only. So the channels are cut into
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

@functools.lru_cache(maxsize=8)
def _base_grid(h: int, w: int) -> torch.Tensor:
    """(h*w, 3): the normalised centre ``(x, y, 1)`` of each pixel (align_corners=False), row-major, the grid that
    ``F.affine_grid`` builds afresh at every call and multiplies by theta; kept here (it is read, never written)."""
    ys = torch.arange(h, dtype=torch.float64).mul_(2).add_(1).div_(h).sub_(1)
    xs = torch.arange(w, dtype=torch.float64).mul_(2).add_(1).div_(w).sub_(1)
    return torch.stack([xs.repeat(h), ys.repeat_interleave(w), torch.ones(h * w, dtype=torch.float64)], 1).float()
