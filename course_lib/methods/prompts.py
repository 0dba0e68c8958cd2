"""Prompt inversion: which prompts make a language model say a given target?

A causal language model maps a prompt (token ids ``x_1..x_n``) to a distribution over the
next token. Feature visualisation for images climbs the gradient of an output with respect
to the pixels; tokens are discrete, so there is no gradient to climb. Three ways round that:

* **Soft prompt** (Rumbelow & Watkins 2023, "SolidGoldMagikarp"): optimise ``n`` free input
  embeddings ``e_1..e_n`` (passed as ``inputs_embeds``) to minimise
  ``-log p(target | e) + lam * mean_i ||e_i - E[nn(e_i)]||``, where ``nn(e_i)`` is the
  vocabulary token whose embedding is closest in *cosine* similarity. The regulariser pulls
  every soft embedding onto a real token; the result is read back with :func:`project_to_tokens`.
* **PEZ** (Wen et al. 2023, "Hard Prompts Made Easy"): keep a continuous prompt, but run the
  model on its *projection* and apply that gradient to the continuous prompt (a
  straight-through estimator), so the loss is always the loss of a real token prompt.
* **GCG** (Zou et al. 2023, "Universal and Transferable Adversarial Attacks"): stay on
  tokens; the gradient with respect to the one-hot token matrix proposes top-k swaps per
  position; a random batch of single swaps is evaluated exactly and the best one is kept.

Success is always judged on the *projected* (real-token) prompt: ``p(target | ids)``.
Every method runs ``n_restarts`` independent restarts as one batch, tracks the best
projected prompt so far per restart, and draws all randomness from ``seed``.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..device import model_device, require_eval
from ..progress import progress_bar

__all__ = [
    "PromptInversion",
    "encode_target",
    "allowed_tokens",
    "token_embeddings",
    "project_to_tokens",
    "nearest_token_distance",
    "NearestTokens",
    "target_loss",
    "score_prompts",
    "p_target",
    "next_token_distribution",
    "greedy_continuation",
    "roundtrip_ok",
    "sample_candidates",
    "soft_prompt",
    "pez",
    "gcg",
    "token_counts",
]


@dataclass
class PromptInversion:
    """What an inversion found, one row per restart (all tensors on the CPU).

    ``ids`` (R, n): the best projected prompt of each restart; ``text``: those prompts decoded;
    ``p_target`` (R,): p(target | ids), the probability of the whole target sequence given the
    *projected* prompt; ``loss`` (R,): the best mean cross-entropy of the target on a projected
    prompt; ``history`` (steps, R): the objective that was optimised at each step (soft: the
    regularised loss of the soft prompt; PEZ, GCG: the projected loss); ``best_history``
    (steps, R): the best projected loss so far (never rises); ``soft`` (R, n, d): the final
    continuous prompt (soft and PEZ only).
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


# ----------------------------------------------------------------------------- vocabulary


def encode_target(tokenizer, target: str | torch.Tensor) -> torch.Tensor:
    """Token ids (T,) of ``target``, without special tokens.

    Mind the leading space: for GPT-style tokenisers " girl" (the word after another word)
    and "girl" (the start of a text, or the middle of a word) are different tokens.
    """
    if isinstance(target, torch.Tensor):
        ids = target.reshape(-1).long().cpu()
    else:
        ids = torch.tensor(tokenizer(target, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if ids.numel() == 0:
        raise ValueError(f"target {target!r} encodes to no tokens; give a non-empty string such as ' Paris'.")
    n_vocab = len(tokenizer)
    if int(ids.min()) < 0 or int(ids.max()) >= n_vocab:
        raise ValueError(f"target token ids must be in 0..{n_vocab - 1} (the tokenizer's vocabulary); got {ids.tolist()}")
    return ids


def token_embeddings(model: nn.Module) -> torch.Tensor:
    """The input embedding matrix (V, d) of a Hugging Face model."""
    return model.get_input_embeddings().weight


def blocked_words() -> frozenset[str]:
    """Slurs and insults that prompt searches may not use (``course_lib/data/blocked_words.txt``)."""
    from importlib.resources import files

    text = files("course_lib").joinpath("data/blocked_words.txt").read_text(encoding="utf-8")
    return frozenset(w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#"))


def allowed_tokens(
    tokenizer, vocab_size: int | None = None, *, ascii_only: bool = True, block_offensive: bool = True
) -> torch.Tensor:
    """(V,) bool: tokens a prompt may use: not special, and (if ``ascii_only``) decoding to
    non-empty printable ASCII; with ``block_offensive``, no token that is a word of
    ``blocked_words()`` (optimisers do find slurs "useful", and the lectures print what they find).
    ``vocab_size`` is the embedding matrix's row count, which may exceed the tokenizer's (padding
    rows are never allowed)."""
    n = len(tokenizer) if vocab_size is None else vocab_size
    ok = torch.zeros(n, dtype=torch.bool)
    special = set(tokenizer.all_special_ids)
    blocked = blocked_words() if block_offensive else frozenset()
    for i in range(min(n, len(tokenizer))):
        if i in special:
            continue
        s = tokenizer.decode([i])
        if not s:
            continue
        ok[i] = (s.isascii() and s.isprintable()) if ascii_only else True
        if ok[i] and blocked and "".join(ch for ch in s.lower() if ch.isalpha()) in blocked:
            ok[i] = False
    return ok


def project_to_tokens(embeds: torch.Tensor, E: torch.Tensor, *, k: int = 1, allowed: torch.Tensor | None = None,
            E_unit: torch.Tensor | None = None):
    """k nearest vocabulary tokens of each embedding by cosine similarity.

    ``embeds`` (..., d), ``E`` (V, d); returns ``(ids, cos)``, both (..., k), most similar first.
    Tokens where ``allowed`` (V,) is False are never returned. ``E_unit`` = E with unit rows,
    if the caller already has it (saves normalising E on every step).
    """
    if not bool(torch.isfinite(embeds).all()):
        raise ValueError("embeds contains NaN or infinite values; a diverged optimisation? Lower the learning rate.")
    e = F.normalize(embeds.detach().to(E.dtype), dim=-1)  # (..., d)
    Eu = F.normalize(E.detach(), dim=-1) if E_unit is None else E_unit
    sims, ids = _cosine_topk(e.reshape(-1, e.shape[-1]), Eu, k, _mask_bias(allowed, Eu))
    return ids.reshape(e.shape[:-1] + (k,)), sims.reshape(e.shape[:-1] + (k,))




def _mask_bias(allowed: torch.Tensor | None, E_unit: torch.Tensor) -> torch.Tensor | None:
    """(V, 1): 0 for allowed tokens, -inf for the rest (added to cosines), or None."""
    if allowed is None:
        return None
    return torch.zeros(E_unit.shape[0], 1, dtype=E_unit.dtype, device=E_unit.device).masked_fill(
        ~allowed.to(E_unit.device)[:, None], float("-inf")
    )


def _cosine_topk(u: torch.Tensor, E_unit: torch.Tensor, k: int, bias: torch.Tensor | None):
    """Top-k cosines (and ids) of unit rows u (N, d) against unit rows E_unit (V, d): (N, k) each.

    Computed as the (V, N) product E_unit @ u.T: for a few queries and a large vocabulary this
    orientation measured about 1.4x faster on CPU than u @ E_unit.T (same numbers)."""
    cos = E_unit @ u.T if bias is None else torch.addmm(bias, E_unit, u.T)  # (V, N)
    sims, ids = cos.topk(k, dim=0)
    return sims.T, ids.T


def nearest_token_distance(embeds: torch.Tensor, E: torch.Tensor, *, allowed: torch.Tensor | None = None,
                           E_unit: torch.Tensor | None = None, nearest: "NearestTokens | None" = None) -> torch.Tensor:
    """(...,) Euclidean distance from each embedding to the embedding of its projection
    (the cosine-nearest allowed token). Differentiable in ``embeds``; the choice of the
    nearest token is not (it is a hard argmax). An optimiser calling this every step can pass
    a :class:`NearestTokens` (built with the same ``E`` and ``allowed``) to find the tokens."""
    ids = project_to_tokens(embeds, E, allowed=allowed, E_unit=E_unit)[0][..., 0] if nearest is None else nearest(embeds)
    return (embeds - E[ids]).norm(dim=-1)


class NearestTokens:
    """The cosine-nearest allowed token of embeddings that move a little between calls,
    exactly, without searching the whole vocabulary on every call.

    An optimiser moves a soft prompt a short way per step, and its nearest token rarely
    changes. A full search (a (N, d) x (d, V) product) therefore keeps, for every embedding,
    its ``shortlist`` most similar tokens and ``floor``, the cosine of the last of them. Let
    ``u0`` be the embedding's unit direction then and ``u`` now, ``delta = ||u - u0||``. For any
    unit vector ``w``, ``|u.w - u0.w| <= delta`` (Cauchy-Schwarz), so no token outside the
    shortlist can now have a cosine above ``floor + delta``. When the best token of the pooled
    shortlists beats that bound for every embedding, it is the nearest token of the whole
    vocabulary; otherwise the call searches everything again. The answer is always the one
    :func:`project_to_tokens` gives (up to exact ties); ``full_searches / calls`` says how often the
    bound could not vouch.
    """

    def __init__(self, E: torch.Tensor, *, allowed: torch.Tensor | None = None, shortlist: int = 64,
                 margin: float = 1e-4):
        self.E_unit = F.normalize(E.detach(), dim=-1)
        self.allowed = None if allowed is None else allowed.to(self.E_unit.device)
        n_ok = self.E_unit.shape[0] if allowed is None else int(self.allowed.sum())
        if n_ok == 0:
            raise ValueError("no token is allowed: `allowed` is all False.")
        self.k = max(1, min(int(shortlist), n_ok))
        self.bias = _mask_bias(self.allowed, self.E_unit)
        self.margin = float(margin)  # covers rounding in the two ways the cosines are computed
        self.anchor = None  # (N, d) unit directions at the last full search
        self.calls = self.full_searches = 0

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        """Ids (...,) of the cosine-nearest allowed token of each embedding (..., d)."""
        shape = embeds.shape[:-1]
        u = F.normalize(embeds.detach().reshape(-1, embeds.shape[-1]).to(self.E_unit.dtype), dim=-1)  # (N, d)
        self.calls += 1
        if self.anchor is not None and self.anchor.shape == u.shape:
            best, j = (u @ self.rows_unit.T).max(dim=-1)
            if bool((best > self.floor + (u - self.anchor).norm(dim=-1) + self.margin).all()):
                return self.rows[j].view(shape)
        # Search everything, for every embedding: on a CPU the product costs about the same for
        # 1 or 20 queries, and fresh anchors for all keep the bound valid for longer.
        self.full_searches += 1
        sims, short = _cosine_topk(u, self.E_unit, self.k, self.bias)  # (N, k) each
        self.anchor, self.floor = u, sims[:, -1]
        self.rows = short.unique()  # every embedding is checked against the pooled shortlists
        self.rows_unit = self.E_unit[self.rows]
        return short[:, 0].reshape(shape)


# ----------------------------------------------------------------------------- scoring


def _prefix_embeds(model, tokenizer, prefix: str, device) -> torch.Tensor:
    ids = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    return token_embeddings(model)[torch.tensor(ids, dtype=torch.long, device=device)]  # (P, d)


def target_loss(
    model: nn.Module, prompt_embeds: torch.Tensor, target_ids: torch.Tensor, *, prefix_embeds: torch.Tensor | None = None
) -> torch.Tensor:
    """(R,) mean cross-entropy of the target tokens after each prompt (teacher forcing).

    ``prompt_embeds`` (R, n, d) goes in as ``inputs_embeds`` after an optional fixed
    ``prefix_embeds`` (P, d); only the last T positions' logits are computed
    (``logits_to_keep``), which keeps a step cheap.
    """
    R = prompt_embeds.shape[0]
    E = token_embeddings(model)
    t = target_ids.to(E.device)
    T = t.numel()
    parts = [prompt_embeds, E[t[:-1]].expand(R, T - 1, -1)]  # the target, shifted right by one
    if prefix_embeds is not None and prefix_embeds.numel():
        parts.insert(0, prefix_embeds.expand(R, -1, -1))
    x = torch.cat(parts, dim=1)  # (R, P + n + T - 1, d)
    logits = model(inputs_embeds=x, logits_to_keep=T).logits  # (R, T, V)
    ce = F.cross_entropy(logits.float().reshape(R * T, -1), t.repeat(R), reduction="none")
    return ce.view(R, T).mean(dim=1)


@torch.no_grad()
def score_prompts(
    model, ids: torch.Tensor, target_ids: torch.Tensor, *, prefix_embeds=None, batch_size: int = 64
) -> torch.Tensor:
    """(M,) mean target cross-entropy for token prompts ``ids`` (M, n), in chunks of ``batch_size``."""
    E = token_embeddings(model)
    out = [target_loss(model, E[chunk.to(E.device)], target_ids, prefix_embeds=prefix_embeds) for chunk in ids.split(batch_size)]
    return torch.cat(out)


def p_target(model, tokenizer, prompt: str | torch.Tensor, target: str | torch.Tensor, *, prefix: str = "") -> torch.Tensor:
    """p(target | prompt) for a prompt given as text or ids (n,) or (M, n): the product of
    the target tokens' probabilities. Text prompts are tokenised as they would be typed."""
    device = model_device(model)
    if isinstance(prompt, str):
        prompt = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    ids = prompt.reshape(-1, prompt.shape[-1]) if prompt.dim() else prompt.view(1, 1)
    t = encode_target(tokenizer, target)
    ce = score_prompts(model, ids, t, prefix_embeds=_prefix_embeds(model, tokenizer, prefix, device))
    p = torch.exp(-ce * t.numel()).cpu()
    return p[0] if prompt.dim() == 1 or isinstance(prompt, str) else p


@torch.no_grad()
def next_token_distribution(model, tokenizer, prompt: str, *, k: int = 10):
    """Top-``k`` next tokens after ``prompt``: ``(tokens as strings, probabilities (k,))``."""
    device = model_device(model)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=device)
    probs = model(input_ids=ids, logits_to_keep=1).logits[0, -1].float().softmax(-1)
    p, top = probs.topk(k)
    return [tokenizer.decode([i]) for i in top.tolist()], p.cpu()


@torch.no_grad()
def greedy_continuation(model, tokenizer, ids: torch.Tensor, *, max_new_tokens: int = 5) -> list[str]:
    """Greedy continuation of each token prompt (M, n) or (n,), decoded (the new text only)."""
    device = model_device(model)
    ids = ids.reshape(-1, ids.shape[-1]).to(device)
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    return tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)


def roundtrip_ok(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """(M,) bool: decoding each prompt (M, n) to text and encoding it again gives the same ids.
    When it does not, the text a reader sees is not the prompt that was scored."""
    ids = ids.reshape(-1, ids.shape[-1]).cpu()
    texts = tokenizer.batch_decode(ids)
    return torch.tensor([tokenizer(s, add_special_tokens=False)["input_ids"] == row.tolist() for s, row in zip(texts, ids)])


# ----------------------------------------------------------------------------- set-up shared by the methods


def _setup(model, tokenizer, target, n_tokens, n_restarts, prefix, seed, init, allowed):
    require_eval(model, "prompt inversion")
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
    loss = score_prompts(model, best_ids, t, prefix_embeds=prefix_embeds, batch_size=batch_size).cpu()  # judged afresh
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
    device, E, t, allowed, gen, ids, pre = _setup(model, tokenizer, target, n_tokens, n_restarts, prefix, seed, init, allowed)
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
        ce = target_loss(model, soft, t, prefix_embeds=pre)  # (R,)
        lam_t = lam * (step + 1) / steps if ramp else lam  # ramp: find a good soft prompt first, then snap to tokens
        objective = ce + lam_t * nearest_token_distance(soft, E, nearest=nearest).mean(dim=1)
        opt.zero_grad()
        objective.sum().backward()  # restarts are independent: the sum separates
        opt.step()
        if (step + 1) % max(1, eval_every) == 0 or step == steps - 1:
            proj = nearest(soft)
            new = (proj != scored).any(dim=1)  # a projection scored before cannot improve the best
            if bool(new.any()):
                loss = torch.full((proj.shape[0],), float("inf"), device=proj.device)
                loss[new] = score_prompts(model, proj[new], t, prefix_embeds=pre)
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
    device, E, t, allowed, gen, ids, pre = _setup(model, tokenizer, target, n_tokens, n_restarts, prefix, seed, init, allowed)
    soft = E[ids].detach().clone().requires_grad_(True)  # (R, n, d)
    opt = torch.optim.AdamW([soft], lr=lr, weight_decay=weight_decay)
    nearest = NearestTokens(E, allowed=allowed)
    best = _Best(ids)
    history, best_history = [], []
    for step in progress_bar(range(steps), total=steps, desc=f"PEZ {target!r}", enabled=progress):
        proj = nearest(soft)  # (R, n)
        hard = soft + (E[proj] - soft).detach()  # forward: the tokens; backward: into the soft prompt
        ce = target_loss(model, hard, t, prefix_embeds=pre)
        opt.zero_grad()
        ce.sum().backward()
        opt.step()
        best.update(proj, ce.detach())
        history.append(ce.detach())
        best_history.append(best.loss.clone())
        if callback is not None:
            callback(step, history[-1])
    proj = nearest(soft)  # the last step's update, scored too
    best_history[-1] = best.update(proj, score_prompts(model, proj, t, prefix_embeds=pre))
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
    loss = target_loss(model, x, t, prefix_embeds=pre)
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
    device, E, t, allowed, gen, ids, pre = _setup(model, tokenizer, target, n_tokens, n_restarts, prefix, seed, init, allowed)
    R = ids.shape[0]
    best = _Best(ids)
    history, best_history = [], []
    for _ in progress_bar(range(steps), total=steps, desc=f"GCG {target!r}", enabled=progress):
        loss, g = _onehot_grad(model, E, ids, t, pre)
        best.update(ids, loss)
        cands = torch.stack([sample_candidates(ids[r], g[r], search_width, topk=topk, n_replace=n_replace,
                                               not_allowed=~allowed, generator=gen) for r in range(R)])  # (R, S, n)
        flat = cands.view(R * search_width, n_tokens)
        cl = score_prompts(model, flat, t, prefix_embeds=pre, batch_size=batch_size).view(R, search_width)
        if filter_roundtrip:
            cl = cl.masked_fill(~roundtrip_ok(tokenizer, flat).view(R, search_width).to(cl.device), float("inf"))
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
    results = [results] if isinstance(results, PromptInversion) else list(results)
    c: collections.Counter = collections.Counter()
    for res in results:
        for row in res.ids[res.success(threshold)].tolist():
            for i in row:
                s = tokenizer.decode([i])
                c[s.strip() if strip else s] += 1
    return c
