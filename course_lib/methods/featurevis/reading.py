"""Reading activations: record the layers an objective reads during a forward pass, and evaluate
an objective on images.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from ... import checks
from ...device import to_model
from ...hooks import get_module, patch
from .objectives import _RESERVED, INPUT, LOGITS, Objective

# ============================================================================ reading activations

@contextmanager
def activations(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of ``layers`` during the block, in the autograd graph, in a dict.

    Built on :func:`course_lib.hooks.patch`: each output is recorded and a *copy* goes on
    through the network, so a later in-place operation (``ReLU(inplace=True)`` after a
    batch-norm) cannot change what was recorded. Hooks are removed on exit.
    """
    layers = [layers] if isinstance(layers, str) else list(checks.non_empty(layers, "layers", what="activations"))
    acts: dict[str, torch.Tensor] = {}

    def recorder(name):
        def fn(out):
            acts[name] = out
            return out.clone()

        return fn

    with ExitStack() as stack:
        for name in dict.fromkeys(layers):
            if name in _RESERVED:
                continue
            get_module(model, name)  # a clear error for a wrong name
            stack.enter_context(patch(model, name, recorder(name)))
        yield acts


def _forward(
    model: nn.Module, objective: Objective, x: torch.Tensor, x_seen: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``x_seen`` (default ``x``) and return the activations the objective reads."""
    with activations(model, objective.layers) as acts:
        logits = model(x if x_seen is None else x_seen)
    acts = dict(acts)
    acts[LOGITS], acts[INPUT] = logits, x
    return acts


@torch.no_grad()
def evaluate(model: nn.Module, objective: Objective, images: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """The objective's value on each image (N,), on ``images``' device, computed in chunks of ``batch_size``.

    Objectives that compare images with each other (:func:`diversity`) see one chunk at a time.
    """
    checks.module(model, what="evaluate")
    checks.images(images, "images", what="evaluate", check_range=False)
    batch_size = checks.positive_int(batch_size, "batch_size", what="evaluate")
    out = [objective(_forward(model, objective, to_model(images[s : s + batch_size], model)))
           for s in range(0, len(images), batch_size)]
    return torch.cat(out).to(images.device)
