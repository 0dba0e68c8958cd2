"""Data attribution: which training images support a prediction (kNN cosine, representer points)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ... import checks
from ...device import to_model
from ...hooks import capture
from .._checks import module_name
from ..results import PerturbationResult
from .tcav import _check_batch_size, _check_images, _targets


# ----------------------------------------------------------------------------- data attribution


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, *, layer: str = "features", batch_size: int = 128) -> torch.Tensor:
    """The activations of ``layer`` averaged over space (what a GAP head sees): (N, C), float32 on the CPU."""
    checks.module(model, what="penultimate_features")
    _check_images(x, "penultimate_features")
    batch_size = _check_batch_size(batch_size, "penultimate_features")
    module_name(model, layer, "penultimate_features")
    out = []
    with capture(model, layer) as acts:
        for s in range(0, x.shape[0], batch_size):
            model(to_model(x[s : s + batch_size], model))
            a = acts[layer]
            out.append((a.mean((2, 3)) if a.dim() == 4 else a.flatten(1)).float().cpu())
    return torch.cat(out)


@dataclass(kw_only=True, repr=False)
class DataAttributionResult(PerturbationResult):
    """Training-image scores for test images: ``values`` (N_train,) for one test image or
    (N_train, B) for B; ``top(k, output=j)`` gives the k most supporting training images of test
    image j (``by_abs=False`` is the default here). ``budget``: images passed through the model."""

    targets: torch.Tensor | None = field(default=None, repr=False)  # (B,) classes explained (representer)

    def top(self, k: int, *, by_abs: bool = False, output: int = 0) -> torch.Tensor:
        return super().top(k, by_abs=by_abs, output=output)

    def __str__(self) -> str:
        v = self.values if self.values.dim() == 1 else self.values[:, 0]
        shown = self.top(5).tolist()
        parts = ", ".join(f"{self.name(i)} {float(v[i]):+.3g}" for i in shown)
        more = "" if self.values.dim() == 1 else f" (test image 0 of {self.values.shape[1]})"
        return f"{self.method}: most supporting of {self.n_players} training images{more}: {parts}"


def data_attribution(
    model: nn.Module,
    x_test: torch.Tensor,
    train_x: torch.Tensor,
    train_y: torch.Tensor | None = None,
    *,
    method: str = "cosine",
    layer: str = "features",
    target=None,
    batch_size: int = 128,
) -> DataAttributionResult:
    """Which training images support the model's prediction on ``x_test`` (B, 3, H, W)?

    - ``method="cosine"``: cosine similarity of pooled ``layer`` features (the kNN view);
    - ``method="representer"``: ``alpha_ik * (f_i . f_t)`` with ``alpha_ik = [y_i = k] - softmax_k(x_i)``
      (needs ``train_y``); ``target`` (int or (B,)) is the class ``k`` explained, default the
      predicted class of each test image.

    Returns :class:`DataAttributionResult` with ``values`` (N_train, B) (or (N_train,) for one image,
    x_test of shape (3, H, W)), on x_test's device.
    """
    what = "data_attribution"
    checks.module(model, what=what)
    single = isinstance(x_test, torch.Tensor) and x_test.dim() == 3
    xt = x_test[None] if single else x_test
    _check_images(xt, what, "x_test")
    _check_images(train_x, what, "train_x")
    module_name(model, layer, what)
    if train_x.shape[1:] != xt.shape[1:]:
        raise ValueError(f"{what}: train_x has images of shape {tuple(train_x.shape[1:])}, x_test {tuple(xt.shape[1:])}")
    if method not in ("cosine", "representer"):
        raise ValueError(f"{what}: method must be 'cosine' or 'representer'; got {method!r}")
    ft = penultimate_features(model, xt, layer=layer, batch_size=batch_size)  # (B, C)
    fi = penultimate_features(model, train_x, layer=layer, batch_size=batch_size)  # (N, C)
    targets = None
    if method == "cosine":
        values = torch.nn.functional.normalize(fi, dim=1) @ torch.nn.functional.normalize(ft, dim=1).T  # (N, B)
    else:
        if train_y is None:
            raise ValueError(f"{what}: method='representer' needs train_y, the training labels (N,)")
        train_y = checks.integers(train_y, "train_y", what=what, dims=1, kind="label").long().cpu()
        if train_y.shape != (train_x.shape[0],):
            raise ValueError(f"{what}: train_y must have shape ({train_x.shape[0]},); got {tuple(train_y.shape)}")
        with torch.no_grad():
            p_train = torch.cat([model(to_model(train_x[s : s + batch_size], model)).softmax(-1).cpu()
                                 for s in range(0, train_x.shape[0], batch_size)])  # (N, K)
            K = p_train.shape[1]
            if target is None:
                targets = torch.cat([model(to_model(xt[s : s + batch_size], model)).argmax(-1).cpu()
                                     for s in range(0, xt.shape[0], batch_size)])
            else:
                ts, _ = _targets(target if not isinstance(target, torch.Tensor) or target.dim() else int(target), K, what)
                targets = torch.tensor(ts).expand(xt.shape[0]) if len(ts) == 1 else torch.tensor(ts)
                if targets.shape[0] != xt.shape[0]:
                    raise ValueError(f"{what}: target must be one class or one per test image ({xt.shape[0]}); got {len(ts)}")
        if int(train_y.max()) >= K or int(train_y.min()) < 0:
            raise ValueError(f"{what}: train_y holds labels outside 0..{K - 1}")
        alpha = torch.nn.functional.one_hot(train_y, K).float() - p_train  # (N, K)
        values = alpha[:, targets] * (fi @ ft.T)  # (N, B)
    values = values.to(xt.device)
    return DataAttributionResult(
        values=values[:, 0] if single else values, budget=int(xt.shape[0] + train_x.shape[0]),
        method=f"data attribution ({method}, {layer!r} pooled)",
        player_names=[f"train {i}" for i in range(train_x.shape[0])], targets=targets,
    )
