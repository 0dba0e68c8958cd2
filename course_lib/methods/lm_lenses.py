"""Lenses into a causal language model: residual streams, logit lens, probes, attention, SAEs.

Works for any Hugging Face causal LM without assuming its attribute names (``model.model``
for Llama, ``model.transformer`` for GPT-2): :func:`find_layers` finds the decoder blocks,
the final norm and the unembedding from the module tree and the config.

    names = find_layers(model)                        # LayerNames(blocks=[...], final_norm=..., ...)
    lens = logit_lens(model, input_ids)               # (L+1, T, V): embeddings, then each block
    last = logit_lens(model, input_ids, positions=-1)  # (L+1, 1, V): only the last position unembedded
    acts = capture_activations(model, tok, texts, layers=[3, 6])   # flattened real tokens, cached
    result = train_probe(X, y, seed=0)                # logistic regression, held-out accuracy
    y_ctl = control_labels(token_ids, y, seed=0)      # Hewitt & Liang (2019) control task
    pats = attention_patterns(model, input_ids)       # (L, H, T, T)
    sae, curve = train_sae(X, n_latents=1024, l1=3e-3, steps=2000, seed=0)
    p = pretrained_sae(model, tok, corpus_texts, SAEConfig())   # trained on first use, then loaded from the cache
    lm_loss(model, tok, texts, layer=p.config.layer, replace=p.reconstruct)   # the SAE spliced in

References: nostalgebraist (2020) "interpreting GPT: the logit lens"; Hewitt & Liang (2019)
"Designing and Interpreting Probes with Control Tasks"; Olsson et al. (2022) "In-context
Learning and Induction Heads"; Bricken et al. (2023) "Towards Monosemanticity";
Cunningham et al. (2023) "Sparse Autoencoders Find Highly Interpretable Features".
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .. import checks
from ..device import seeded_cpu_rng
from ..hooks import get_module, patch
try:
    from ..progress import progress_bar
except ImportError:  # before course_lib.progress landed, the bar lived in games (a layer above)
    def progress_bar(iterable, *, total=None, desc="", enabled=True):
        import os

        if not enabled or os.environ.get("NBGRADER_EXECUTION") or os.environ.get("COURSE_LIB_NO_PROGRESS"):
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False)

__all__ = [
    "LayerNames", "find_layers", "residual_stream", "logit_lens", "capture_activations",
    "ProbeResult", "train_probe", "control_labels", "probe_layers", "attention_patterns",
    "previous_token_scores", "induction_scores", "SparseAutoencoder", "sae_loss", "train_sae",
    "sae_report", "lm_loss", "top_contexts", "SAEConfig", "PretrainedSAE", "sae_texts", "pretrained_sae",
]


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


def _texts(texts, what: str) -> list[str]:
    """A non-empty list of strings (a single string is refused: it would be read letter by letter)."""
    if isinstance(texts, str):
        raise TypeError(f"{what}: texts must be a list of strings; got one string. Use [text].")
    texts = list(checks.non_empty(texts, "texts", what=what))
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{what}: texts must be strings; got {type(bad[0]).__name__} {bad[0]!r:.40}")
    return texts


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
        pos = torch.as_tensor([positions] if isinstance(positions, int) else list(positions), device=resid.device)
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

    layers = [int(l) for l in layers]
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


# ----------------------------------------------------------------------------- probes
@dataclass
class ProbeResult:
    """A linear probe: ``logits = x @ weight.T + bias``, fitted on the train rows only."""

    train_acc: float
    test_acc: float
    weight: torch.Tensor = field(repr=False)  # (C, D), in the standardised coordinates
    bias: torch.Tensor = field(repr=False)  # (C,)
    mean: torch.Tensor = field(repr=False)  # (D,) of the train rows
    std: torch.Tensor = field(repr=False)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (((x - self.mean) / self.std) @ self.weight.T + self.bias).argmax(-1)


def split_indices(n: int, *, test_fraction: float = 0.25, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``(train, test)`` split of ``range(n)``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(test_fraction * n)))
    return perm[n_test:], perm[:n_test]


def train_probe(x: torch.Tensor, y: torch.Tensor, *, train_idx: torch.Tensor | None = None, test_idx: torch.Tensor | None = None,
                l2: float = 1e-3, steps: int = 100, seed: int = 0) -> ProbeResult:
    """Multinomial logistic regression on ``x (N, D)`` for labels ``y (N,)`` (full-batch L-BFGS),
    fitted on ``train_idx`` and scored on ``test_idx`` (default: a random 75/25 split by ``seed``)."""
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
    return ProbeResult(acc(train_idx), acc(test_idx), w, b, mean, std)


def control_labels(token_ids: torch.Tensor, labels: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """Hewitt & Liang's control task: each word *type* gets a random label, drawn from the
    labels' empirical distribution; every occurrence of the type carries it. A probe can only
    do well on it by memorising types, so task accuracy minus control accuracy (selectivity)
    says how much of the probe's accuracy the representation, not the probe, explains."""
    g = torch.Generator().manual_seed(seed)
    types, inverse = torch.unique(token_ids.cpu(), return_inverse=True)
    freq = torch.bincount(labels.cpu().long()).float()
    per_type = torch.multinomial(freq / freq.sum(), len(types), replacement=True, generator=g)
    return per_type[inverse].to(labels.device)


def probe_layers(acts: dict[int, torch.Tensor], y: torch.Tensor, *, control: torch.Tensor | None = None,
                 seed: int = 0, **kw) -> dict[int, dict[str, float]]:
    """Probe every layer with the same split: ``{layer: {"train", "test", "control", "selectivity"}}``."""
    n = len(y)
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


# ----------------------------------------------------------------------------- attention
@torch.no_grad()
def attention_patterns(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention weights of every head, ``(L, H, T, T)`` for ``(T,)`` input or ``(L, B, H, T, T)``.

    Runs the eager attention for this call (fused kernels do not return the weights) and
    restores the model's own implementation afterwards."""
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
    return patterns.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)


def induction_scores(patterns: torch.Tensor, period: int) -> torch.Tensor:
    """On a sequence whose tokens repeat with ``period`` (``[r, r]``), the mean attention from each
    token of the repeat to the token *after* its previous occurrence (Olsson et al. 2022): ``(L, H)``."""
    return patterns.diagonal(offset=-(period - 1), dim1=-2, dim2=-1)[..., 1:].mean(-1)


# ----------------------------------------------------------------------------- SAE
class SparseAutoencoder(nn.Module):
    """``f = relu(W_enc (x - b_dec) + b_enc)``, ``x_hat = W_dec f + b_dec`` with unit-norm decoder columns
    (Bricken et al. 2023). Sparsity comes from an L1 penalty on ``f``."""

    def __init__(self, d_model: int, n_latents: int, *, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(d_model, n_latents, generator=g)
        w = w / w.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(w)  # (D, F), columns are the latents' directions
        self.W_enc = nn.Parameter(w.T.clone())  # (F, D)
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(d_model))

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N, F)
        return torch.relu((x - self.b_dec) @ self.W_enc.T + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:  # (N, F) -> (N, D)
        return f @ self.W_dec.T + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return self.decode(f), f

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=0, keepdim=True).clamp(min=1e-8)


def sae_loss(x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor, l1: float) -> torch.Tensor:
    """Squared reconstruction error summed over dimensions plus ``l1`` times the L1 norm of the
    latents, both averaged over the batch."""
    return ((x_hat - x) ** 2).sum(-1).mean() + l1 * f.abs().sum(-1).mean()


def train_sae(x: torch.Tensor, *, n_latents: int, l1: float, steps: int = 1000, batch_size: int = 256,
              lr: float = 1e-3, seed: int = 0, progress: bool = True) -> tuple[SparseAutoencoder, list[float]]:
    """Adam on minibatches of ``x (N, D)``; the decoder columns are renormalised after every step.
    Returns the SAE and its training curve (the loss of every step). ``x`` is best pre-scaled
    (see :func:`sae_report`'s ``scale``); the SAE lives on ``x``'s device."""
    with seeded_cpu_rng(seed):  # the global generator, for the initial weights; the caller's state is put back
        sae = SparseAutoencoder(x.shape[1], n_latents, seed=seed).to(x.device)
        with torch.no_grad():
            sae.b_dec.copy_(x.median(0).values)
        opt = torch.optim.Adam(sae.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        curve = []
        for _ in progress_bar(range(steps), total=steps, desc="SAE", enabled=progress):
            idx = torch.randint(len(x), (batch_size,), generator=g).to(x.device)
            xb = x[idx]
            x_hat, f = sae(xb)
            loss = sae_loss(xb, x_hat, f, l1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sae.normalise_decoder()
            curve.append(loss.item())
        return sae.requires_grad_(False).eval(), curve


@torch.no_grad()
def sae_report(sae: SparseAutoencoder, x: torch.Tensor, *, dense_threshold: float = 0.1) -> dict:
    """Fraction of variance unexplained, mean L0, dead latents (never active on ``x``), dense
    latents (active on more than ``dense_threshold`` of the rows)."""
    x_hat, f = sae(x)
    fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    active = (f > 0).float()
    freq = active.mean(0)
    return {"fvu": fvu.item(), "l0": active.sum(-1).mean().item(), "dead": int((freq == 0).sum()),
            "dense": int((freq > dense_threshold).sum()), "n_latents": f.shape[1], "freq": freq}


@torch.no_grad()
def lm_loss(model: nn.Module, tokenizer, texts: Sequence[str], *, layer: int | None = None, replace=None,
            max_length: int = 64, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy on ``texts``; with ``layer`` and ``replace``, the output of
    block ``layer-1`` (the residual stream at ``layer``) is replaced by ``replace(resid)`` at every
    position, e.g. an SAE's reconstruction (splice-in) or zeros (ablation)."""
    what = "lm_loss"
    checks.module(model, what=what)
    texts = _texts(texts, what)
    batch_size = checks.positive_int(batch_size, "batch_size", what=what)
    max_length = checks.positive_int(max_length, "max_length", what=what)
    device = next(model.parameters()).device
    names = find_layers(model)
    if (layer is None) != (replace is None):
        raise ValueError(f"{what}: give both layer and replace (to splice replace(resid) in at that layer) or neither; "
                         f"got layer={layer!r}, replace={'None' if replace is None else 'a function'}")
    if layer is not None:
        # the residual stream at layer l is the output of block l-1: l = 0 (the embeddings) has no block to patch
        n_blocks = len(names.blocks)
        checks.non_negative_int(layer, "layer", what=what)
        if not 1 <= layer <= n_blocks:
            raise ValueError(f"{what}: layer={layer} cannot be replaced; layer must lie in 1..{n_blocks} (the residual "
                             "stream after block layer-1; 0 is the embeddings, which have no block to patch).")
        if not callable(replace):
            raise TypeError(f"{what}: replace must be a function (N, D) -> (N, D), e.g. an SAE's reconstruct; got {type(replace).__name__}")
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            list(texts[start : start + batch_size]), return_tensors="pt", padding=True, truncation=True, max_length=max_length
        )
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)

        def run(ids=ids, mask=mask):
            return model(input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask), use_cache=False).logits

        if layer is None:
            logits = run()
        else:
            def fn(out):
                h = _hidden(out)
                new = replace(h.reshape(-1, h.shape[-1])).reshape(h.shape).to(h.dtype)
                return (new, *out[1:]) if isinstance(out, (tuple, list)) else new

            with patch(model, names.blocks[layer - 1], fn):
                logits = run()
        target_mask = (mask[:, 1:] * mask[:, :-1]).bool()
        ce = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        total += ce[target_mask].sum().item()
        count += int(target_mask.sum())
    return total / count


def top_contexts(values: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor, token_ids: torch.Tensor, tokenizer,
                 texts: Sequence[str], *, k: int = 5, window: int = 8, max_length: int = 64) -> list[tuple[float, str]]:
    """The ``k`` tokens where ``values (N,)`` is largest, each shown with up to ``window`` tokens
    before it and the token itself in [brackets]."""
    top = values.topk(min(k, len(values)))
    out = []
    for v, i in zip(top.values.tolist(), top.indices.tolist()):
        ids = tokenizer(texts[int(doc[i])], truncation=True, max_length=max_length)["input_ids"]
        p = int(pos[i])
        left = tokenizer.decode(ids[max(0, p - window):p])
        out.append((v, f"{left}[{tokenizer.decode(ids[p:p + 1])}]"))
    return out


# ----------------------------------------------------------------------------- a cached SAE
@dataclass(frozen=True)
class SAEConfig:
    """The recipe of a cached SAE, lecture 08's by default. Its fingerprint (with the model's and the
    texts') names the cache file, so another recipe is another file."""

    layer: int = 12  # the residual stream after block 11
    n_texts: int = 200  # texts drawn from the corpus with ``seed``
    max_length: int = 32  # tokens per text
    n_latents: int = 512
    l1: float = 2.0
    steps: int = 300
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0
    massive: float = 10.0  # tokens whose norm exceeds this times the median are left out ("massive activations")


@dataclass
class PretrainedSAE:
    """A trained SAE with what it needs to be used: activations ``h`` of the model are fed as
    ``h / scale * sqrt(D)`` (mean norm ``sqrt(D)``), and tokens with norm above ``cutoff`` are left out."""

    sae: SparseAutoencoder
    curve: list[float]  # the loss of every training step
    config: SAEConfig
    scale: float
    cutoff: float
    texts: list[str]  # the training texts, drawn from the corpus
    path: Path  # the weights file
    trained: bool  # True if this call trained it, False if it was loaded
    build_seconds: float  # wall time of the capture and the training, when it was built

    def scaled(self, h: torch.Tensor) -> torch.Tensor:
        """Model activations ``(N, D)`` in the SAE's units."""
        return h / self.scale * h.shape[-1] ** 0.5

    def reconstruct(self, h: torch.Tensor) -> torch.Tensor:
        """The SAE's reconstruction of ``h (N, D)`` in the model's units; massive-norm tokens pass through
        untouched (use as ``lm_loss(..., replace=p.reconstruct)`` to splice it into the model)."""
        x_hat = self.sae(self.scaled(h).to(self.sae.W_dec.dtype))[0].to(h.dtype) * self.scale / h.shape[-1] ** 0.5
        return torch.where(h.norm(dim=-1, keepdim=True) > self.cutoff, h, x_hat)


def sae_texts(corpus: Sequence[str], config: SAEConfig = SAEConfig()) -> list[str]:
    """The ``config.n_texts`` texts of ``corpus`` an SAE of this recipe is trained on (drawn with ``config.seed``)."""
    import numpy as np

    pick = np.random.default_rng(config.seed).choice(len(corpus), size=min(config.n_texts, len(corpus)), replace=False)
    return [corpus[int(i)] for i in pick]


def _sae_folders(cache_dir) -> list[Path]:
    if cache_dir is not None:
        return [Path(cache_dir)]
    from ..zoo.cache import home, user_cache

    return [home() / "sae", user_cache() / "sae"]  # an instructor's prebuilt one (may be read-only), then the user's


def pretrained_sae(model: nn.Module, tokenizer, corpus: Sequence[str], config: SAEConfig = SAEConfig(), *,
                   cache_dir: str | Path | None = None, acts_cache_dir: str | Path | None = None,
                   progress: bool = True, log=print) -> PretrainedSAE:
    """The SAE of ``config`` on ``model``'s residual stream over texts of ``corpus``: trained on first use
    (fixed seed) and saved with its training curve and config; loaded, not trained, on later calls.

    The files are ``sae-<fingerprint>.safetensors`` (weights) and ``.json`` (config, curve, scale, cutoff
    and the weights' sha256) in ``cache_dir``, by default the course cache (``<COURSE_LIB_HOME>/sae``, where
    ``course-lib train-zoo --sae`` prebuilds lecture 08's), else the user's cache. The fingerprint covers
    the recipe, the model's weights and the texts. A file whose checksum or config does not match is not
    used: a warning names it and the SAE is retrained and rewritten. ``acts_cache_dir`` is passed to
    :func:`capture_activations` for the training activations. Training rounds the activations to float16,
    so a cached capture and a fresh one give the same SAE.
    """
    import time
    import warnings

    from safetensors.torch import load_file, save_file

    from ..zoo.cache import sha256, writable

    texts = sae_texts(corpus, config)
    cfg = dict(vars(config))
    key = hashlib.sha256(
        (json.dumps(cfg, sort_keys=True) + _fingerprint(model, texts, [config.layer], config.max_length)).encode()
    ).hexdigest()[:24]
    device = next(model.parameters()).device
    folders = _sae_folders(cache_dir)
    for folder in folders:
        path, meta_path = folder / f"sae-{key}.safetensors", folder / f"sae-{key}.json"
        if not (path.is_file() and meta_path.is_file()):
            continue
        try:
            meta = json.loads(meta_path.read_text())
            record = [list(meta["curve"]), float(meta["scale"]), float(meta["cutoff"]), float(meta["build_seconds"])]
            problem = ("its config differs from the one asked for" if meta["config"] != cfg else
                       "its weights do not have the sha256 recorded with them" if sha256(path) != meta["sha256"] else None)
        except (ValueError, KeyError, TypeError, OSError) as err:
            problem = f"its record {meta_path.name} cannot be read ({type(err).__name__}: {err})"
        if problem is None:
            state = load_file(path)
            sae = SparseAutoencoder(state["W_dec"].shape[0], config.n_latents, seed=config.seed)
            sae.load_state_dict(state)
            curve, scale, cutoff, seconds = record
            return PretrainedSAE(sae.requires_grad_(False).eval().to(device), curve, config, scale, cutoff, texts, path, False, seconds)
        warnings.warn(f"The cached SAE at {path} was not used: {problem}. It is trained again now "
                      f"(delete {path} and {meta_path.name} to silence this).", stacklevel=2)
    t0 = time.perf_counter()
    cap = capture_activations(model, tokenizer, texts, [config.layer], max_length=config.max_length, batch_size=50,
                              cache_dir=acts_cache_dir, progress=progress)
    x_all = cap["acts"][config.layer].half().float()  # (N, D), float16 values whether cached or not
    norms = x_all.norm(dim=-1)
    cutoff = float(config.massive * norms.median())
    x = x_all[norms <= cutoff]
    scale = float(x.norm(dim=-1).mean())
    x = (x / scale * x.shape[1] ** 0.5).to(device)
    sae, curve = train_sae(x, n_latents=config.n_latents, l1=config.l1, steps=config.steps, batch_size=config.batch_size,
                           lr=config.lr, seed=config.seed, progress=progress)
    seconds = round(time.perf_counter() - t0, 2)  # capture + training
    folder = next((f for f in folders if writable(f)), None)
    path = None
    if folder is None:
        warnings.warn(
            f"No writable folder among {[str(f) for f in folders]}: the SAE is not cached and will be trained again.", stacklevel=2
        )
    else:
        path, meta_path = folder / f"sae-{key}.safetensors", folder / f"sae-{key}.json"
        tmp = path.with_suffix(f".{os.getpid()}.part")  # two processes may write at once
        save_file({k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}, str(tmp),
                  metadata={"config": json.dumps(cfg)})
        tmp.replace(path)
        meta = {"config": cfg, "sha256": sha256(path), "scale": scale, "cutoff": cutoff, "build_seconds": seconds,
                "n_tokens": len(x), "layer": config.layer, "curve": curve}
        meta_path.write_text(json.dumps(meta) + "\n")
        if log:
            log(f"SAE built (capture + training) in {seconds:.0f} s and cached at {path}")
    return PretrainedSAE(sae, curve, config, scale, cutoff, texts, path, True, seconds)
