"""Sparse autoencoders on activations: training, a report, the LM loss with the SAE spliced in, a cached SAE."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ... import checks
from ...cache import home, sha256, user_cache, writable
from ...device import seeded_cpu_rng
from ...hooks import patch
from ...progress import progress_bar
from .._checks import language_model
from .lenses import _fingerprint, _hidden, _position_ids, _texts, capture_activations, find_layers


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
    what = "sae_loss"
    for name, t in (("x", x), ("x_hat", x_hat), ("f", f)):
        checks.values(t, name, what=what, dims=2, shape="(N, D)")
    if x_hat.shape != x.shape or f.shape[0] != x.shape[0]:
        raise ValueError(f"{what}: x {tuple(x.shape)}, x_hat {tuple(x_hat.shape)} and f {tuple(f.shape)} must have the same "
                         "rows (and x_hat the shape of x)")
    l1 = checks.positive_number(l1, "l1", what=what, allow_zero=True)
    return ((x_hat - x) ** 2).sum(-1).mean() + l1 * f.abs().sum(-1).mean()


def train_sae(x: torch.Tensor, *, n_latents: int, l1: float, steps: int = 1000, minibatch: int = 256,
              lr: float = 1e-3, seed: int = 0, progress: bool = True,
              batch_size: int | None = None) -> tuple[SparseAutoencoder, list[float]]:
    """Adam on minibatches of ``x (N, D)``; the decoder columns are renormalised after every step.
    Returns the SAE and its training curve (the loss of every step). ``x`` is best pre-scaled
    (see :func:`sae_report`'s ``scale``); the SAE lives on ``x``'s device. ``minibatch``: rows drawn per
    step (the SGD minibatch; ``batch_size``, its older name, is still accepted: in course_lib ``batch_size``
    means chunking only)."""
    what = "train_sae"
    checks.values(x, "x", what=what, dims=2, shape="(N, D)")
    n_latents = checks.positive_int(n_latents, "n_latents", what=what)
    l1 = checks.positive_number(l1, "l1", what=what, allow_zero=True)
    steps = checks.positive_int(steps, "steps", what=what)
    if batch_size is not None:  # the older name of minibatch
        if minibatch != 256 and minibatch != batch_size:
            raise ValueError(f"{what}: give minibatch (or its older name batch_size), not both; got {minibatch} and {batch_size}")
        minibatch = batch_size
    minibatch = checks.positive_int(minibatch, "minibatch" if batch_size is None else "batch_size", what=what)
    lr = checks.positive_number(lr, "lr", what=what)
    with seeded_cpu_rng(seed):  # the global generator, for the initial weights; the caller's state is put back
        sae = SparseAutoencoder(x.shape[1], n_latents, seed=seed).to(x.device)
        with torch.no_grad():
            sae.b_dec.copy_(x.median(0).values)
        opt = torch.optim.Adam(sae.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        curve = []
        for _ in progress_bar(range(steps), total=steps, desc="SAE", enabled=progress):
            idx = torch.randint(len(x), (minibatch,), generator=g).to(x.device)
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
    checks.values(x, "x", what="sae_report", dims=2, shape="(N, D)")
    dense_threshold = checks.probability(dense_threshold, "dense_threshold", what="sae_report")
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
    language_model(model, what)
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
    what = "top_contexts"
    checks.values(values, "values", what=what, dims=1, shape="(N,)")
    texts = _texts(texts, what)
    k = checks.positive_int(k, "k", what=what)
    window = checks.non_negative_int(window, "window", what=what)
    max_length = checks.positive_int(max_length, "max_length", what=what)
    for name, t in (("doc", doc), ("pos", pos), ("token_ids", token_ids)):
        checks.integers(t, name, what=what, dims=1)
        if len(t) != len(values):
            raise ValueError(f"{what}: {name} must have one entry per value ({len(values)}); got {len(t)}")
    if int(doc.max()) >= len(texts):
        raise ValueError(f"{what}: doc holds text index {int(doc.max())}, but there are {len(texts)} texts")
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
    batch_size: int = 128  # train_sae's minibatch; the field keeps its name, which is part of cached SAEs' fingerprints
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

    corpus = _texts(corpus, "sae_texts", "corpus")
    pick = np.random.default_rng(config.seed).choice(len(corpus), size=min(config.n_texts, len(corpus)), replace=False)
    return [corpus[int(i)] for i in pick]


def _sae_folders(cache_dir) -> list[Path]:
    if cache_dir is not None:
        return [Path(cache_dir)]

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
    sae, curve = train_sae(x, n_latents=config.n_latents, l1=config.l1, steps=config.steps, minibatch=config.batch_size,
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
