"""Pictures for the notebooks (matplotlib). No computation happens here."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch


def _img(x) -> np.ndarray:
    """(3, H, W) or (H, W) tensor/array -> something imshow takes."""
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if x.ndim == 3 and x.shape[0] in (1, 3):
        x = np.moveaxis(x, 0, -1)
    return x.squeeze()


def show_images(images, titles: Sequence[str] | None = None, *, ncols: int = 8, size: float = 1.6, suptitle: str | None = None):
    """A grid of images (N, 3, H, W) in [0, 1]. Returns the figure."""
    n = len(images)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.3 if suptitle else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(_img(images[i]).clip(0, 1))
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def heatmap_overlay(image, heat, *, ax=None, alpha: float = 0.55, cmap: str = "RdBu_r", title: str | None = None, colorbar: bool = True):
    """An image with a signed heat map on top (red = pushes the output up, blue = down)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    h = _img(heat)
    lim = float(np.abs(h).max()) or 1.0
    ax.imshow(_img(image).clip(0, 1))
    im = ax.imshow(h, cmap=cmap, vmin=-lim, vmax=lim, alpha=alpha)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def bar(values, names: Sequence[str], *, ax=None, title: str | None = None, xlabel: str = "", sort: bool = False):
    """Horizontal bars, positive red and negative blue."""
    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, float)
    names = list(names)
    if sort:
        order = np.argsort(np.abs(v))
        v, names = v[order], [names[i] for i in order]
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 0.3 * len(v) + 1))
    ax.barh(range(len(v)), v, color=np.where(v >= 0, "tab:red", "tab:blue"))
    ax.set_yticks(range(len(v)), names)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    return ax


def token_plot(words: Sequence[str], scores, *, ax=None, title: str | None = None):
    """Words coloured by a signed score (red up, blue down), in one line."""
    s = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, float)
    lim = float(np.abs(s).max()) or 1.0
    cmap = plt.get_cmap("RdBu_r")
    if ax is None:
        _, ax = plt.subplots(figsize=(min(14, 0.9 * len(words) + 1), 0.9))
    ax.axis("off")
    x = 0.0
    for w, v in zip(words, s):
        t = ax.text(x, 0.5, w, fontsize=12, va="center", bbox=dict(facecolor=cmap(0.5 + 0.5 * v / lim), edgecolor="none", pad=2))
        x += 0.012 * (len(w) + 2)
    ax.set_xlim(0, max(1.0, x))
    if title:
        ax.set_title(title, fontsize=10)
    return ax
