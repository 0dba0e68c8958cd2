"""Linear probes on activations, with Hewitt & Liang's (2019) control task."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ... import checks
from ..results import Result


# ----------------------------------------------------------------------------- probes
@dataclass(kw_only=True, repr=False)
class ProbeResult(Result):
    """A linear probe: ``logits = x @ weight.T + bias``, fitted on the train rows only.
    ``values`` (2,): ``[train_acc, test_acc]``, on the device of ``weight`` (set from them when built)."""

    train_acc: float
    test_acc: float
    weight: torch.Tensor = field(repr=False)  # (C, D), in the standardised coordinates
    bias: torch.Tensor = field(repr=False)  # (C,)
    mean: torch.Tensor = field(repr=False)  # (D,) of the train rows
    std: torch.Tensor = field(repr=False)
    values: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        self.values = torch.tensor([float(self.train_acc), float(self.test_acc)], device=self.weight.device)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (((x - self.mean) / self.std) @ self.weight.T + self.bias).argmax(-1)


def split_indices(n: int, *, test_fraction: float = 0.25, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``(train, test)`` split of ``range(n)``."""
    n = checks.positive_int(n, "n", what="split_indices", minimum=2)
    test_fraction = checks.probability(test_fraction, "test_fraction", what="split_indices")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(test_fraction * n)))
    return perm[n_test:], perm[:n_test]


def train_probe(x: torch.Tensor, y: torch.Tensor, *, train_idx: torch.Tensor | None = None, test_idx: torch.Tensor | None = None,
                l2: float = 1e-3, steps: int = 100, seed: int = 0) -> ProbeResult:
    """Multinomial logistic regression on ``x (N, D)`` for labels ``y (N,)`` (full-batch L-BFGS),
    fitted on ``train_idx`` and scored on ``test_idx`` (default: a random 75/25 split by ``seed``)."""
    what = "train_probe"
    checks.values(x, "x", what=what, dims=2, shape="(N, D)")
    y = _class_labels(y, len(x), what)
    steps = checks.positive_int(steps, "steps", what=what)
    l2 = checks.positive_number(l2, "l2", what=what, allow_zero=True)
    x = x.float()
    y = y.long().to(x.device)
    if train_idx is None or test_idx is None:
        train_idx, test_idx = split_indices(len(x), seed=seed)
    train_idx, test_idx = train_idx.to(x.device), test_idx.to(x.device)
    mean, std = x[train_idx].mean(0), x[train_idx].std(0) + 1e-6
    z = (x - mean) / std
    n_classes = int(y.max()) + 1
    g = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(n_classes, x.shape[1], generator=g)).to(x.device).requires_grad_(True)
    b = torch.zeros(n_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, line_search_fn="strong_wolfe")
    zt, yt = z[train_idx], y[train_idx]

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(zt @ w.T + b, yt) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w, b = w.detach(), b.detach()
    acc = lambda idx: ((z[idx] @ w.T + b).argmax(-1) == y[idx]).float().mean().item()
    return ProbeResult(train_acc=acc(train_idx), test_acc=acc(test_idx), weight=w, bias=b, mean=mean, std=std)


def control_labels(token_ids: torch.Tensor, labels: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """Hewitt & Liang's control task: each word *type* gets a random label, drawn from the
    labels' empirical distribution; every occurrence of the type carries it. A probe can only
    do well on it by memorising types, so task accuracy minus control accuracy (selectivity)
    says how much of the probe's accuracy the representation, not the probe, explains."""
    what = "control_labels"
    token_ids = checks.integers(token_ids, "token_ids", what=what, dims=1, kind="token id")
    labels = checks.integers(labels, "labels", what=what, dims=1, kind="label")
    if len(labels) != len(token_ids):
        raise ValueError(f"{what}: labels must have one entry per token ({len(token_ids)}); got {len(labels)}")
    g = torch.Generator().manual_seed(seed)
    types, inverse = torch.unique(token_ids.cpu(), return_inverse=True)
    freq = torch.bincount(labels.cpu().long()).float()
    per_type = torch.multinomial(freq / freq.sum(), len(types), replacement=True, generator=g)
    return per_type[inverse].to(labels.device)


def probe_layers(acts: dict[int, torch.Tensor], y: torch.Tensor, *, control: torch.Tensor | None = None,
                 seed: int = 0, **kw) -> dict[int, dict[str, float]]:
    """Probe every layer with the same split: ``{layer: {"train", "test", "control", "selectivity"}}``."""
    what = "probe_layers"
    if not isinstance(acts, dict) or not acts:
        raise (TypeError if not isinstance(acts, dict) else ValueError)(
            f"{what}: acts must be a non-empty dict {{layer: activations (N, D)}}, e.g. capture_activations(...)['acts']; "
            f"got {type(acts).__name__} of length {len(acts) if hasattr(acts, '__len__') else '?'}")
    n = len(_class_labels(y, None, what))
    for layer, x in acts.items():
        checks.values(x, f"acts[{layer!r}]", what=what, dims=2, shape="(N, D)")
        if len(x) != n:
            raise ValueError(f"{what}: acts[{layer!r}] has {len(x)} rows but y has {n} labels")
    tr, te = split_indices(n, seed=seed)
    out = {}
    for layer, x in acts.items():
        r = train_probe(x, y, train_idx=tr, test_idx=te, seed=seed, **kw)
        row = {"train": r.train_acc, "test": r.test_acc}
        if control is not None:
            c = train_probe(x, control, train_idx=tr, test_idx=te, seed=seed, **kw)
            row.update(control=c.test_acc, selectivity=r.test_acc - c.test_acc)
        out[layer] = row
    return out


def _class_labels(y, n: int | None, what: str) -> torch.Tensor:
    """Class labels (N,): integers >= 0, one per row (``n``), of at least 2 classes."""
    y = checks.integers(y, "y", what=what, dims=1, kind="class label")
    if n is not None and len(y) != n:
        raise ValueError(f"{what}: y must have one label per row of x ({n}); got {len(y)}")
    if len(torch.unique(y)) < 2:
        raise ValueError(f"{what}: y holds a single class ({int(y[0])}); a probe needs at least 2 classes to tell apart")
    return y
