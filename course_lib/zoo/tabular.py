"""Tabular models: an MLP on scikit-learn's diabetes data, and the fever/cough rules.

The fever/cough models are the exact toy of the Shapley lecture: two binary symptoms,
F and C, and a risk score. Model A = 80 * [F and C]; model B = A + 10 * [C].
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..device import seeded_cpu_rng


class DiabetesMLP(nn.Module):
    """10 standardised-by-sklearn features -> disease progression one year later (the raw target).

    The affine maps in and out are buffers, so the model takes ``load_diabetes().data`` as is.
    """

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(10))
        self.register_buffer("x_std", torch.ones(10))
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))
        self.net = nn.Sequential(nn.Linear(10, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 10) -> (B,)
        if x.dim() != 2 or x.shape[1] != 10:
            raise ValueError(f"DiabetesMLP takes rows (B, 10) of load_diabetes().data; got shape {tuple(x.shape)}")
        z = (x - self.x_mean) / self.x_std
        return self.net(z).squeeze(-1) * self.y_std + self.y_mean


def diabetes_data():
    """``(X, y, feature_names)`` as float32 tensors, with a fixed 80/20 train/test split index."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    X = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.float32)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(X)))
    n_train = int(0.8 * len(X))
    return X, y, list(d.feature_names), perm[:n_train], perm[n_train:]


def train_diabetes_mlp(*, epochs: int = 800, l2: float = 0.03, seed: int = 0, log=print) -> DiabetesMLP:
    """Full-batch Adam with an L2 penalty on the weights, on the fixed training split (a few seconds).

    442 rows are few: without the penalty the MLP memorises the training rows (test R^2 < 0).
    With it, test R^2 is about 0.37, a little above linear regression's 0.35 on this split.
    """
    with seeded_cpu_rng(seed):  # the global generator draws the initial weights; the caller's state is put back
        X, y, _, tr, te = diabetes_data()
        model = DiabetesMLP()
        model.x_mean.copy_(X[tr].mean(0))
        model.x_std.copy_(X[tr].std(0))
        model.y_mean.copy_(y[tr].mean())
        model.y_std.copy_(y[tr].std())
        opt = torch.optim.Adam(model.net.parameters(), lr=3e-3)
        weights = [p for n, p in model.net.named_parameters() if n.endswith("weight")]
        for _ in range(epochs):
            loss = ((model(X[tr]) - y[tr]) / model.y_std).pow(2).mean() + l2 * sum((w**2).sum() for w in weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            r2 = 1 - ((model(X[te]) - y[te]) ** 2).mean() / y[te].var()
        log(f"diabetes MLP: test R^2 = {r2:.3f}")
        return model


class FeverCough(nn.Module):
    """The fever/cough rule as an exact function of x = (fever, cough) in {0, 1}^2.

    ``"A"``: 80 if both symptoms, else 0. ``"B"``: A plus 10 for a cough.
    """

    def __init__(self, variant: str = "A"):
        super().__init__()
        if variant not in ("A", "B"):
            raise ValueError(f"variant must be 'A' or 'B'; got {variant!r}")
        self.variant = variant
        self.feature_names = ["fever", "cough"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2) -> (B,)
        if x.dim() != 2 or x.shape[1] != 2:
            raise ValueError(f"FeverCough takes (B, 2) rows of (fever, cough) in {{0, 1}}; got shape {tuple(x.shape)}")
        f, c = x[:, 0], x[:, 1]
        out = 80.0 * f * c
        if self.variant == "B":
            out = out + 10.0 * c
        return out


def fever_cough_background() -> torch.Tensor:
    """The four (fever, cough) combinations, uniformly: the background of the lecture's example."""
    return torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
