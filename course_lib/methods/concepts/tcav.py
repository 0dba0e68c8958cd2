"""TCAV (Kim et al., 2018): concept activation vectors, directional derivatives, scores and the t-test."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ... import checks
from ...device import model_device, require_unit_range, to_model
from ...hooks import capture, get_module
from ...progress import progress_bar
from .._checks import module_name
from ..results import PerturbationResult, Result



# ----------------------------------------------------------------------------- activations and CAVs


def _check_images(x, what: str, name: str = "x") -> None:
    """A non-empty batch of finite float images (N, C, H, W) (not checked against [0, 1] here)."""
    checks.images(x, name, what=what, check_range=False)


def _check_batch_size(batch_size, what: str) -> int:
    return checks.positive_int(batch_size, "batch_size", what=what)


@torch.no_grad()
def layer_activations(model: nn.Module, x: torch.Tensor, layer: str = "conv3", *, batch_size: int = 64) -> torch.Tensor:
    """The activations of module ``layer`` for images ``x``, flattened per image: (N, D), float32 on the CPU."""
    checks.module(model, what="layer_activations")
    _check_images(x, "layer_activations")
    batch_size = _check_batch_size(batch_size, "layer_activations")
    module_name(model, layer, "layer_activations")
    out: list[torch.Tensor] = []
    with capture(model, layer) as acts:
        for s in range(0, x.shape[0], batch_size):
            model(to_model(x[s : s + batch_size], model))
            a = acts[layer]
            if not isinstance(a, torch.Tensor):
                raise TypeError(f"layer_activations: module {layer!r} returns a {type(a).__name__}, not a tensor; pick another layer")
            out.append(a.flatten(1).float().cpu())  # (b, D)
    return torch.cat(out)


@dataclass(kw_only=True, repr=False)
class CAV(Result):
    """A concept activation vector: the unit normal of a linear boundary between concept and random
    activations, pointing towards the concept. ``accuracy`` is measured on a held-out split.
    ``values`` is ``direction`` (the same tensor, set when it is built)."""

    direction: torch.Tensor  # (D,), unit norm, float32 on the CPU
    accuracy: float  # held-out accuracy of the linear classifier
    intercept: float  # of the classifier, in units where ``direction`` has norm 1
    seed: int
    concept: str = "concept"
    layer: str | None = None
    values: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        self.values = self.direction

    def __repr__(self) -> str:
        where = f" at {self.layer!r}" if self.layer else ""
        return f"CAV({self.concept!r}{where}, D={self.direction.numel()}, held-out accuracy {self.accuracy:.3f}, seed={self.seed})"

    __str__ = __repr__


def _as_acts(a, what: str, name: str) -> torch.Tensor:
    if isinstance(a, (str, bytes)) or a is None:
        raise TypeError(f"{what}: {name} must be activations (N, D), a tensor or an array; got {type(a).__name__}")
    if isinstance(a, torch.Tensor):
        checks.not_meta(a, name, what=what)
    if not isinstance(a, torch.Tensor):
        a = torch.as_tensor(np.asarray(a))
    if a.dim() < 2:
        raise ValueError(f"{what}: {name} must be activations (N, D) (or (N, C, H, W), flattened); got shape {tuple(a.shape)}")
    a = a.detach().flatten(1).to("cpu", torch.float64)
    if a.shape[0] < 2:
        raise ValueError(f"{what}: {name} needs at least 2 examples; got {a.shape[0]}")
    if not torch.isfinite(a).all():
        raise ValueError(f"{what}: {name} contains NaN or infinite values")
    return a


def _logistic_newton(Z: torch.Tensor, y: torch.Tensor, C: float, iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised logistic regression, sklearn's objective ``C * sum(log-loss) + |w|^2 / 2``
    (intercept not penalised), by Newton's method: exact and deterministic. Z (n, r), y (n,) in {0, 1}."""
    n, r = Z.shape
    A = torch.cat([Z, torch.ones(n, 1, dtype=Z.dtype)], 1)  # (n, r + 1)
    P = torch.eye(r + 1, dtype=Z.dtype)
    P[r, r] = 1e-10  # the intercept is (almost) free
    theta = torch.zeros(r + 1, dtype=Z.dtype)
    for _ in range(iters):
        p = torch.sigmoid(A @ theta)
        grad = C * A.T @ (p - y) + P @ theta
        H = C * (A.T * (p * (1 - p))) @ A + P
        step = torch.linalg.solve(H, grad)
        theta = theta - step
        if step.abs().max() < 1e-10 * (1 + theta.abs().max()):
            break
    return theta[:r], theta[r]


def compute_cav(concept_acts: torch.Tensor, random_acts: torch.Tensor, *, seed: int = 0, C: float = 1.0,
                holdout: float = 0.25, concept: str = "concept", layer: str | None = None) -> CAV:
    """Fit an L2-regularised logistic regression (inverse strength ``C``) between ``concept_acts``
    (N_c, D) and ``random_acts`` (N_r, D) and return its unit normal, pointing towards the concept.

    A seeded ``holdout`` fraction of each set measures the held-out accuracy; the CAV is fitted on
    the rest. With D much larger than N the fit runs in the span of the training rows (exact for
    an L2 penalty: the optimum lies there), so a 25k-dimensional layer takes milliseconds.
    """
    what = "compute_cav"
    xc, xr = _as_acts(concept_acts, what, "concept_acts"), _as_acts(random_acts, what, "random_acts")
    if xc.shape[1] != xr.shape[1]:
        raise ValueError(f"{what}: concept_acts have D={xc.shape[1]} features, random_acts D={xr.shape[1]}; take both at the same layer")
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"{what}: holdout must be a fraction in [0, 1); got {holdout}")
    C = checks.positive_number(C, "C", what=what)
    g = torch.Generator().manual_seed(int(seed))

    def split(a):
        perm = torch.randperm(a.shape[0], generator=g)
        k = int(round(holdout * a.shape[0])) if a.shape[0] >= 4 else 0
        return a[perm[k:]], a[perm[:k]]

    (tc, hc), (tr, hr) = split(xc), split(xr)
    X = torch.cat([tc, tr])  # (n, D)
    y = torch.cat([torch.ones(len(tc)), torch.zeros(len(tr))]).double()
    # The optimum of an L2-penalised linear model lies in the row span of X: fit there, in the
    # coordinates Z = U S of X = U S V^T (from the n x n Gram matrix, never a D x D one).
    evals, U = torch.linalg.eigh(X @ X.T)
    keep = evals > evals.max() * 1e-12
    s_ = evals[keep].sqrt()
    U = U[:, keep]  # (n, r)
    coef, b = _logistic_newton(U * s_, y, C)  # (r,), scalar
    w = X.T @ (U @ (coef / s_))  # (D,) = V coef
    norm = w.norm()
    if norm == 0:
        raise ValueError(f"{what}: the classifier found no direction (are the concept and random activations identical?)")
    b = float(b) / float(norm)
    w = w / norm
    if len(hc) and len(hr):
        margin_c, margin_r = hc @ w + b, hr @ w + b
        acc = float(((margin_c > 0).sum() + (margin_r <= 0).sum()) / (len(hc) + len(hr)))
    else:
        acc = float(((tc @ w + b > 0).sum() + (tr @ w + b <= 0).sum()) / len(X))
    return CAV(direction=w.float(), accuracy=acc, intercept=b, seed=int(seed), concept=concept, layer=layer)


def _cav_matrix(cavs, what: str) -> torch.Tensor:
    """CAV, tensor (D,) or (R, D), or a list of those -> (R, D) float32."""
    if isinstance(cavs, CAV):
        cavs = [cavs]
    if isinstance(cavs, (str, bytes)) or cavs is None:
        raise TypeError(f"{what}: cavs must be a CAV, a vector (D,), a matrix (R, D) or a list of them; got {type(cavs).__name__}")
    if isinstance(cavs, torch.Tensor):
        m = cavs[None] if cavs.dim() == 1 else cavs
    else:
        cavs = list(cavs)
        if not cavs:
            raise ValueError(f"{what}: no CAVs given")
        m = torch.stack([(c.direction if isinstance(c, CAV) else torch.as_tensor(c)).flatten() for c in cavs])
    if m.dim() != 2:
        raise ValueError(f"{what}: cavs must be a CAV, a vector (D,), a matrix (R, D) or a list of them; got shape {tuple(m.shape)}")
    checks.values(m.detach().float() if m.is_floating_point() else m, "cavs", what=what, dims=2, shape="(R, D)")
    return m.detach().float()


# ----------------------------------------------------------------------------- directional derivatives


def _targets(target, k: int, what: str) -> tuple[list[int], bool]:
    """``(classes, one class given?)``: ``target`` checked against the model's ``k`` outputs."""
    t = checks.target(target, k, "target", what=what)
    return ([t], True) if isinstance(t, int) else (t.tolist(), False)


def _layer_gradients(model: nn.Module, x: torch.Tensor, layer: str, targets: list[int]) -> torch.Tensor:
    """d logit_t / d f_layer for every target t: (T, b, D), from one forward and one batched backward."""
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"module {layer!r} returns a {type(output).__name__}, not a tensor; pick another layer")
        leaf = output.detach().requires_grad_(True)  # gradients stop here: nothing below the layer is differentiated
        store["leaf"] = leaf
        return leaf * 1  # not the leaf itself, so an in-place op above (ReLU(inplace=True)) is allowed

    handle = get_module(model, layer).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(x)  # (b, K)
            leaf = store["leaf"]
            T = len(targets)
            sel = torch.zeros(T, *logits.shape, device=logits.device, dtype=logits.dtype)  # (T, b, K)
            sel[torch.arange(T), :, torch.tensor(targets)] = 1.0
            try:
                (grads,) = torch.autograd.grad(logits, leaf, grad_outputs=sel, is_grads_batched=True)  # (T, b, ...)
            except RuntimeError:  # an op without a batching rule: one backward per target
                grads = torch.stack([torch.autograd.grad(logits, leaf, grad_outputs=sel[t], retain_graph=t < T - 1)[0]
                                     for t in range(T)])
    finally:
        handle.remove()
    return grads.flatten(2)  # (T, b, D)


def directional_derivatives(model: nn.Module, x: torch.Tensor, cavs, target, *, layer: str = "conv3",
                            batch_size: int = 64) -> torch.Tensor:
    """``S(x) = grad_{f_l} logit_target . v`` for every image and CAV.

    ``cavs``: a :class:`CAV`, a vector (D,), a matrix (R, D) or a list. ``target``: one class (int),
    giving (B, R), or a list of T classes, giving (T, B, R). One forward pass and one batched
    backward pass per chunk of ``batch_size`` images, all targets and CAVs at once; on x's device.
    """
    what = "directional_derivatives"
    checks.module(model, what=what)
    _check_images(x, what)
    batch_size = _check_batch_size(batch_size, what)
    module_name(model, layer, what)
    dev = model_device(model)
    V = _cav_matrix(cavs, what).to(dev)  # (R, D)
    k = checks.n_outputs(model, to_model(x[:1], model), what=what)
    targets, single = _targets(target, k, what)
    out = []
    for s in range(0, x.shape[0], batch_size):
        g = _layer_gradients(model, to_model(x[s : s + batch_size].detach(), model), layer, targets)  # (T, b, D)
        if g.shape[-1] != V.shape[1]:
            raise ValueError(f"{what}: the CAVs have D={V.shape[1]} but layer {layer!r} has {g.shape[-1]} activations per image; "
                             "compute the CAVs at the same layer")
        out.append(torch.einsum("tbd,rd->tbr", g, V.to(g.dtype)).detach())
    S = torch.cat(out, dim=1).to(x.device)  # (T, B, R)
    return S[0] if single else S


def tcav_scores(model: nn.Module, x: torch.Tensor, cavs, target, *, layer: str = "conv3", batch_size: int = 64) -> torch.Tensor:
    """TCAV scores: the fraction of images whose target logit rises along each CAV. (R,) for one
    target, (T, R) for a list of targets."""
    S = directional_derivatives(model, x, cavs, target, layer=layer, batch_size=batch_size)
    return (S > 0).float().mean(-2)


def tcav_significance(concept_scores, random_scores, *, alpha: float = 0.05) -> tuple[float, bool]:
    """Two-sided Student t-test (pooled variance) of the concept's TCAV scores against the
    random CAVs' scores, as the TCAV reference code does: ``(p_value, p < alpha)``.

    Test many (concept, class, layer) triples and some pass by chance: divide ``alpha`` by the
    number of tests (Bonferroni) before calling a concept significant.
    """
    from scipy.stats import ttest_ind

    def scores(v, name):
        if isinstance(v, (str, bytes)) or v is None:
            raise TypeError(f"tcav_significance: {name} must be a list or tensor of TCAV scores; got {type(v).__name__}")
        if isinstance(v, torch.Tensor):
            checks.not_meta(v, name, what="tcav_significance")
        a = np.asarray(torch.as_tensor(v).detach().cpu(), dtype=float).ravel()
        if len(a) < 2:
            raise ValueError(f"tcav_significance: {name} needs at least 2 scores (one per random set); got {len(a)}")
        return a

    c, r = scores(concept_scores, "concept_scores"), scores(random_scores, "random_scores")
    for name, v in (("concept_scores", c), ("random_scores", r)):
        if not np.isfinite(v).all():  # a NaN score would give p = 0, "significant"
            raise ValueError(f"tcav_significance: {name} contains {int((~np.isfinite(v)).sum())} NaN or infinite value(s); "
                             "TCAV scores are fractions in [0, 1]. Find where they came from (e.g. NaN activations).")
    alpha = checks.probability(alpha, "alpha", what="tcav_significance")
    if np.ptp(np.r_[c, r]) == 0:  # all scores equal: no evidence either way
        return 1.0, False
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # scipy warns about nearly identical samples: silent in graded cells
        p = float(ttest_ind(r, c).pvalue)
    if not np.isfinite(p):  # zero variance within both samples but different means
        p = 0.0
    return p, bool(p < alpha)


# ----------------------------------------------------------------------------- the whole test


@dataclass(kw_only=True, repr=False)
class TCAVResult(PerturbationResult):
    """TCAV of one concept for T target classes.

    ``values`` (T,): the mean TCAV score over the R concept-vs-random CAVs; ``scores`` (T, R) and
    ``random_scores`` (T, R) (random set i vs i+1); ``p_values`` (T,) and ``significant`` (T,) from
    the two-sided t-test at level ``alpha``; ``cav_accuracy`` (R,) held-out; ``budget``: images
    passed forward through the model.
    """

    scores: torch.Tensor = field(default=None, repr=False)  # (T, R)
    random_scores: torch.Tensor = field(default=None, repr=False)  # (T, R)
    p_values: torch.Tensor = field(default=None)  # (T,)
    significant: torch.Tensor = field(default=None)  # (T,) bool
    cav_accuracy: torch.Tensor = field(default=None, repr=False)  # (R,)
    concept: str = "concept"
    layer: str = ""
    targets: list[int] = field(default_factory=list)
    alpha: float = 0.05
    cavs: list[CAV] = field(default_factory=list, repr=False)
    random_cavs: list[CAV] = field(default_factory=list, repr=False)

    def __str__(self) -> str:
        parts = []
        for i, name in enumerate(self.player_names or [str(t) for t in self.targets]):
            mark = "significant" if bool(self.significant[i]) else "not significant"
            parts.append(f"{name} {float(self.values[i]):.2f} (random {float(self.random_scores[i].mean()):.2f}, "
                         f"p={float(self.p_values[i]):.2g}, {mark})")
        acc = float(self.cav_accuracy.mean()) if self.cav_accuracy is not None else float("nan")
        return (f"TCAV of {self.concept!r} at {self.layer!r} ({self.scores.shape[1]} random sets, CAV accuracy {acc:.2f}, "
                f"alpha={self.alpha}): " + "; ".join(parts))


def tcav(model: nn.Module, x: torch.Tensor, concept: torch.Tensor, randoms: Sequence[torch.Tensor], target, *,
         layer: str = "conv3", alpha: float = 0.05, seed: int = 0, concept_name: str = "concept",
         batch_size: int = 64, progress: bool = True) -> TCAVResult:
    """TCAV with its random-concept test, for images ``x`` (B, 3, H, W) of the target class(es).

    ``concept``: concept images (N_c, 3, H, W); ``randoms``: R >= 2 random image sets. Trains R
    concept-vs-random CAVs and R random-vs-random CAVs (set i vs set i+1 mod R, seeded
    ``seed + i``), scores all of them for every target in one batched pass over ``x``, and t-tests
    each target's concept scores against its random scores. ``target``: an int or a list of classes;
    the result always has one row per target. Use the images of one class per target for the
    paper's TCAV_{C,k}; passing the same images for several targets asks how *those* images'
    logits move.
    """
    what = "tcav"
    checks.module(model, what=what)
    _check_images(x, what)
    _check_images(concept, what, "concept")
    randoms = list(checks.non_empty(randoms, "randoms", what=what))
    if len(randoms) < 2:
        raise ValueError(f"{what}: the random-concept test needs at least 2 random sets in randoms; got {len(randoms)}. "
                         "Use random_sets(n_sets).")
    for i, r in enumerate(randoms):
        _check_images(r, what, f"randoms[{i}]")
    module_name(model, layer, what)
    alpha = checks.probability(alpha, "alpha", what=what)
    for name, t in [("x", x), ("concept", concept)] + [(f"random set {i}", r) for i, r in enumerate(randoms)]:
        if t.shape[1:] != x.shape[1:]:
            raise ValueError(f"{what}: {name} has images of shape {tuple(t.shape[1:])}, x has {tuple(x.shape[1:])}")
        require_unit_range(t, name)
    k = checks.n_outputs(model, to_model(x[:1], model), what=what)
    targets, _ = _targets(target, k, what)
    R = len(randoms)
    acts_c = layer_activations(model, concept, layer, batch_size=batch_size)
    acts_r = [layer_activations(model, r, layer, batch_size=batch_size)
              for r in progress_bar(randoms, desc="random activations", enabled=progress)]
    cavs = [compute_cav(acts_c, acts_r[i], seed=seed + i, concept=concept_name, layer=layer) for i in range(R)]
    random_cavs = [compute_cav(acts_r[i], acts_r[(i + 1) % R], seed=seed + i, concept=f"random {i}", layer=layer)
                   for i in range(R)]
    V = torch.stack([c.direction for c in cavs + random_cavs])  # (2R, D)
    scores = tcav_scores(model, x, V, list(targets), layer=layer, batch_size=batch_size).cpu()  # (T, 2R)
    sc, sr = scores[:, :R], scores[:, R:]
    tests = [tcav_significance(sc[t], sr[t], alpha=alpha) for t in range(len(targets))]
    names = getattr(model, "class_names", None)
    return TCAVResult(
        values=sc.mean(1), budget=int(x.shape[0] + concept.shape[0] + sum(r.shape[0] for r in randoms)),
        method=f"TCAV ({R} random sets, two-sided t-test)",
        player_names=[names[t] if names is not None and t < len(names) else f"class {t}" for t in targets],
        scores=sc, random_scores=sr, p_values=torch.tensor([p for p, _ in tests]),
        significant=torch.tensor([s for _, s in tests]), cav_accuracy=torch.tensor([c.accuracy for c in cavs]),
        concept=concept_name, layer=layer, targets=list(targets), alpha=alpha, cavs=cavs, random_cavs=random_cavs,
    )
