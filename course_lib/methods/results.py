"""The one result family of the perturbation methods (LIME, Shapley values, interactions).

Every result has the same names for the same things:

- ``values``: the attribution, (d,) or (d, K) for a game with d players and K outputs;
- ``budget``: how many masks (coalitions, perturbed inputs) the game was asked for, i.e. model
  evaluations (times the background size for a tabular game);
- ``method``: how it was computed, in words;
- ``player_names``: the players' names, when the game has them.

``str(result)`` names the top players; ``repr`` leaves big tensors (samples, model outputs,
Moebius coefficients) out. The plotting helpers in :mod:`course_lib.plot` accept a result directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

__all__ = ["PerturbationResult"]


@dataclass(kw_only=True, repr=False)
class PerturbationResult:
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

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            if not f.repr:
                continue
            val = getattr(self, f.name)
            if isinstance(val, torch.Tensor):
                val = (
                    f"tensor{tuple(val.shape)}"
                    if val.numel() > 8
                    else [round(float(t), 4) for t in val.flatten()]
                    if val.dim()
                    else round(float(val), 4)
                )
            elif isinstance(val, list) and len(val) > 8:
                val = f"[{len(val)} names]"
            elif isinstance(val, str):
                val = repr(val)
            parts.append(f"{f.name}={val}")
        return f"{type(self).__name__}({', '.join(parts)})"
