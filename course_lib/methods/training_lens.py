"""The training lens: watch a tiny transformer learn in-context copying (an induction head) step by step.

A 2-layer, attention-only transformer is trained on sequences of random tokens that repeat with a
random period. The first pass through the period is unpredictable; every later token can be
predicted by *looking back*: find the previous occurrence of the current token and copy the token
that came after it. That look-back is an **induction head** (Olsson et al. 2022), and it needs two
layers: a head in layer 1 that writes "my previous token was A" into each position, and a head in
layer 2 whose query "A" matches that key. The period is drawn per sequence, so a head that attends
to a fixed offset cannot solve the task.

    run = train_induction(TrainConfig(), seed=0)     # cached: the second call loads the checkpoints
    run.steps, run.loss                              # the training curve
    model = run.model_at(step)                       # replay: the model at any saved checkpoint
    x = repeated_tokens(8, period=16, vocab=run.config.vocab, seed=1)   # (8, 32) = [r, r]
    logits, pats = model(x, return_patterns=True)    # (8, 32, V), (L, 8, H, 32, 32)
    induction_score(pats, x)                         # (L, H): attention to the token after the previous occurrence
    in_context_loss(model, x)                        # loss on the first vs the second half

Seeded and deterministic (CPU): the same ``seed`` and config give the same checkpoints.
Trained checkpoints are kept in the course cache (``models/training-lens-<hash>.pt``), so a lecture
replays them instead of training again.

References: Elhage et al. (2021) "A Mathematical Framework for Transformer Circuits"; Olsson et al.
(2022) "In-context Learning and Induction Heads".
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .. import checks
from ..cache import file_problem, home, user_cache, writable, write_checksum
from ..device import seeded_cpu_rng
from ..progress import progress_bar
from . import _checks

__all__ = [
    "TrainConfig", "AttnOnlyTransformer", "TrainingRun", "periodic_tokens", "repeated_tokens",
    "induction_score", "previous_token_score", "in_context_loss", "train_induction", "load_or_train",
]


# ----------------------------------------------------------------------------- data
def periodic_tokens(batch: int, seq_len: int, vocab: int, *, min_period: int, max_period: int,
                    generator: torch.Generator) -> torch.Tensor:
    """``(batch, seq_len)`` token ids; each row repeats a random pattern of random period in
    ``[min_period, max_period]``: ``x[t] = r[t mod P]``."""
    what = "periodic_tokens"
    batch, seq_len, vocab = (checks.positive_int(v, n, what=what) for v, n in ((batch, "batch"), (seq_len, "seq_len"), (vocab, "vocab")))
    min_period = checks.positive_int(min_period, "min_period", what=what)
    max_period = checks.positive_int(max_period, "max_period", what=what)
    if max_period < min_period:
        raise ValueError(f"{what}: max_period={max_period} must be >= min_period={min_period}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{what}: generator must be a torch.Generator, e.g. torch.Generator().manual_seed(0); "
                        f"got {type(generator).__name__}")
    periods = torch.randint(min_period, max_period + 1, (batch, 1), generator=generator)  # (B, 1)
    pattern = torch.randint(0, vocab, (batch, max_period), generator=generator)  # (B, Pmax)
    idx = torch.arange(seq_len)[None] % periods  # (B, T)
    return pattern.gather(1, idx)


def repeated_tokens(batch: int, period: int, vocab: int, *, seed: int = 0) -> torch.Tensor:
    """``(batch, 2 * period)``: ``[r, r]`` with ``r`` a random sequence of ``period`` *distinct* tokens
    (so "the previous occurrence" is unique) -- the evaluation set of the lens."""
    what = "repeated_tokens"
    batch, period, vocab = (checks.positive_int(v, n, what=what) for v, n in ((batch, "batch"), (period, "period"), (vocab, "vocab")))
    seed = checks.non_negative_int(seed, "seed", what=what)
    if period > vocab:
        raise ValueError(f"period {period} > vocab {vocab}: distinct tokens need period <= vocab")
    g = torch.Generator().manual_seed(seed)
    r = torch.stack([torch.randperm(vocab, generator=g)[:period] for _ in range(batch)])  # (B, P)
    return torch.cat([r, r], dim=1)


# ----------------------------------------------------------------------------- model
class Attention(nn.Module):
    """Causal multi-head self-attention that can hand back its pattern ``(B, H, T, T)``."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, d)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)  # (B, H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)  # (B, H, T, T), rows sum to 1
        z = (pattern @ v).transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.out(z), pattern


class AttnOnlyTransformer(nn.Module):
    """Token + learned position embeddings, ``n_layers`` attention-only residual blocks (pre-LayerNorm),
    a final LayerNorm and an unembedding. No MLPs: everything it computes is attention."""

    def __init__(self, vocab: int, d_model: int, n_layers: int, n_heads: int, max_len: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.attn = nn.ModuleList(Attention(d_model, n_heads) for _ in range(n_layers))
        self.norm_f = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, vocab, bias=False)

    def forward(self, x: torch.Tensor, *, return_patterns: bool = False):
        """``x`` (B, T) token ids -> logits (B, T, V) [and patterns (L, B, H, T, T)]."""
        h = self.embed(x) + self.pos(torch.arange(x.shape[1], device=x.device))  # (B, T, D)
        patterns = []
        for norm, attn in zip(self.norms, self.attn):
            a, p = attn(norm(h))
            h = h + a
            patterns.append(p)
        logits = self.unembed(self.norm_f(h))  # (B, T, V)
        return (logits, torch.stack(patterns)) if return_patterns else logits


# ----------------------------------------------------------------------------- scores
def induction_score(patterns: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean attention from each token to the token *after* its previous occurrence (Olsson et al. 2022).

    ``patterns`` (..., B, H, T, T) (e.g. (L, B, H, T, T)), ``tokens`` (B, T). For every query position
    ``t`` whose token occurred before, at latest position ``j < t``, read ``patterns[..., t, j + 1]``;
    average over those positions and the batch. Returns (..., H), e.g. (L, H). Positions without an
    earlier occurrence do not count."""
    what = "induction_score"
    _checks.attention(patterns, what)
    tokens = checks.integers(tokens, "tokens", what=what, dims=2, shape="(B, T)", kind="token id")
    if patterns.dim() < 4 or tuple(patterns.shape[-4:-3]) + tuple(patterns.shape[-1:]) != tuple(tokens.shape):
        raise ValueError(f"{what}: patterns (..., B, H, T, T) {tuple(patterns.shape)} do not match tokens (B, T) {tuple(tokens.shape)}")
    checks.same_device(patterns, tokens, "patterns", "tokens", what=what)
    B, T = tokens.shape
    same = tokens[:, :, None] == tokens[:, None, :]  # (B, T, T): token t equals token j
    earlier = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril(-1)  # j < t
    j = torch.arange(T, device=tokens.device)
    last = torch.where(same & earlier, j, -1).amax(-1)  # (B, T): latest earlier occurrence, -1 if none
    has = last >= 0  # (B, T)
    target = (last + 1).clamp(max=T - 1)  # (B, T), <= t since j < t
    idx = target[:, None, :, None].expand(*patterns.shape[:-1], 1)  # (..., B, H, T, 1)
    picked = patterns.gather(-1, idx)[..., 0]  # (..., B, H, T)
    w = has[:, None, :].to(patterns.dtype)  # (B, 1, T)
    return (picked * w).sum(-1).sum(-2) / (w.sum() * 1.0)  # sum over T and B: (..., H)


def previous_token_score(patterns: torch.Tensor) -> torch.Tensor:
    """Mean attention from each position to the one just before it: (..., B, H, T, T) -> (..., H).
    A *previous-token head* scores near 1; uniform causal attention about ``mean(1 / (t + 1))``."""
    _checks.attention(patterns, "previous_token_score")
    if patterns.dim() < 4:
        raise ValueError(f"previous_token_score: patterns must be (..., B, H, T, T); got shape {tuple(patterns.shape)}")
    return patterns.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1).mean(-2)


@torch.no_grad()
def in_context_loss(model: nn.Module, tokens: torch.Tensor) -> tuple[float, float]:
    """``(first, second)``: mean next-token cross-entropy (nats) on the first and second half of
    ``[r, r]`` sequences. Predictions of the first half's tokens cannot use the context (chance is
    ``log V``); the second half's can, by copying. The prediction of ``r[0]`` in the second half (made
    at the last token of the first half) counts towards the first half."""
    what = "in_context_loss"
    checks.module(model, what=what)
    vocab = model.embed.num_embeddings if isinstance(getattr(model, "embed", None), nn.Embedding) else None
    tokens = checks.integers(tokens, "tokens", what=what, high=vocab, dims=2, shape="(B, T)", kind="token id")
    if tokens.shape[1] < 2:
        raise ValueError(f"{what}: tokens must be [r, r] sequences of at least 2 tokens; got shape {tuple(tokens.shape)}")
    logits = model(tokens[:, :-1])  # (B, T-1, V), position t predicts t+1
    loss = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")  # (B, T-1)
    half = tokens.shape[1] // 2
    return loss[:, :half].mean().item(), loss[:, half:].mean().item()


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainConfig:
    """What is trained, on what, for how long. Its hash names the cache file."""

    vocab: int = 48
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    seq_len: int = 32
    min_period: int = 4
    max_period: int = 16
    batch: int = 32
    steps: int = 400
    lr: float = 3e-3
    weight_decay: float = 0.01
    checkpoint_every: int = 10
    eval_period: int = 16  # the [r, r] evaluation sequences
    eval_batch: int = 64

    def __post_init__(self):
        for name in ("vocab", "d_model", "n_layers", "n_heads", "seq_len", "min_period", "max_period", "batch", "steps",
                     "checkpoint_every", "eval_period", "eval_batch"):
            checks.positive_int(getattr(self, name), name, what="TrainConfig")
        checks.positive_number(self.lr, "lr", what="TrainConfig")
        checks.positive_number(self.weight_decay, "weight_decay", what="TrainConfig", allow_zero=True)
        if self.max_period < self.min_period or self.eval_period > self.vocab or self.d_model % self.n_heads:
            raise ValueError("TrainConfig: needs min_period <= max_period, eval_period <= vocab (distinct tokens) and "
                             f"d_model divisible by n_heads; got {self}")

    def key(self, seed: int) -> str:
        text = json.dumps({**asdict(self), "seed": seed, "v": 1}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class TrainingRun:
    """The replayable record of one training run."""

    config: TrainConfig
    seed: int
    steps: list[int]  # the checkpointed steps, 0 = initialisation
    checkpoints: list[dict]  # state dicts, one per entry of ``steps``
    loss: list[float]  # training loss at every step (``config.steps`` values)
    eval_tokens: torch.Tensor  # (eval_batch, 2 * eval_period), [r, r]
    scores: torch.Tensor  # (n_checkpoints, L, H) induction score at each checkpoint on ``eval_tokens``
    icl: torch.Tensor  # (n_checkpoints, 2) in-context loss (first half, second half)
    seconds: float = 0.0  # training wall time (0 when loaded from the cache)
    source: str = "trained"  # "trained" or the cache path it was loaded from
    extra: dict = field(default_factory=dict)
    seconds_at: list[float] = field(default_factory=list)  # wall time since the start at each checkpoint (empty when loaded)

    def new_model(self) -> AttnOnlyTransformer:
        c = self.config
        return AttnOnlyTransformer(c.vocab, c.d_model, c.n_layers, c.n_heads, c.seq_len)

    def model_at(self, step: int) -> AttnOnlyTransformer:
        """The model at checkpoint ``step`` (must be one of ``steps``), in eval mode and frozen
        (``requires_grad=False``: a replay is for looking, not for training)."""
        if step not in self.steps:
            raise ValueError(f"no checkpoint at step {step}; checkpoints every {self.config.checkpoint_every} steps, "
                             f"e.g. {self.steps[:3]} ... {self.steps[-1]}")
        model = self.new_model()
        model.load_state_dict(self.checkpoints[self.steps.index(step)])
        return model.eval().requires_grad_(False)

    def first_step_above(self, threshold: float, layer: int = -1) -> int | None:
        """The first checkpointed step whose best head in ``layer`` has induction score > ``threshold``."""
        best = self.scores[:, layer].amax(-1)
        hit = (best > threshold).nonzero()
        return self.steps[int(hit[0])] if len(hit) else None

    def __repr__(self) -> str:
        best = self.scores[-1, -1].max().item()
        return (f"TrainingRun(seed={self.seed}, {len(self.steps)} checkpoints up to step {self.steps[-1]}, "
                f"final loss {self.loss[-1]:.3f}, best last-layer induction score {best:.2f}, source={self.source!r})")


@torch.no_grad()
def _evaluate(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    _, pats = model(tokens, return_patterns=True)
    scores = induction_score(pats, tokens)  # (L, H)
    icl = torch.tensor(in_context_loss(model, tokens))
    model.train()
    return scores, icl


def train_induction(config: TrainConfig = TrainConfig(), *, seed: int = 0, progress: bool = True) -> TrainingRun:
    """Train the attention-only transformer on periodic random tokens, keeping a checkpoint every
    ``config.checkpoint_every`` steps (and at step 0) with its induction scores and in-context loss.
    The loss is the plain next-token loss over all positions (the first period's tokens stay at
    chance, ``log V``, whatever the model does)."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train_induction: config must be a TrainConfig; got {type(config).__name__}")
    seed = checks.non_negative_int(seed, "seed", what="train_induction")
    c = config
    with seeded_cpu_rng(seed):  # the global generator, for the initial weights; the caller's state is put back
        model = AttnOnlyTransformer(c.vocab, c.d_model, c.n_layers, c.n_heads, c.seq_len)
        opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        g = torch.Generator().manual_seed(seed + 1)  # the training stream
        eval_tokens = repeated_tokens(c.eval_batch, c.eval_period, c.vocab, seed=seed + 2)
        steps, ckpts, scores, icl, losses, seconds_at = [], [], [], [], [], []

        def keep(step):
            s, l = _evaluate(model, eval_tokens)
            steps.append(step)
            ckpts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            scores.append(s)
            icl.append(l)
            seconds_at.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        keep(0)
        for step in progress_bar(range(1, c.steps + 1), total=c.steps, desc="training", enabled=progress):
            x = periodic_tokens(c.batch, c.seq_len, c.vocab, min_period=c.min_period, max_period=c.max_period, generator=g)
            logits = model(x[:, :-1])  # (B, T-1, V)
            loss = F.cross_entropy(logits.reshape(-1, c.vocab), x[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if step % c.checkpoint_every == 0 or step == c.steps:
                keep(step)
        seconds = time.perf_counter() - t0
        return TrainingRun(c, seed, steps, ckpts, losses, eval_tokens, torch.stack(scores), torch.stack(icl), seconds,
                           seconds_at=seconds_at)


# ----------------------------------------------------------------------------- cache
def _cache_paths(config: TrainConfig, seed: int) -> list[Path]:

    name = f"training-lens-{config.key(seed)}.pt"
    return [home() / "models" / name, user_cache() / "models" / name]


def load_or_train(config: TrainConfig = TrainConfig(), *, seed: int = 0, progress: bool = True,
                  cache: bool = True) -> TrainingRun:
    """The cached run for ``(config, seed)`` if there is one, else :func:`train_induction` and save it
    to the first writable cache folder (the course cache, else the user cache)."""
    paths = _cache_paths(config, seed)
    if cache:
        for p in paths:
            if p.is_file():
                legacy = not Path(str(p) + ".sha256").is_file()  # saved by an older course_lib, before checksums
                if not legacy and file_problem(p) is not None:  # damaged or truncated: train again
                    continue
                try:
                    d = torch.load(p, weights_only=True)
                    if legacy and writable(p.parent):
                        write_checksum(p)
                    return TrainingRun(config, seed, d["steps"], d["checkpoints"], d["loss"], d["eval_tokens"],
                                       d["scores"], d["icl"], 0.0, str(p))
                except Exception:  # a damaged or foreign file: train again
                    pass
    run = train_induction(config, seed=seed, progress=progress)
    if cache:

        for p in paths:
            if writable(p.parent):
                tmp = p.with_suffix(f".{os.getpid()}.part")  # unique: two processes may train at once
                torch.save({"steps": run.steps, "checkpoints": run.checkpoints, "loss": run.loss,
                            "eval_tokens": run.eval_tokens, "scores": run.scores, "icl": run.icl}, tmp)
                tmp.replace(p)
                write_checksum(p)
                break
    return run
