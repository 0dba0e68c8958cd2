"""The one result family: every method that returns more than a tensor returns a :class:`Result`.

A :class:`Result` is a dataclass built by keyword only, whose ``values`` is the method's main output
(an attribution, the objective of rendered or found images, a probe's accuracies, a concept's
direction, p(target) of inverted prompts), and whose ``repr`` is short: a tensor of more than 8
numbers shows as its shape (and its dtype, if not float32), a long list as its length.

The perturbation methods (LIME, Shapley values, interactions, occlusion, TCAV, data attribution)
share more: :class:`PerturbationResult` has the same names for the same things,

- ``values``: the attribution, (d,) or (d, K) for a game with d players and K outputs;
- ``budget``: how many masks (coalitions, perturbed inputs) the game was asked for, i.e. model
  evaluations (times the background size for a tabular game);
- ``method``: how it was computed, in words;
- ``player_names``: the players' names, when the game has them.

``str(result)`` names the top players; ``repr`` leaves big tensors (samples, model outputs,
Moebius coefficients) out. The plotting helpers in :mod:`course_lib.plot` accept a result directly.
A result whose main output had another name before (``ProbeResult.train_acc``, ``CAV.direction``,
``PromptInversion.p_target``) keeps that name and sets ``values`` from it when it is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

__all__ = ["Result", "PerturbationResult"]

_LONG = 60  # characters of one field's text in a repr


def _rounded(x):
    return [_rounded(v) for v in x] if isinstance(x, list) else round(x, 4)


def _short(val) -> str:
    """One field's value in a repr, short whatever its size."""
    if isinstance(val, torch.Tensor):
        if val.numel() > 8:
            dtype = "" if val.dtype == torch.float32 else f", {str(val.dtype).removeprefix('torch.')}"
            shape = ", ".join(str(s) for s in val.shape)
            return f"tensor({shape}{dtype})"
        return str(_rounded(val.tolist()) if val.is_floating_point() else val.tolist())
    if isinstance(val, (list, tuple)) and len(val) > 8:
        return f"[{len(val)} {'names' if all(isinstance(v, str) for v in val) else 'items'}]"
    if isinstance(val, (list, tuple)):
        text = "[" + ", ".join(_short(v) for v in val) + "]"
    elif isinstance(val, float):
        text = f"{val:.4g}"
    elif isinstance(val, (str, int, bool, type(None))):
        text = repr(val)
    else:
        text = type(val).__name__
    return text if len(text) <= _LONG else text[: _LONG - 3] + "..."


@dataclass(kw_only=True, repr=False)
class Result:
    """Base of every method's result: ``values`` (the main output) and a short ``repr``."""

    values: torch.Tensor

    def __repr__(self) -> str:
        parts = [f"{f.name}={_short(getattr(self, f.name, None))}" for f in fields(self) if f.repr]
        return f"{type(self).__name__}({', '.join(parts)})"


@dataclass(kw_only=True, repr=False)
class PerturbationResult(Result):
    values: torch.Tensor  # (d,) or (d, K)
    budget: int  # masks the game was asked for
    method: str
    player_names: list[str] | None = field(default=None)

    @property
    def n_players(self) -> int:
        return int(self.values.shape[0])

    def top(self, k: int, *, by_abs: bool = True, output: int = 0) -> torch.Tensor:
        """Indices of the k most important players (largest |value| unless ``by_abs=False``);
        for a multi-output game, of output ``output``."""
        v = self.values if self.values.dim() == 1 else self.values[:, output]
        return torch.topk(v.abs() if by_abs else v, min(int(k), v.numel())).indices

    def name(self, i: int) -> str:
        return self.player_names[i] if self.player_names is not None else f"player {i}"

    def __str__(self) -> str:
        v = self.values if self.values.dim() == 1 else self.values[:, 0]
        shown = self.top(5).tolist()
        parts = ", ".join(f"{self.name(i)!s} {float(v[i]):+.3g}" for i in shown)
        more = f" (of {self.n_players})" if self.n_players > len(shown) else ""
        out = "" if self.values.dim() == 1 else f" (output 0 of {self.values.shape[1]})"
        return f"{self.method}, budget {self.budget}: top players by |value|{more}{out}: {parts}"
