"""Argument checks that need the method layer's types (a game, a Hugging Face language model, a module name).

The checks of plain values (tensors, counts, numbers, names) are in :mod:`course_lib.checks`; these
add the few that know course_lib's games or a model's modules. Each message names the argument,
the value and what to do.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import checks
from ..games import Game
from ..hooks import get_module


def game(value: Any, what: str, name: str = "game") -> Game:
    """A course_lib game (built by image_game, tabular_game, token_game or function_game)."""
    if not isinstance(value, Game):
        raise TypeError(f"{what}: {name} must be a course_lib.games.Game (build one with image_game, tabular_game, "
                        f"token_game or function_game); got {type(value).__name__}")
    return value


def module_name(model: nn.Module, value: Any, what: str, name: str = "layer") -> str:
    """A dotted module name of ``model`` (e.g. ``"features"`` or ``"conv3.0"``); an unknown name raises
    :func:`course_lib.hooks.get_module`'s KeyError, which names it and the closest names the model has."""
    if not isinstance(value, str):
        raise TypeError(f"{what}: {name} must be a module name (a string such as 'features'); got "
                        f"{type(value).__name__} {value!r:.40}")
    get_module(model, value)  # a KeyError naming the module and the closest names if there is none
    return value


def language_model(model: Any, what: str, name: str = "model") -> nn.Module:
    """A Hugging Face causal language model (an nn.Module with a config and input embeddings), in eval mode."""
    if not isinstance(model, nn.Module) or not hasattr(model, "config") or not hasattr(model, "get_input_embeddings"):
        raise TypeError(f"{what}: {name} must be a Hugging Face causal language model (e.g. load_model('smollm2-135m')[0]); "
                        f"got {type(model).__name__}")
    checks.eval_mode(model, what, name)
    checks.not_meta(model.get_input_embeddings().weight, f"{name}'s embeddings", what=what)
    return model


def attention(patterns: Any, what: str, name: str = "patterns") -> torch.Tensor:
    """Attention weights (..., T, T): finite, with at least 2 positions."""
    checks.values(patterns, name, what=what)
    if patterns.dim() < 2 or patterns.shape[-1] != patterns.shape[-2] or patterns.shape[-1] < 2:
        raise ValueError(f"{what}: {name} must be attention weights (..., T, T) with T >= 2, e.g. from attention_patterns; "
                         f"got shape {tuple(patterns.shape)}")
    return patterns
