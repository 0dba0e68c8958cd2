"""Which device the course uses, and checks that inputs are what a method expects.

The device is chosen once per call, never stored in a module global:
``COURSE_LIB_DEVICE`` if set, else CUDA, then Apple MPS, then the CPU.
"""
from __future__ import annotations

import os
import weakref
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from . import checks


def default_device() -> torch.device:
    """The device models are loaded onto: ``$COURSE_LIB_DEVICE``, else cuda > mps > cpu."""
    wanted = os.environ.get("COURSE_LIB_DEVICE", "").strip()
    if wanted:
        try:
            dev = torch.device(wanted)
        except RuntimeError as err:
            raise ValueError(
                f"COURSE_LIB_DEVICE={wanted!r} is not a device torch knows; use cpu, cuda, cuda:1 or mps."
            ) from err
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("COURSE_LIB_DEVICE asks for cuda, but torch sees no CUDA GPU here. Unset it or use cpu.")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError("COURSE_LIB_DEVICE asks for mps, but this torch has no MPS support here. Unset it or use cpu.")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (cpu for a parameter-free model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of a model's first floating parameter or buffer (float32 for a model without any)."""
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    for t in model.buffers():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def to_model(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``x`` on the model's device and, for floating inputs, in the model's dtype: float64 images go
    into a float32 model as float32, float32 images into a float64 model as float64 (no copy if both agree)."""
    dtype = model_dtype(model) if x.is_floating_point() else x.dtype
    return x.to(device=model_device(model), dtype=dtype)


def require_eval(model: nn.Module, what: str = "this method") -> None:
    """Refuse a model in training mode: dropout and batch-norm would make every answer random."""
    checks.eval_mode(model, what)


def require_unit_range(x: torch.Tensor, name: str = "x") -> None:
    """Images in this course live in [0, 1]; the models normalise inside themselves."""
    checks.unit_range(x, name)


# models that raised on a channels-last input and then ran on a contiguous one (see forward_fast)
_CONTIGUOUS_ONLY: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def forward_fast(model: nn.Module, x: torch.Tensor):
    """``model(x)`` for a batch of images ``x`` (B, C, H, W), in the layout the model runs fastest on.

    On the CPU that is channels-last (the same values, stored pixel by pixel with the colours
    together): oneDNN's convolutions, and max-pooling above all, are much faster that way (~1.5x for
    scenes-cnn's forward + backward: tests/benchmarks/bench_featurevis.py). The outputs agree with the contiguous layout up
    to rounding (~1e-7). Elsewhere (and for inputs that are not images) ``x`` goes in as it is.

    Some models cannot take channels-last input: one that flattens its features with
    ``h.view(h.size(0), -1)`` raises "view size is not compatible with input tensor's size and stride"
    (``reshape`` or ``torch.flatten`` work with any layout). Such a model gets ``x.contiguous()``
    instead, now and on every later call. If the model fails on that too, that error is the one raised.
    """
    if x.device.type != "cpu" or x.dim() != 4:
        return model(x)
    if model in _CONTIGUOUS_ONLY:
        return model(x.contiguous())
    try:
        return model(x.contiguous(memory_format=torch.channels_last))
    except RuntimeError:
        pass  # retried below, outside this handler, so that a second error is shown alone
    out = model(x.contiguous())
    _CONTIGUOUS_ONLY[model] = True
    return out


@contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """Run a block with torch's global CPU generator seeded with ``seed``, then put the caller's
    generator state back: for code that draws from the global generator by design (``nn.Linear``'s
    initialisation). The same numbers as ``torch.manual_seed(seed)`` for CPU draws, but the caller's
    random state is untouched and no CUDA generator is seeded (``torch.manual_seed`` seeds them all)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield
