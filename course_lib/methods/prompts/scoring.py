"""Scoring prompts: the target's loss and probability, the next-token distribution, greedy continuations."""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ... import checks
from ...device import model_device
from .._checks import language_model
from .vocab import encode_target, token_embeddings


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
    what = "target_loss"
    E = _lm_embeddings(model, what)
    checks.values(prompt_embeds, "prompt_embeds", what=what, dims=3, shape="(R, n, d)")
    if prompt_embeds.shape[-1] != E.shape[1] or prompt_embeds.shape[1] == 0:
        raise ValueError(f"{what}: prompt_embeds must be (R, n, d) with n >= 1 and the model's d={E.shape[1]}; "
                         f"got {tuple(prompt_embeds.shape)}")
    checks.same_device(E, prompt_embeds, "the model", "prompt_embeds", what=what)
    _target_ids(target_ids, E, what)
    return _target_loss(model, prompt_embeds, target_ids, prefix_embeds=prefix_embeds)


def _lm_embeddings(model, what: str) -> torch.Tensor:
    language_model(model, what)
    return token_embeddings(model)


def _target_ids(t, E: torch.Tensor, what: str, name: str = "target_ids") -> torch.Tensor:
    return checks.integers(t, name, what=what, high=E.shape[0], dims=1, shape="(T,)", kind="token id")


def _prompt_ids(ids, E: torch.Tensor, what: str, name: str = "ids") -> torch.Tensor:
    ids = checks.integers(ids, name, what=what, high=E.shape[0], dims=(1, 2), shape="(n,) or (M, n)", kind="token id")
    if ids.shape[-1] == 0:
        raise ValueError(f"{what}: {name} has no tokens (shape {tuple(ids.shape)})")
    return ids


def _target_loss(model, prompt_embeds, target_ids, *, prefix_embeds=None) -> torch.Tensor:
    """target_loss without the checks (the optimisers call it every step)."""
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
    what = "score_prompts"
    E = _lm_embeddings(model, what)
    ids = _prompt_ids(ids, E, what)
    _target_ids(target_ids, E, what)
    batch_size = checks.positive_int(batch_size, "batch_size", what=what)
    return _score_prompts(model, ids.reshape(-1, ids.shape[-1]), target_ids, prefix_embeds=prefix_embeds, batch_size=batch_size)


@torch.no_grad()
def _score_prompts(model, ids, target_ids, *, prefix_embeds=None, batch_size: int = 64) -> torch.Tensor:
    """score_prompts without the checks (GCG scores every candidate of every step)."""
    E = token_embeddings(model)
    out = [_target_loss(model, E[chunk.to(E.device)], target_ids, prefix_embeds=prefix_embeds) for chunk in ids.split(batch_size)]
    return torch.cat(out)


def p_target(model, tokenizer, prompt: str | torch.Tensor, target: str | torch.Tensor, *, prefix: str = "") -> torch.Tensor:
    """p(target | prompt) for a prompt given as text or ids (n,) or (M, n): the product of
    the target tokens' probabilities. Text prompts are tokenised as they would be typed."""
    what = "p_target"
    E = _lm_embeddings(model, what)
    device = model_device(model)
    if isinstance(prompt, str):
        prompt = torch.tensor([tokenizer(checks.text(prompt, "prompt", what=what), add_special_tokens=False)["input_ids"]])
    elif not isinstance(prompt, torch.Tensor):
        raise TypeError(f"{what}: prompt must be a string or token ids (n,) or (M, n); got {type(prompt).__name__}")
    ids = _prompt_ids(prompt.reshape(-1, prompt.shape[-1]) if prompt.dim() else prompt.view(1, 1), E, what, "prompt")
    t = encode_target(tokenizer, target)
    ce = _score_prompts(model, ids, t, prefix_embeds=_prefix_embeds(model, tokenizer, prefix, device))
    p = torch.exp(-ce * t.numel()).cpu()
    return p[0] if prompt.dim() == 1 or isinstance(prompt, str) else p


@torch.no_grad()
def next_token_distribution(model, tokenizer, prompt: str, *, k: int = 10):
    """Top-``k`` next tokens after ``prompt``: ``(tokens as strings, probabilities (k,))``."""
    what = "next_token_distribution"
    E = _lm_embeddings(model, what)
    k = checks.positive_int(k, "k", what=what)
    if k > E.shape[0]:
        raise ValueError(f"{what}: k={k} is more than the model's {E.shape[0]} tokens")
    device = model_device(model)
    ids = torch.tensor([tokenizer(checks.text(prompt, "prompt", what=what), add_special_tokens=False)["input_ids"]], device=device)
    if ids.shape[1] == 0:
        raise ValueError(f"{what}: prompt {prompt!r} encodes to no tokens")
    probs = model(input_ids=ids, logits_to_keep=1).logits[0, -1].float().softmax(-1)
    p, top = probs.topk(k)
    return [tokenizer.decode([i]) for i in top.tolist()], p.cpu()


@torch.no_grad()
def greedy_continuation(model, tokenizer, ids: torch.Tensor, *, max_new_tokens: int = 5) -> list[str]:
    """Greedy continuation of each token prompt (M, n) or (n,), decoded (the new text only)."""
    what = "greedy_continuation"
    E = _lm_embeddings(model, what)
    max_new_tokens = checks.positive_int(max_new_tokens, "max_new_tokens", what=what)
    device = model_device(model)
    ids = _prompt_ids(ids, E, what).reshape(-1, ids.shape[-1]).to(device)
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    return tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)


def roundtrip_ok(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """(M,) bool: decoding each prompt (M, n) to text and encoding it again gives the same ids.
    When it does not, the text a reader sees is not the prompt that was scored."""
    ids = checks.integers(ids, "ids", what="roundtrip_ok", high=len(tokenizer), dims=(1, 2), shape="(n,) or (M, n)",
                          kind="token id")
    return _roundtrip_ok(tokenizer, ids)


def _roundtrip_ok(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """roundtrip_ok without the checks (GCG filters every candidate)."""
    ids = ids.reshape(-1, ids.shape[-1]).cpu()
    texts = tokenizer.batch_decode(ids)
    return torch.tensor([tokenizer(s, add_special_tokens=False)["input_ids"] == row.tolist() for s, row in zip(texts, ids)])
