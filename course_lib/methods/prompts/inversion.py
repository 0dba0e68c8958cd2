"""The three searches (soft prompt, PEZ, GCG), their shared set-up and result, and aggregation over runs."""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

import torch
from torch import nn

from ... import checks
from ...device import model_device
from .._checks import language_model
from ..results import Result
from ...progress import progress_bar
from .vocab import NearestTokens, _nearest_token_distance, allowed_tokens, encode_target, token_embeddings
from .scoring import _prefix_embeds, _roundtrip_ok, _score_prompts, _target_loss


@dataclass(kw_only=True, repr=False)
class PromptInversion(Result):
    """What an inversion found, one row per restart (all tensors on the CPU).

    ``ids`` (R, n): the best projected prompt of each restart; ``text``: those prompts decoded;
    ``p_target`` (R,): p(target | ids), the probability of the whole target sequence given the
    *projected* prompt; ``loss`` (R,): the best mean cross-entropy of the target on a projected
    prompt; ``history`` (steps, R): the objective that was optimised at each step (soft: the
    regularised loss of the soft prompt; PEZ, GCG: the projected loss); ``best_history``
    (steps, R): the best projected loss so far (never rises); ``soft`` (R, n, d): the final
    continuous prompt (soft and PEZ only). ``values`` is ``p_target`` (the same tensor, set when it is built).
    """

    method: str
    target: str
    target_ids: torch.Tensor
    ids: torch.Tensor
    text: list[str]
    p_target: torch.Tensor
    loss: torch.Tensor
    history: torch.Tensor
    best_history: torch.Tensor
    soft: torch.Tensor | None = field(default=None, repr=False)
    values: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        self.values = self.p_target

    @property
    def best(self) -> int:
        """Index of the restart with the highest p(target)."""
        return int(self.p_target.argmax())

    def success(self, threshold: float = 0.5) -> torch.Tensor:
        """(R,) bool: the projected prompt gives the target at least ``threshold``."""
        return self.p_target >= threshold

    def __str__(self) -> str:
        rows = [f"{self.method} -> {self.target!r}: best p = {self.p_target.max():.3f}"]
        for i in self.p_target.argsort(descending=True).tolist():
            rows.append(f"  p={self.p_target[i]:.3f}  {self.text[i]!r}")
        return "\n".join(rows)


# ----------------------------------------------------------------------------- set-up shared by the methods


def _setup(model, tokenizer, target, n_tokens, n_restarts, prefix, seed, init, allowed, what="prompt inversion"):
    language_model(model, what)
    n_tokens = checks.positive_int(n_tokens, "n_tokens", what=what)
    n_restarts = checks.positive_int(n_restarts, "n_restarts", what=what)
    checks.non_negative_int(seed, "seed", what=what)
    device = model_device(model)
    E = token_embeddings(model)  # (V, d)
    t = encode_target(tokenizer, target)
    if allowed is None:
        allowed = allowed_tokens(tokenizer, E.shape[0])
    allowed = allowed.to(device)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    if init is not None:
        ids0 = tokenizer(init, add_special_tokens=False)["input_ids"]
        if len(ids0) != n_tokens:
            raise ValueError(f"init {init!r} has {len(ids0)} tokens, but n_tokens={n_tokens}; make them agree.")
        ids = torch.tensor(ids0).repeat(n_restarts, 1)
    else:
        pool = allowed.nonzero().squeeze(1).cpu()
        ids = pool[torch.randint(0, len(pool), (n_restarts, n_tokens), generator=gen)]
    return device, E, t, allowed, gen, ids.to(device), _prefix_embeds(model, tokenizer, prefix, device)


def _result(model, tokenizer, method, target, t, best_ids, history, best_history, prefix_embeds, soft=None, batch_size=64):
    best_ids = best_ids.cpu()
    loss = _score_prompts(model, best_ids, t, prefix_embeds=prefix_embeds, batch_size=batch_size).cpu()  # judged afresh
    return PromptInversion(
        method=method, target=target if isinstance(target, str) else tokenizer.decode(t), target_ids=t, ids=best_ids,
        text=tokenizer.batch_decode(best_ids), p_target=torch.exp(-loss * t.numel()), loss=loss,
        history=torch.stack(history).cpu(), best_history=torch.stack(best_history).cpu(),
        soft=None if soft is None else soft.detach().cpu(),
    )


class _Best:
    """Best projected prompt so far, per restart."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids.clone()
        self.loss = torch.full((ids.shape[0],), float("inf"), device=ids.device)

    def update(self, ids: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        better = loss < self.loss
        self.ids[better] = ids[better]
        self.loss = torch.where(better, loss, self.loss)
        return self.loss.clone()


# ----------------------------------------------------------------------------- soft prompt and PEZ


def soft_prompt(
    model: nn.Module,
    tokenizer,
    target: str,
    *,
    n_tokens: int = 5,
    n_restarts: int = 4,
    steps: int = 60,
    lr: float = 0.02,
    lam: float = 1.0,
    ramp: bool = True,
    eval_every: int = 5,
    init_scale: float = 0.5,
    prefix: str = "",
    init: str | None = None,
    allowed: torch.Tensor | None = None,
    seed: int = 0,
    progress: bool = True,
    callback=None,
) -> PromptInversion:
    """Optimise ``n_tokens`` free input embeddings for ``target`` (Rumbelow & Watkins 2023).

    Objective per restart: ``CE(target | soft prompt) + lam * mean_i ||e_i - E[nn(e_i)]||``
    (``nn`` = cosine-nearest allowed token), minimised with Adam (``lr``) from random points
    near the vocabulary's centroid (mean + ``init_scale`` * std * noise), or from ``init``'s tokens.
    With ``ramp`` the weight grows linearly from 0 to ``lam`` over the steps. Every ``eval_every`` steps and at the end the soft
    prompt is projected to tokens and the projected prompt is scored; the best one per restart
    is returned. ``lam`` trades success of the soft prompt for closeness to real tokens.
    ``callback(step, objective)``, if given, is called after every step with the (R,) objective
    (e.g. to plot it live).
    """
    device, E, t, allowed, gen, ids, pre = _setup(model, tokenizer, target, n_tokens, n_restarts, prefix, seed, init, allowed,
                                                  "soft_prompt")
    steps = checks.positive_int(steps, "steps", what="soft_prompt")
    lr = checks.positive_number(lr, "lr", what="soft_prompt")
    lam = checks.positive_number(lam, "lam", what="soft_prompt", allow_zero=True)
    eval_every = checks.positive_int(eval_every, "eval_every", what="soft_prompt")
    if init is None:  # start near the centre of the vocabulary, not on a token the regulariser would hold on to
        V = E[allowed]
        noise = torch.randn(ids.shape + (E.shape[1],), generator=gen).to(device)
        soft = V.mean(0) + init_scale * V.std(0) * noise
    else:
        soft = E[ids]
    soft = soft.detach().clone().requires_grad_(True)  # (R, n, d)
    nearest = NearestTokens(E, allowed=allowed)  # exact, but skips most full-vocabulary searches
    opt = torch.optim.Adam([soft], lr=lr)
    best = _Best(ids)
    scored = torch.full_like(ids, -1)  # the projections scored last
    history, best_history = [], []
    for step in progress_bar(range(steps), total=steps, desc=f"soft prompt {target!r}", enabled=progress):
        ce = _target_loss(model, soft, t, prefix_embeds=pre)  # (R,)
        lam_t = lam * (step + 1) / steps if ramp else lam  # ramp: find a good soft prompt first, then snap to tokens
        objective = ce + lam_t * _nearest_token_distance(soft, E, nearest=nearest).mean(dim=1)
        opt.zero_grad()
        objective.sum().backward()  # restarts are independent: the sum separates
        opt.step()
        if (step + 1) % max(1, eval_every) == 0 or step == steps - 1:
            proj = nearest(soft)
            new = (proj != scored).any(dim=1)  # a projection scored before cannot improve the best
            if bool(new.any()):
                loss = torch.full((proj.shape[0],), float("inf"), device=proj.device)
                loss[new] = _score_prompts(model, proj[new], t, prefix_embeds=pre)
                best.update(proj, loss)
                scored = proj
        history.append(objective.detach())
        best_history.append(best.loss.clone())
        if callback is not None:
            callback(step, history[-1])
    return _result(model, tokenizer, "soft prompt", target, t, best.ids, history, best_history, pre, soft=soft)


def pez(
    model: nn.Module, tokenizer, target: str, *, n_tokens: int = 5, n_restarts: int = 4, steps: int = 60,
    lr: float = 0.05, weight_decay: float = 0.0, prefix: str = "", init: str | None = None,
    allowed: torch.Tensor | None = None, seed: int = 0, progress: bool = True, callback=None,
) -> PromptInversion:
    """Projected gradient descent on a continuous prompt (PEZ, Wen et al. 2023).

    Each step projects the continuous prompt to its cosine-nearest tokens, runs the model on
    those tokens' embeddings, and applies the gradient to the continuous prompt
    (straight-through). The loss at each step is the loss of a real token prompt.
    ``callback(step, loss)`` is called after every step with the (R,) projected loss.
    """
    device, E, t, allowed, gen, ids, pre = _setup(model, tokenizer, target, n_tokens, n_restarts, prefix, seed, init, allowed, "pez")
    steps = checks.positive_int(steps, "steps", what="pez")
    lr = checks.positive_number(lr, "lr", what="pez")
    weight_decay = checks.positive_number(weight_decay, "weight_decay", what="pez", allow_zero=True)
    soft = E[ids].detach().clone().requires_grad_(True)  # (R, n, d)
    opt = torch.optim.AdamW([soft], lr=lr, weight_decay=weight_decay)
    nearest = NearestTokens(E, allowed=allowed)
    best = _Best(ids)
    history, best_history = [], []
    for step in progress_bar(range(steps), total=steps, desc=f"PEZ {target!r}", enabled=progress):
        proj = nearest(soft)  # (R, n)
        hard = soft + (E[proj] - soft).detach()  # forward: the tokens; backward: into the soft prompt
        ce = _target_loss(model, hard, t, prefix_embeds=pre)
        opt.zero_grad()
        ce.sum().backward()
        opt.step()
        best.update(proj, ce.detach())
        history.append(ce.detach())
        best_history.append(best.loss.clone())
        if callback is not None:
            callback(step, history[-1])
    proj = nearest(soft)  # the last step's update, scored too
    best_history[-1] = best.update(proj, _score_prompts(model, proj, t, prefix_embeds=pre))
    return _result(model, tokenizer, "PEZ", target, t, best.ids, history, best_history, pre, soft=soft)


# ----------------------------------------------------------------------------- GCG


def sample_candidates(
    ids: torch.Tensor, grad: torch.Tensor, search_width: int, *, topk: int = 64, n_replace: int = 1,
    not_allowed: torch.Tensor | None = None, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """GCG candidates (search_width, n) from one prompt ``ids`` (n,) and the gradient of the
    loss with respect to its one-hot tokens ``grad`` (n, V).

    Each candidate changes ``n_replace`` random positions, each to one of the ``topk`` tokens
    with the most negative gradient there (uniformly). Random draws come from ``generator``
    in the same order as nanogcg's ``sample_ids_from_grad`` draws them from the global RNG.
    """
    what = "sample_candidates"
    checks.values(grad, "grad", what=what, dims=2, shape="(n, V)")
    ids = checks.integers(ids, "ids", what=what, high=grad.shape[1], dims=1, shape="(n,)", kind="token id")
    if ids.shape[0] != grad.shape[0]:
        raise ValueError(f"{what}: grad must have one row per token of ids ({ids.shape[0]}); got {grad.shape[0]}")
    search_width = checks.positive_int(search_width, "search_width", what=what)
    topk = checks.positive_int(topk, "topk", what=what)
    n_replace = checks.positive_int(n_replace, "n_replace", what=what)
    if n_replace > ids.shape[0] or topk > grad.shape[1]:
        raise ValueError(f"{what}: n_replace={n_replace} must be at most the {ids.shape[0]} tokens and topk={topk} at most "
                         f"the {grad.shape[1]} tokens of the vocabulary")
    return _sample_candidates(ids, grad, search_width, topk=topk, n_replace=n_replace, not_allowed=not_allowed,
                              generator=generator)


def _sample_candidates(ids, grad, search_width, *, topk, n_replace, not_allowed=None, generator=None) -> torch.Tensor:
    """sample_candidates without the checks (GCG draws candidates every step)."""
    n = ids.shape[0]
    grad = grad.clone()
    if not_allowed is not None:
        grad[:, not_allowed.to(grad.device)] = float("inf")
    top = (-grad).topk(topk, dim=1).indices  # (n, topk)
    dev = generator.device if generator is not None else grad.device  # a CPU generator draws on the CPU
    noise = torch.rand((search_width, n), generator=generator, device=dev).to(grad.device)
    where = noise.argsort(dim=-1)[:, :n_replace]  # (S, n_replace) distinct positions
    pick = torch.randint(0, topk, (search_width, n_replace, 1), generator=generator, device=dev).to(grad.device)
    new = top[where].gather(2, pick).squeeze(2)  # (S, n_replace)
    return ids.repeat(search_width, 1).scatter_(1, where, new)


def _onehot_grad(model, E, ids, t, pre) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (R,) of prompts ids (R, n) and its gradient w.r.t. their one-hot tokens (R, n, V)."""
    x = E[ids].detach().requires_grad_(True)
    loss = _target_loss(model, x, t, prefix_embeds=pre)
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g @ E.T  # d loss / d onehot = (d loss / d e) E^T


def gcg(
    model: nn.Module, tokenizer, target: str, *, n_tokens: int = 5, n_restarts: int = 1, steps: int = 20,
    search_width: int = 64, topk: int = 64, n_replace: int = 1, batch_size: int = 64, prefix: str = "",
    init: str | None = None, allowed: torch.Tensor | None = None, filter_roundtrip: bool = True,
    seed: int = 0, progress: bool = True,
) -> PromptInversion:
    """Greedy coordinate gradient search over tokens (GCG, Zou et al. 2023).

    Each step: the one-hot gradient of every restart's current prompt proposes
    ``search_width`` candidates (:func:`sample_candidates`); all are scored exactly (in chunks of
    ``batch_size``) and each restart moves to its best candidate, as nanogcg does. With
    ``filter_roundtrip`` candidates that do not survive decode -> encode are skipped.
    Cost per step: one forward+backward of R prompts and R * search_width forwards.
    """
    device, E, t, allowed, gen, ids, pre = _setup(model, tokenizer, target, n_tokens, n_restarts, prefix, seed, init, allowed,
                                                  "gcg")
    steps = checks.positive_int(steps, "steps", what="gcg")
    search_width = checks.positive_int(search_width, "search_width", what="gcg")
    topk = checks.positive_int(topk, "topk", what="gcg")
    n_replace = checks.positive_int(n_replace, "n_replace", what="gcg")
    batch_size = checks.positive_int(batch_size, "batch_size", what="gcg")
    if n_replace > n_tokens or topk > E.shape[0]:
        raise ValueError(f"gcg: n_replace={n_replace} must be at most n_tokens={n_tokens} and topk={topk} at most the "
                         f"{E.shape[0]} tokens of the vocabulary")
    R = ids.shape[0]
    best = _Best(ids)
    history, best_history = [], []
    for _ in progress_bar(range(steps), total=steps, desc=f"GCG {target!r}", enabled=progress):
        loss, g = _onehot_grad(model, E, ids, t, pre)
        best.update(ids, loss)
        cands = torch.stack([_sample_candidates(ids[r], g[r], search_width, topk=topk, n_replace=n_replace,
                                               not_allowed=~allowed, generator=gen) for r in range(R)])  # (R, S, n)
        flat = cands.view(R * search_width, n_tokens)
        cl = _score_prompts(model, flat, t, prefix_embeds=pre, batch_size=batch_size).view(R, search_width)
        if filter_roundtrip:
            cl = cl.masked_fill(~_roundtrip_ok(tokenizer, flat).view(R, search_width).to(cl.device), float("inf"))
        j = cl.argmin(dim=1)
        moved = torch.isfinite(cl[torch.arange(R), j])
        ids = torch.where(moved[:, None], cands[torch.arange(R), j], ids)
        step_loss = torch.where(moved, cl[torch.arange(R), j], loss)
        best.update(ids, step_loss)
        history.append(step_loss)
        best_history.append(best.loss.clone())
    return _result(model, tokenizer, "GCG", target, t, best.ids, history, best_history, pre, batch_size=batch_size)


# ----------------------------------------------------------------------------- aggregation


def token_counts(tokenizer, results, *, threshold: float = 0.5, strip: bool = True) -> collections.Counter:
    """How often each token occurs in the *successful* prompts (p >= threshold) of one or
    more :class:`PromptInversion` results. Counts every occurrence; tokens are decoded and
    (with ``strip``) stripped of surrounding spaces, so " art" and "art" count together."""
    results = [results] if isinstance(results, PromptInversion) else list(checks.non_empty(results, "results", what="token_counts"))
    bad = [r for r in results if not isinstance(r, PromptInversion)]
    if bad:
        raise TypeError(f"token_counts: results must be PromptInversion results (of soft_prompt, pez or gcg); "
                        f"got {type(bad[0]).__name__}")
    threshold = checks.probability(threshold, "threshold", what="token_counts", open_interval=False)
    c: collections.Counter = collections.Counter()
    for res in results:
        for row in res.ids[res.success(threshold)].tolist():
            for i in row:
                s = tokenizer.decode([i])
                c[s.strip() if strip else s] += 1
    return c
