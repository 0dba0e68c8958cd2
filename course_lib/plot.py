"""Pictures for the notebooks (matplotlib). No computation happens here."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch


def _values_and_names(values, names):
    """Accept a result of the perturbation family (``values``, ``player_names``) or plain values."""
    if hasattr(values, "values") and hasattr(values, "player_names") and isinstance(values.values, torch.Tensor):
        names = names if names is not None else values.player_names
        values = values.values
    v = values.detach().cpu() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values, float))
    if v.dim() == 2:
        v = v[:, 0]  # a multi-output result: its first output
    v = v.double().numpy()
    if names is None:
        names = [str(i) for i in range(len(v))]
    return v, list(names)


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


def heatmap_overlay(
    image, heat, *, ax=None, alpha: float = 0.55, cmap: str = "RdBu_r", title: str | None = None, colorbar: bool = True
):
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


def bar(values, names: Sequence[str] | None = None, *, ax=None, title: str | None = None, xlabel: str = "", sort: bool = False):
    """Horizontal bars, positive red and negative blue. ``values`` (d,) with ``names``, or a
    result (LIME, Shapley) whose ``player_names`` are used."""
    v, names = _values_and_names(values, names)
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


def token_plot(words, scores=None, *, ax=None, title: str | None = None):
    """Words coloured by a signed score (red up, blue down), in one line. ``token_plot(words,
    scores)`` or ``token_plot(result)`` for a result of a token game (its players are the words)."""
    if scores is None:
        s, words = _values_and_names(words, None)
    else:
        s, words = _values_and_names(scores, words)
    lim = float(np.abs(s).max()) or 1.0
    cmap = plt.get_cmap("RdBu_r")
    if ax is None:
        _, ax = plt.subplots(figsize=(min(14, 0.9 * len(words) + 1), 0.9))
    ax.axis("off")
    x = 0.0
    for w, v in zip(words, s):
        ax.text(x, 0.5, w, fontsize=12, va="center", bbox=dict(facecolor=cmap(0.5 + 0.5 * v / lim), edgecolor="none", pad=2))
        x += 0.012 * (len(w) + 2)
    ax.set_xlim(0, max(1.0, x))
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def attack_panel(x, x_adv, probs_before, probs_after, class_names: Sequence[str], *, top: int = 4, title: str | None = None):
    """One adversarial example: the image, the perturbation (amplified so that +-max fills
    [0, 1], grey = unchanged), the adversarial image, and the top class probabilities before
    and after. ``x``, ``x_adv``: (3, H, W) in [0, 1]; ``probs_*``: (n_classes,). Returns the figure."""
    delta = (x_adv - x).detach().cpu()
    amp = float(delta.abs().max()) or 1.0
    pb = probs_before.detach().cpu() if isinstance(probs_before, torch.Tensor) else torch.as_tensor(probs_before)
    pa = probs_after.detach().cpu() if isinstance(probs_after, torch.Tensor) else torch.as_tensor(probs_after)
    fig, axes = plt.subplots(1, 5, figsize=(13, 2.8), gridspec_kw={"width_ratios": [1, 1, 1, 1.1, 1.1]})
    ib, ia = int(pb.argmax()), int(pa.argmax())
    panels = [
        (x, f"original: {class_names[ib]} ({pb[ib]:.0%})"),
        (0.5 + 0.5 * delta / amp, f"perturbation x{0.5 / amp:.0f}\n(max |delta| = {amp * 255:.1f}/255)"),
        (x_adv, f"adversarial: {class_names[ia]} ({pa[ia]:.0%})"),
    ]
    for ax, (img, t) in zip(axes[:3], panels):
        ax.imshow(_img(img).clip(0, 1))
        ax.set_title(t, fontsize=9)
        ax.axis("off")
    for ax, p, t in ((axes[3], pb, "before"), (axes[4], pa, "after")):
        order = torch.argsort(p, descending=True)[:top].flip(0)
        ax.barh(range(len(order)), p[order].numpy(), color="tab:gray")
        ax.set_yticks(range(len(order)), [class_names[int(i)] for i in order], fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_title(f"probabilities {t}", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
