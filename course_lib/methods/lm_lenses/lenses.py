"""Reading a causal LM: its layers, the residual stream, the logit lens, cached activations, attention."""
from __future__ import annotations

import hashlib
import json
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ... import checks
from ...hooks import get_module
from ...progress import progress_bar
from .._checks import attention as _patterns
from .._checks import language_model


# ----------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class LayerNames:
    """Dotted module names (for :mod:`course_lib.hooks`) of the parts the lenses need."""

    blocks: list[str]  # the decoder blocks in order; their outputs are the residual stream
    final_norm: str  # applied to the last block's output before the unembedding
    unembed: str  # the output embedding (``lm_head``)


def find_layers(model: nn.Module) -> LayerNames:
    """Find the decoder blocks, the final norm and the unembedding of a HF causal LM.

    The blocks are the ``nn.ModuleList`` with ``config.num_hidden_layers`` entries; the final
    norm is the first norm-like module registered after it in the base model.
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"find_layers: model must be a Hugging Face causal language model (e.g. load_model('smollm2-135m')[0]); "
                        f"got {type(model).__name__}")
    n_layers = getattr(model.config, "num_hidden_layers", None)
    names = dict((m, n) for n, m in model.named_modules())
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    if not lists:
        raise ValueError(f"{type(model).__name__}: found no ModuleList of {n_layers} decoder blocks; pass a Hugging Face causal LM.")
    blocks_name, blocks = lists[0]
    parent_name = blocks_name.rsplit(".", 1)[0] if "." in blocks_name else ""
    parent = get_module(model, parent_name) if parent_name else model
    after, final_norm = False, None
    for child_name, child in parent.named_children():
        if child is blocks:
            after = True
        elif after and ("norm" in type(child).__name__.lower() or "ln" in child_name.lower() or "norm" in child_name.lower()):
            final_norm = f"{parent_name}.{child_name}" if parent_name else child_name
            break
    if final_norm is None:
        raise ValueError(f"{type(model).__name__}: no final norm found after {blocks_name!r}.")
    unembed = model.get_output_embeddings()
    if unembed is None or unembed not in names:
        raise ValueError(f"{type(model).__name__} has no output embedding (get_output_embeddings() is None).")
    return LayerNames([f"{blocks_name}.{i}" for i in range(len(blocks))], final_norm, names[unembed])


def _texts(texts, what: str, name: str = "texts") -> list[str]:
    """A non-empty list of strings (a single string is refused: it would be read letter by letter)."""
    return checks.texts(texts, name, what=what)


def _ids(model: nn.Module, input_ids, attention_mask, what: str):
    """``(input_ids, attention_mask)`` checked: token ids (T,) or (B, T) in the model's vocabulary, a mask of that shape."""
    language_model(model, what)
    vocab = model.get_input_embeddings().num_embeddings
    input_ids = checks.integers(input_ids, "input_ids", what=what, high=vocab, dims=(1, 2), shape="(T,) or (B, T)",
                                kind="token id")
    if input_ids.shape[-1] == 0:
        raise ValueError(f"{what}: input_ids has no tokens (shape {tuple(input_ids.shape)}); pass at least one.")
    if attention_mask is not None:
        checks.tensor(attention_mask, "attention_mask", what=what)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"{what}: attention_mask must have the shape of input_ids {tuple(input_ids.shape)}; "
                             f"got {tuple(attention_mask.shape)}")
    return input_ids, attention_mask


def _hidden(output) -> torch.Tensor:
    """A block's output is a tensor (transformers >= 5) or a tuple whose first entry is the hidden state."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left and right padding give the same activations."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the last wanted block has run."""


def _record(model: nn.Module, names: LayerNames, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            layers: Sequence[int], *, logits: bool) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """One forward pass that records the residual stream at ``layers`` (0 = embeddings, l = after block l-1),
    hooking only those blocks (its own hooks rather than ``hooks.capture``: it also records the input of
    block 0 and can stop the pass early). With ``logits=False`` the pass stops after the last block asked for (the final norm,
    the unembedding and any later block cost nothing) and builds no key/value cache."""
    blocks = model.get_submodule(names.blocks[0].rsplit(".", 1)[0])  # the ModuleList
    store: dict[int, torch.Tensor] = {}

    def pre(_m, args, kwargs):  # the embeddings: the input of block 0
        store[0] = (args[0] if args else kwargs["hidden_states"]).detach()

    def keep(layer):
        def hook(_m, _i, out):
            store[layer] = _hidden(out).detach()
        return hook

    def stop(_m, _i, _o):
        raise _Stop

    handles = []
    try:
        if 0 in layers:
            handles.append(blocks[0].register_forward_pre_hook(pre, with_kwargs=True))
        for layer in sorted(set(layers) - {0}):
            handles.append(blocks[layer - 1].register_forward_hook(keep(layer)))
        kw = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=_position_ids(attention_mask))
        if logits:
            return store, model(**kw).logits
        handles.append(blocks[max(max(layers), 1) - 1].register_forward_hook(stop))
        try:
            model(**kw, use_cache=False)
        except _Stop:
            pass
        return store, None
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def residual_stream(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                    up_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(resid, logits)``: the residual stream before block 0 and after every block, ``(L+1, B, T, D)``,
    and the model's own logits ``(B, T, V)``, from one forward pass.

    With ``up_to=l`` the pass stops after block ``l-1``: ``resid`` is ``(l+1, B, T, D)``, logits None
    (the later blocks cost nothing)."""
    input_ids, attention_mask = _ids(model, input_ids, attention_mask, "residual_stream")
    names = find_layers(model)
    if up_to is not None:
        checks.non_negative_int(up_to, "up_to", what="residual_stream")
        if up_to > len(names.blocks):
            raise ValueError(f"residual_stream: up_to={up_to} is out of range; the model has {len(names.blocks)} blocks, "
                             f"so up_to must lie in 0..{len(names.blocks)}.")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    last = len(names.blocks) if up_to is None else max(up_to, 1)
    store, logits = _record(model, names, input_ids, attention_mask, range(last + 1), logits=up_to is None)
    return torch.stack([store[l] for l in range(last + 1)]), logits


@torch.no_grad()
def logit_lens(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
               positions: Sequence[int] | int | None = None, return_model_logits: bool = False):
    """The logit lens (nostalgebraist 2020): every layer's residual stream read through the final
    norm and the unembedding, as if the model stopped there.

    ``input_ids`` is ``(T,)`` or ``(B, T)``; returns logits ``(L+1, T, V)`` or ``(L+1, B, T, V)``:
    index 0 is the embeddings, index ``l`` the output of block ``l-1``, the last equals the model's logits.
    ``positions`` (e.g. ``-1``) unembeds only those positions: ``(L+1, P, V)``, far cheaper than all
    ``T`` (the unembedding of every layer is most of the lens's cost). Without ``return_model_logits``
    the model's own final norm and unembedding are skipped (the lens computes them anyway).
    """
    input_ids, attention_mask = _ids(model, input_ids, attention_mask, "logit_lens")
    single = input_ids.dim() == 1
    if single:
        input_ids = input_ids[None]
        attention_mask = None if attention_mask is None else attention_mask[None]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    names = find_layers(model)
    n = len(names.blocks)
    store, logits = _record(model, names, input_ids, attention_mask, range(n + 1), logits=return_model_logits)
    resid = torch.stack([store[l] for l in range(n + 1)])  # (L+1, B, T, D)
    if positions is not None:
        T = input_ids.shape[1]
        wanted = list(positions) if isinstance(positions, (list, tuple, range)) or (
            isinstance(positions, torch.Tensor) and positions.dim() == 1) else [positions]
        wanted = list(checks.non_empty(wanted, "positions", what="logit_lens"))
        for p in wanted:  # -1 is the last position here, as in Python
            whole = isinstance(p, numbers.Integral) and not isinstance(p, bool) or (
                isinstance(p, torch.Tensor) and p.dim() == 0 and not p.is_floating_point() and p.dtype != torch.bool)
            if not whole or not -T <= int(p) < T:
                raise ValueError(f"logit_lens: positions must be token positions in -{T}..{T - 1} (-1 = the last); got {p!r}")
        pos = torch.as_tensor([int(p) for p in wanted], device=resid.device)
        resid = resid[:, :, pos]
        logits = None if logits is None else logits[:, pos]
    lens = get_module(model, names.unembed)(get_module(model, names.final_norm)(resid))  # (L+1, B, T, V)
    if single:
        lens, logits = lens[:, 0], None if logits is None else logits[0]
    return (lens, logits) if return_model_logits else lens


# ----------------------------------------------------------------------------- capture
def _fingerprint(model: nn.Module, texts: Sequence[str], layers: Sequence[int], max_length: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"model": type(model).__name__, "config": getattr(model.config, "name_or_path", ""),
                         "layers": list(layers), "max_length": max_length}).encode())
    for p in list(model.parameters())[:: max(1, len(list(model.parameters())) // 8)]:
        h.update(p.detach().float().cpu().flatten()[:256].numpy().tobytes())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@torch.no_grad()
def capture_activations(model: nn.Module, tokenizer, texts: Sequence[str], layers: Sequence[int], *,
                        max_length: int = 64, batch_size: int = 16, cache_dir: str | Path | None = None,
                        progress: bool = True) -> dict:
    """The residual stream after the given blocks (0 = embeddings, l = after block l-1) for every
    real (non-padding) token of ``texts``, in one batched pass.

    Returns ``{"acts": {layer: (N, D) float32}, "token_ids": (N,), "doc": (N,), "pos": (N,)}``,
    tokens in text order. The result does not depend on ``batch_size`` or the padding side.
    Only the blocks asked for are hooked, and the forward pass stops after the last of them. With
    ``cache_dir`` the activations are stored there in float16 with a sha256, and loaded (checked)
    on the next call with the same model, texts, layers and ``max_length``.
    """
    from safetensors.torch import load_file, save_file

    what = "capture_activations"
    language_model(model, what)
    texts = _texts(texts, what)
    layers = [checks.non_negative_int(l, "layers", what=what) for l in checks.non_empty(layers, "layers", what=what)]
    max_length = checks.positive_int(max_length, "max_length", what=what)
    batch_size = checks.positive_int(batch_size, "batch_size", what=what)
    path = None
    if cache_dir is not None:
        key = _fingerprint(model, texts, layers, max_length)
        path = Path(cache_dir) / f"acts-{key}.safetensors"
        sha_path = path.with_suffix(".sha256")
        if path.is_file() and sha_path.is_file() and _file_sha(path) == sha_path.read_text().strip():
            t = load_file(path)
            return {"acts": {l: t[f"layer{l}"].float() for l in layers}, "token_ids": t["token_ids"], "doc": t["doc"], "pos": t["pos"]}
    device = next(model.parameters()).device
    names = find_layers(model)
    n_layers = len(names.blocks)
    if any(not 0 <= l <= n_layers for l in layers):
        raise ValueError(f"layers must be in 0..{n_layers} (0 = embeddings); got {layers}")
    out = {l: [] for l in layers}
    ids_all, doc_all, pos_all = [], [], []
    starts = range(0, len(texts), batch_size)
    for start in progress_bar(starts, total=len(starts), desc="capture", enabled=progress):
        batch = list(texts[start:start + batch_size])
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        store, _ = _record(model, names, ids, mask, layers, logits=False)  # {layer: (B, T, D)}
        keep = mask.bool()
        for l in layers:
            out[l].append(store[l][keep].float().cpu())
        ids_all.append(ids[keep].cpu())
        doc_all.append((torch.arange(len(batch), device=device)[:, None].expand_as(ids) + start)[keep].cpu())
        pos_all.append(_position_ids(mask)[keep].cpu())
    result = {"acts": {l: torch.cat(out[l]) for l in layers}, "token_ids": torch.cat(ids_all),
              "doc": torch.cat(doc_all), "pos": torch.cat(pos_all)}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"layer{l}": result["acts"][l].half().contiguous() for l in layers}
        tensors.update(token_ids=result["token_ids"], doc=result["doc"], pos=result["pos"])
        tmp = path.with_suffix(f".{os.getpid()}.part")  # two processes may write at once
        save_file(tensors, str(tmp))
        tmp.replace(path)
        path.with_suffix(".sha256").write_text(_file_sha(path) + "\n")
        result["acts"] = {l: tensors[f"layer{l}"].float() for l in layers}  # same values as a cache hit
    return result


# ----------------------------------------------------------------------------- attention
@torch.no_grad()
def attention_patterns(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention weights of every head, ``(L, H, T, T)`` for ``(T,)`` input or ``(L, B, H, T, T)``.

    Runs the eager attention for this call (fused kernels do not return the weights) and
    restores the model's own implementation afterwards."""
    input_ids, attention_mask = _ids(model, input_ids, attention_mask, "attention_patterns")
    single = input_ids.dim() == 1
    if single:
        input_ids = input_ids[None]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    before = model.config._attn_implementation
    try:
        model.set_attn_implementation("eager")
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=_position_ids(attention_mask), output_attentions=True
        )
    finally:
        model.set_attn_implementation(before)
    pats = torch.stack(out.attentions)  # (L, B, H, T, T)
    return pats[:, 0] if single else pats


def previous_token_scores(patterns: torch.Tensor) -> torch.Tensor:
    """Mean attention from each position to the one before it: ``(L, H, T, T) -> (L, H)``."""
    _patterns(patterns, "previous_token_scores")
    return patterns.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)


def induction_scores(patterns: torch.Tensor, period: int) -> torch.Tensor:
    """On a sequence whose tokens repeat with ``period`` (``[r, r]``), the mean attention from each
    token of the repeat to the token *after* its previous occurrence (Olsson et al. 2022): ``(L, H)``."""
    T = _patterns(patterns, "induction_scores").shape[-1]
    period = checks.positive_int(period, "period", what="induction_scores")
    if 2 * period > T:
        raise ValueError(f"induction_scores: period={period} does not repeat within the {T} positions of patterns; "
                         "the sequence must be [r, r] with len(r) = period")
    return patterns.diagonal(offset=-(period - 1), dim1=-2, dim2=-1)[..., 1:].mean(-1)

