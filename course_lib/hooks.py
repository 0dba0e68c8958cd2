"""Scoped capture and patching of activations, by dotted module name.

    with capture(model, ["features", "fc"]) as acts:
        logits = model(x)
    acts["features"]  # (B, C, H, W), the output of model.features

    with patch(model, "features", lambda out: out * 0):
        logits_without = model(x)

Hooks live only inside the ``with`` block and are removed in ``finally``, also when the
block raises, so a notebook cell that fails never leaves a model silently modified.
"""
from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn


def get_module(model: nn.Module, name: str) -> nn.Module:
    """``model.<name>`` for a dotted name such as ``"features.0"``; a clear error if there is none."""
    try:  # a walk down the dotted path: cheap even for a 30-block language model
        return model.get_submodule(name)
    except AttributeError:
        pass
    modules = dict(model.named_modules())
    if name not in modules:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"{type(model).__name__} has no module {name!r}.{hint} List them with [n for n, _ in model.named_modules()].")
    return modules[name]


@contextmanager
def capture(model: nn.Module, names: str | Sequence[str], *, detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named modules during the block, in a dict keyed by name.

    ``detach=False`` keeps them in the autograd graph (for objectives on activations).
    A module called several times keeps its last output.
    """
    names = [names] if isinstance(names, str) else list(names)
    acts: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            def hook(_module, _inputs, output, name=name):
                acts[name] = output.detach() if (detach and isinstance(output, torch.Tensor)) else output

            handles.append(get_module(model, name).register_forward_hook(hook))
        yield acts
    finally:
        for h in handles:
            h.remove()


@contextmanager
def patch(model: nn.Module, name: str, fn: Callable[[torch.Tensor], torch.Tensor] | torch.Tensor) -> Iterator[None]:
    """Replace the output of module ``name`` by ``fn(output)`` (or by a fixed tensor) during the block."""

    def hook(_module, _inputs, output):
        if isinstance(fn, torch.Tensor):
            if fn.shape[1:] != output.shape[1:]:
                raise ValueError(f"patch for {name!r} has shape {tuple(fn.shape)}, the module outputs {tuple(output.shape)}")
            return fn.expand_as(output)
        return fn(output)

    handle = get_module(model, name).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
