"""Games: the one contract between models and perturbation methods.

A *game* over ``d`` players maps a batch of boolean masks ``(M, d)`` (True = the
feature is present) to model outputs ``(M,)`` or ``(M, K)``. LIME, KernelSHAP,
exact Shapley values, interactions and occlusion differ only in which masks they
ask for and how they fit the answers; none of them calls a model itself.

This file is the only place in course_lib that batches and chunks model calls.
Every call happens under ``torch.inference_mode()``, on the model's device, in
chunks of ``batch_size`` model inputs, with an optional progress bar.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from . import checks
from .device import forward_fast, model_device, require_eval, require_unit_range
from .progress import progress_bar  # re-exported for old imports; new code imports it from course_lib.progress

__all__ = [
    "Game",
    "image_game",
    "ImageGames",
    "tabular_game",
    "token_game",
    "function_game",
    "grid_segments",
    "slic_segments",
    "segment_map",
    "default_batch_size",
    "require_finite",
]

Output = Literal["logit", "logprob", "prob", "raw"]
_OUTPUTS = ("logit", "logprob", "prob", "raw")


def require_finite(x: torch.Tensor, name: str = "x") -> None:
    """Refuse NaN or infinite values: they would flow silently into every answer."""
    checks.finite(x, name)


def default_batch_size(bytes_per_input: int, *, activation_factor: int = 16, device: torch.device | str | None = None) -> int:
    """Model inputs per chunk so that one chunk's activations stay within a memory budget.

    ``$COURSE_LIB_MEMORY_MB``, if set, is the whole budget. Otherwise a GPU gets 1 GB, and a CPU
    128 MB and at most 16 inputs per chunk: on a CPU small chunks stay in the caches (for image LIME
    16 was the best fixed batch; on a GPU larger batches only gained: tests/benchmarks/bench_chunking.py).
    ``activation_factor`` is a rough ratio of a forward pass's activation memory to its input size.
    """
    env = os.environ.get("COURSE_LIB_MEMORY_MB")
    on_gpu = device is not None and torch.device(device).type in ("cuda", "mps")
    per_input = max(1, bytes_per_input * activation_factor)
    if env:  # the user's budget is the whole rule
        return int(max(1, min(4096, float(env) * 2**20 // per_input)))
    if on_gpu:
        return int(max(1, min(4096, 1024 * 2**20 // per_input)))
    return int(max(1, min(16, 128 * 2**20 // per_input)))


@dataclass
class Game:
    """A cooperative game: ``game(masks)`` with masks ``(M, n_players)`` bool -> outputs ``(M, ...)``.

    ``evaluate`` maps one chunk of masks to outputs; ``chunk`` is how many masks go in one
    chunk (already divided by any background size). Build games with :func:`image_game`,
    :func:`tabular_game`, :func:`token_game` or :func:`function_game`.
    """

    n_players: int
    evaluate: Callable[[torch.Tensor], torch.Tensor]
    chunk: int
    device: torch.device
    player_names: list[str] | None = None
    perturb: Callable[[torch.Tensor], object] | None = field(default=None, repr=False)
    progress: bool = False
    n_calls: int = field(default=0, repr=False)  # masks evaluated so far (the budget spent)

    def __call__(self, masks: torch.Tensor, *, progress: bool | None = None) -> torch.Tensor:
        masks = self._check(masks)
        show = self.progress if progress is None else progress
        n = masks.shape[0]
        starts = range(0, n, self.chunk)
        outs = []
        with torch.inference_mode():
            for s in progress_bar(starts, total=math.ceil(n / self.chunk), desc="game", enabled=show and n > self.chunk):
                outs.append(self.evaluate(masks[s : s + self.chunk]))
        self.n_calls += n
        if not outs:
            raise ValueError("the game was asked for zero masks")
        return torch.cat(outs, 0)

    def inputs(self, masks: torch.Tensor):
        """The model inputs the game builds for ``masks`` (for pictures and checks)."""
        if self.perturb is None:
            raise NotImplementedError("this game does not expose its perturbed inputs")
        with torch.inference_mode():
            return self.perturb(self._check(masks))

    def _check(self, masks) -> torch.Tensor:
        masks = torch.as_tensor(masks, device=self.device)
        if masks.dim() == 1:
            masks = masks[None]
        if masks.dim() != 2 or masks.shape[1] != self.n_players:
            raise ValueError(
                f"masks must have shape (n_masks, {self.n_players}) for a game with {self.n_players} players; "
                f"got {tuple(masks.shape)}"
            )
        if masks.dtype != torch.bool:
            if not torch.all((masks == 0) | (masks == 1)):
                raise ValueError("masks must be boolean (True = player present) or 0/1")
            masks = masks.bool()
        return masks


def _check_output(output: str) -> None:
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")


def _check_target(target, n_outputs: int) -> None:
    """A target must be an integer class index in 0..n_outputs-1."""
    if target is None:
        return
    if isinstance(target, torch.Tensor):
        if target.numel() != 1 or target.is_floating_point():
            raise ValueError(f"target must be one integer class index; got a tensor of shape {tuple(target.shape)}, dtype {target.dtype}")
        target = int(target)
    if isinstance(target, bool) or not isinstance(target, int):
        raise TypeError(f"target must be one integer class index; got {target!r}")
    if not 0 <= target < n_outputs:
        raise ValueError(f"target {target} is out of range: this model has {n_outputs} outputs, so target must be in 0..{n_outputs - 1}")


def _select(logits: torch.Tensor, output: str, target) -> torch.Tensor:
    """Turn raw model outputs ``(B, K)`` into what the game reports, then pick ``target``."""
    _check_output(output)
    if logits.dim() == 1:
        if target is not None:
            raise ValueError("target was given, but the model returns one number per input; leave target=None")
        return logits
    _check_target(target, logits.shape[-1])
    if output == "logprob":
        logits = torch.log_softmax(logits, -1)
    elif output == "prob":
        logits = torch.softmax(logits, -1)
    if target is None:
        return logits
    return logits[:, int(target)]


def grid_segments(height: int, width: int, patch: int, device=None) -> torch.Tensor:
    """Square patches as a segment map ``(H, W)`` of labels 0..d-1 (row-major)."""
    rows = torch.arange(height, device=device) // patch
    cols = torch.arange(width, device=device) // patch
    n_cols = math.ceil(width / patch)
    return rows[:, None] * n_cols + cols[None, :]


def _relabel(segments: torch.Tensor) -> torch.Tensor:
    """Labels 0..d-1 in order of first appearance of the sorted unique labels."""
    _, inverse = torch.unique(segments, return_inverse=True)
    return inverse


def image_game(
    model: nn.Module,
    x: torch.Tensor,
    segments: torch.Tensor,
    *,
    baseline: float | torch.Tensor | Literal["mean", "blur"] = 0.0,
    target: int | None = None,
    output: Output = "logit",
    batch_size: int | None = None,
    progress: bool = False,
) -> Game:
    """Superpixels (or patches) of one image as players.

    x: (C, H, W) in [0, 1]; segments: (H, W) integer labels (any values, relabelled 0..d-1
    in sorted order); baseline: a number, a (C, H, W) image, ``"mean"`` (each superpixel
    filled with its own mean colour, as the ``lime`` package does) or ``"blur"``.
    A removed superpixel shows the baseline. ``output`` is ``"logit"`` (default: logits do not
    saturate, so explanations are stable), ``"logprob"`` or ``"prob"``; ``target`` picks a class.
    """
    require_eval(model, "image_game")
    device = model_device(model)
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3:
        raise ValueError(f"x must be one image (C, H, W); got shape {tuple(x.shape)}")
    require_finite(x)
    require_unit_range(x)
    _check_output(output)
    x = x.to(device)
    segments = torch.as_tensor(segments, device=device)
    if segments.shape != x.shape[1:]:
        raise ValueError(f"segments must have the image's spatial shape {tuple(x.shape[1:])}; got {tuple(segments.shape)}")
    segments = _relabel(segments.long())  # (H, W)
    d = int(segments.max()) + 1
    base = _image_baseline(x, segments, baseline)  # (C, H, W)

    if device.type == "cpu":
        # Compose the images channels-last (B, H, W, C) and hand the model an NCHW view of them: conv
        # nets take oneDNN's fast path on that layout (ResNet-18 1.3x, scenes-cnn 2x on 2 cores), as
        # they do on the images the `lime` package builds; no extra copy.
        x_hwc, base_hwc = x.permute(1, 2, 0).contiguous(), base.permute(1, 2, 0).contiguous()

        def perturb(masks: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B, C, H, W), channels-last strides
            keep = masks[:, segments]  # (B, H, W)
            return torch.where(keep[..., None], x_hwc, base_hwc).permute(0, 3, 1, 2)
    else:
        def perturb(masks: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B, C, H, W)
            keep = masks[:, segments]  # (B, H, W)
            return torch.where(keep[:, None], x, base)

    def evaluate(masks: torch.Tensor) -> torch.Tensor:
        return _select(forward_fast(model, perturb(masks)), output, target)

    bs = batch_size or default_batch_size(x.numel() * x.element_size(), device=device)
    return Game(d, evaluate, bs, device, None, perturb, progress)


class ImageGames:
    """Many image games of one model, asked in ONE stream of model calls: the multi-image form of
    :func:`image_game`, used by occlusion and by the deletion and insertion curves of
    :mod:`course_lib.metrics`.

    Game ``k = s * B + b`` shows image ``x[b]`` (B, C, H, W) cut into players by the segment map
    ``segments[s]`` (S, H, W), labels 0..d-1 shared by all maps; a removed player shows
    ``base[s, b]`` (``base`` broadcasts to (S, B, C, H, W)) and the game's value is the
    ``output`` ("logit", "logprob" or "prob") of class ``targets[b]``. A request is a list of
    rows (game ``k``, coalition mask); the rows of all games go to the model together, in chunks
    of ``batch_size`` model inputs (default: the engine's ``default_batch_size`` for one image),
    so one forward pass serves many images. ``n_calls`` counts the masks asked for,
    ``n_forwards`` the model calls.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, segments: torch.Tensor, base: torch.Tensor, targets: torch.Tensor,
                 *, output: str = "logit", batch_size: int | None = None, progress: bool = False, desc: str = "games"):
        require_eval(model, "ImageGames")
        if x.dim() != 4:
            raise ValueError(f"ImageGames takes a batch of images (B, C, H, W); got shape {tuple(x.shape)}")
        require_finite(x)
        require_unit_range(x)
        _check_output(output)
        self.model, self.x, self.output, self.progress, self.desc = model, x, output, progress, desc  # x: (B, C, H, W)
        self.segments = segments.long()  # (S, H, W)
        S, (B, C, H, W) = segments.shape[0], x.shape
        self.base = base.to(x).expand(S, B, C, H, W)  # a view: a constant baseline costs no memory
        self.targets = targets.long().to(x.device).expand(B)  # (B,)
        self.n_players = int(self.segments.max()) + 1
        self.n_games, self.device = S * B, x.device
        self.chunk = int(batch_size or default_batch_size(x[0].numel() * x.element_size(), device=x.device))
        self.n_calls = self.n_forwards = 0
        self._targets_checked = False

    def inputs(self, games: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The model inputs (n, C, H, W) of rows ``games`` (n,) with coalitions ``masks`` (n, d)."""
        B, _, H, W = self.x.shape
        s, b = games // B, games % B
        if self.segments.shape[0] == 1:
            keep = masks[:, self.segments[0]]  # (n, H, W)
        else:
            keep = masks.gather(1, self.segments[s].flatten(1)).view(-1, H, W)
        return torch.where(keep[:, None], self.x[b], self.base[s, b])  # forward_fast stores them channels-last on a CPU

    def _evaluate(self, games: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:  # -> (n,)
        scores = _select(forward_fast(self.model, self.inputs(games, masks)), self.output, None)  # (n, K), as image_game reports them
        if not self._targets_checked:  # once, on the first outputs (the number of classes is known only now)
            for t in self.targets.unique().tolist():
                _check_target(t, scores.shape[-1])
            self._targets_checked = True
        return scores.gather(1, self.targets[games % self.x.shape[0]][:, None])[:, 0]

    def _stream(self, n: int, rows) -> torch.Tensor:
        """Evaluate rows 0..n-1, ``rows(slice)`` giving each chunk's (games, masks)."""
        if n == 0:
            raise ValueError("the games were asked for zero masks")
        outs = []
        starts = range(0, n, self.chunk)
        with torch.inference_mode():
            for s in progress_bar(starts, total=len(starts), desc=self.desc, enabled=self.progress and n > self.chunk):
                outs.append(self._evaluate(*rows(slice(s, s + self.chunk))))
                self.n_forwards += 1
        self.n_calls += n
        return torch.cat(outs)

    def __call__(self, games: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Values (M,) of coalitions ``masks`` (M, d) bool in games ``games`` (M,)."""
        games, masks = torch.as_tensor(games, device=self.device).long(), torch.as_tensor(masks, device=self.device).bool()
        return self._stream(games.shape[0], lambda sl: (games[sl], masks[sl]))

    def leave_one_out(self, games: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        """Values (M,) of the coalitions "everyone but player ``missing[i]``" (-1: everyone) in
        games ``games[i]``; the masks are made chunk by chunk, never all at once."""
        players = torch.arange(self.n_players, device=self.device)
        return self._stream(games.shape[0], lambda sl: (games[sl], players != missing[sl, None]))


def _image_baseline(x: torch.Tensor, segments: torch.Tensor, baseline) -> torch.Tensor:
    if isinstance(baseline, str):
        if baseline == "mean":
            d = int(segments.max()) + 1
            flat = segments.flatten()
            sums = torch.zeros(x.shape[0], d, dtype=x.dtype, device=x.device).index_add_(1, flat, x.flatten(1))
            counts = torch.bincount(flat, minlength=d).clamp_min(1)
            return (sums / counts)[:, segments]
        if baseline == "blur":
            from torchvision.transforms.functional import gaussian_blur

            k = max(3, (min(x.shape[1:]) // 8) | 1)
            return gaussian_blur(x[None], [k, k], [k / 3.0, k / 3.0])[0]
        raise ValueError(f"baseline must be a number, an image, 'mean' or 'blur'; got {baseline!r}")
    base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    require_finite(base, "baseline")
    if base.dim() == 0:
        return base.expand_as(x)
    if base.shape != x.shape:
        raise ValueError(f"a baseline image must have the shape of x {tuple(x.shape)}; got {tuple(base.shape)}")
    return base


def tabular_game(
    model: nn.Module | Callable,
    x: torch.Tensor,
    background: torch.Tensor,
    *,
    target: int | None = None,
    output: Output = "raw",
    feature_names: Sequence[str] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> Game:
    """Features of one row as players, missing features drawn from a background set.

    x: (d,); background: (N, d) or (d,). The value of a coalition S is the mean over the
    background rows b of f(x_S, b_{-S}) (the *interventional* value function of SHAP).
    ``output="raw"`` reports what the model returns. For a classifier with K outputs use
    ``"logit"``, ``"logprob"`` or ``"prob"`` and pick a class with ``target`` in 0..K-1 (the
    softmax is taken per row, before averaging over the background). A model with one output
    per row, (B,) or (B, 1), is reported as it is: ``target`` must then be None (or 0), and
    ``"prob"``/``"logprob"`` are refused (a softmax over one output is always 1; apply your
    own sigmoid inside the model if you want a probability).
    """
    _check_output(output)
    if isinstance(model, nn.Module):
        require_eval(model, "tabular_game")
        device = model_device(model)
    else:
        device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    x = torch.as_tensor(x, dtype=torch.float32, device=device)
    if x.dim() == 2 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 1:
        raise ValueError(f"x must be one row (d,); got shape {tuple(x.shape)}")
    bg = torch.as_tensor(background, dtype=x.dtype, device=device)
    if bg.dim() == 1:
        bg = bg[None]
    if bg.dim() != 2 or bg.shape[1] != x.shape[0]:
        raise ValueError(f"background must have shape (N, {x.shape[0]}); got {tuple(bg.shape)}")
    require_finite(x)
    require_finite(bg, "background")
    d, n_bg = x.shape[0], bg.shape[0]
    if feature_names is not None and len(feature_names) != d:
        raise ValueError(f"{len(feature_names)} feature names for {d} features")

    def perturb(masks: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B, N, d)
        return torch.where(masks[:, None, :], x, bg)

    def evaluate(masks: torch.Tensor) -> torch.Tensor:
        B = masks.shape[0]
        out = torch.as_tensor(model(perturb(masks).reshape(-1, d))).float()  # (B*N,) or (B*N, K)
        if out.dim() == 2 and out.shape[1] == 1:
            out = out[:, 0]  # one output per row
        if out.dim() == 1:  # one number per row: regression, or a single score
            if target not in (None, 0):
                raise ValueError(f"target={target!r}, but the model returns one number per row; leave target=None")
            if output in ("prob", "logprob"):
                raise ValueError(
                    f"output={output!r} needs a model with one output per class, but this model returns one "
                    "number per row (a softmax over it would always be 1). Use output='raw', or put a sigmoid "
                    "inside the model to explain a probability."
                )
            return out.reshape(B, n_bg).mean(1)  # (B,)
        if out.dim() != 2:
            raise ValueError(f"the model should return (rows,) or (rows, K) for a batch of rows; got {tuple(out.shape)}")
        if output != "raw" or target is not None:
            out = _select(out, "logit" if output == "raw" else output, target)  # (B*N,) or (B*N, K)
        return out.reshape(B, n_bg, *out.shape[1:]).mean(1)  # (B,) or (B, K)

    bs = batch_size or default_batch_size(d * 4, activation_factor=64, device=device)
    chunk = max(1, bs // n_bg)
    names = list(feature_names) if feature_names is not None else None
    return Game(d, evaluate, chunk, device, names, perturb, progress)


def token_game(
    score_fn: Callable[[list[str]], torch.Tensor],
    words: Sequence[str],
    *,
    mode: Literal["remove", "replace"] = "remove",
    replacement: str = "___",
    joiner: str = " ",
    batch_size: int = 16,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Game:
    """Words of a text as players.

    ``score_fn`` takes a list of texts and returns a tensor ``(B,)`` or ``(B, K)`` (e.g. a
    language model's log-odds of " positive" vs " negative"); it is called on chunks of at most
    ``batch_size`` texts. A removed word is dropped (``mode="remove"``) or replaced by
    ``replacement`` (``mode="replace"``, which keeps positions).
    """
    if mode not in ("remove", "replace"):
        raise ValueError(f"mode must be 'remove' or 'replace'; got {mode!r}")
    words = list(words)
    if not words:
        raise ValueError("token_game needs at least one word")
    dev = torch.device(device) if device is not None else torch.device("cpu")

    def perturb(masks: torch.Tensor) -> list[str]:
        texts = []
        for row in masks.tolist():
            if mode == "remove":
                kept = [w for w, on in zip(words, row) if on]
            else:
                kept = [w if on else replacement for w, on in zip(words, row)]
            texts.append(joiner.join(kept))
        return texts

    def evaluate(masks: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(score_fn(perturb(masks)))
        return out.to(dev).float()

    return Game(len(words), evaluate, batch_size, dev, words, perturb, progress)


def function_game(
    fn: Callable[[torch.Tensor], torch.Tensor],
    n_players: int,
    *,
    player_names: Sequence[str] | None = None,
    batch_size: int = 4096,
    device: torch.device | str | None = None,
) -> Game:
    """A game from a function of the 0/1 mask itself: ``fn(masks.float()) -> (B,)`` or ``(B, K)``.

    For toy games whose value is known exactly (the fever/cough rules, random games in tests).
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")

    def evaluate(masks: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(fn(masks.float())).to(dev)

    names = list(player_names) if player_names is not None else None
    return Game(n_players, evaluate, batch_size, dev, names, lambda m: m.float(), False)


def segment_map(values: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Paint one value per segment back onto the pixels: values (d,), segments (H, W) -> (H, W).

    ``segments`` is relabelled exactly as :func:`image_game` does, so ``values[i]`` belongs
    to the i-th player of that game.
    """
    segments = _relabel(torch.as_tensor(segments, device=values.device).long())
    return values[segments]


def slic_segments(x: torch.Tensor, n_segments: int = 50, *, compactness: float = 10.0, sigma: float = 1.0) -> torch.Tensor:
    """SLIC superpixels (Achanta et al. 2012, scikit-image) of one image x (3, H, W) in [0, 1]
    -> (H, W) long labels 0..d-1, on x's device. SLIC is deterministic: no seed is needed."""
    from skimage.segmentation import slic

    require_finite(x)
    img = x.detach().float().cpu().permute(1, 2, 0).numpy()  # (H, W, 3)
    seg = slic(img, n_segments=n_segments, compactness=compactness, sigma=sigma, start_label=0)
    return _relabel(torch.as_tensor(seg, dtype=torch.long)).to(x.device)
