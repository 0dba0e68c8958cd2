"""Argument checks shared by every public function: each message is written once, here.

A bottom-layer module: it imports torch and nothing from course_lib, so any module may use it.
Every message names the argument, the value that was wrong and what to do about it. A check
returns its (possibly normalised) argument, so it can be used inline::

    x = checks.images(x, "x", what="saliency")              # (B, C, H, W) float, finite, in [0, 1]
    n_samples = checks.positive_int(n_samples, "n_samples", what="lime")

``what`` (the public function's name) starts the message, so a student sees which call failed.
The functions raise ``TypeError`` for a value of the wrong kind (a string for a tensor, a float
for a count) and ``ValueError`` for a value of the right kind that is out of range.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Sequence

import torch
from torch import nn

__all__ = [
    "tensor",
    "finite",
    "float_dtype",
    "unit_range",
    "batch",
    "images",
    "eval_mode",
    "same_device",
    "n_outputs",
    "target",
    "positive_int",
    "non_negative_int",
    "positive_number",
    "probability",
    "choice",
    "non_empty",
    "layer_index",
    "values",
    "integers",
    "real",
    "text",
    "texts",
    "not_meta",
]


def _where(what: str | None) -> str:
    return f"{what}: " if what else ""


def _show(value: Any) -> str:
    """A short description of a value for an error message (never a whole tensor)."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def tensor(x: Any, name: str = "x", *, what: str | None = None) -> torch.Tensor:
    """Refuse anything that is not a torch tensor (a string, a list, a numpy array)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{_where(what)}{name} must be a torch.Tensor; got {type(x).__name__} {_show(x)}. "
                        f"Convert it with torch.as_tensor({name}).")
    return x


def finite(x: torch.Tensor, name: str = "x", *, what: str | None = None) -> torch.Tensor:
    """Refuse NaN or infinite values: they would flow silently into every answer."""
    if isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex()) and x.device.type != "meta":
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            raise ValueError(
                f"{_where(what)}{name} contains {int(bad.sum())} NaN or infinite value(s) (of {x.numel()}); "
                "every method here needs finite inputs. Find where they came from (a division by zero, "
                f"a failed load) or replace them, e.g. torch.nan_to_num({name})."
            )
    return x


def float_dtype(x: torch.Tensor, name: str = "x", *, what: str | None = None) -> torch.Tensor:
    """Refuse integer (e.g. uint8 0..255) and boolean tensors where pixels or features are expected."""
    if not x.is_floating_point():
        if x.dtype == torch.uint8:
            fix = f"Divide by 255: {name}.float() / 255 gives the pixels in [0, 1] the course works on."
        else:
            fix = f"Convert it with {name}.float()."
        raise TypeError(f"{_where(what)}{name} must be a floating-point tensor; got dtype {x.dtype}. {fix}")
    return x


def unit_range(x: torch.Tensor, name: str = "x", *, what: str | None = None, tol: float = 1e-4) -> torch.Tensor:
    """Images in this course live in [0, 1]; the models normalise inside themselves."""
    if x.numel() == 0 or x.device.type == "meta":
        return x
    lo, hi = float(x.min()), float(x.max())
    if lo < -tol or hi > 1 + tol:
        raise ValueError(
            f"{_where(what)}{name} has values in [{lo:.3g}, {hi:.3g}], but course_lib works on images in [0, 1] "
            "(the zoo models normalise inside themselves). Pass un-normalised pixels, e.g. dataset.images"
            + (" (or divide 0..255 pixels by 255)." if hi > 1.5 else ".")
        )
    return x


def batch(x: torch.Tensor, name: str = "x", *, dims: int | None = None, what: str | None = None,
          shape: str = "(B, ...)") -> torch.Tensor:
    """Refuse a tensor without a batch axis (``dims`` axes in all, if given) or an empty batch."""
    if (dims is not None and x.dim() != dims) or x.dim() < 1:
        one = f" For one input use {name}[None] (or {name}.unsqueeze(0))." if dims is None or x.dim() == dims - 1 else ""
        raise ValueError(f"{_where(what)}{name} must be a batch {shape}; got shape {tuple(x.shape)}.{one}")
    if x.shape[0] == 0:
        raise ValueError(f"{_where(what)}{name} is an empty batch (shape {tuple(x.shape)}); pass at least one input.")
    return x


def not_meta(x: torch.Tensor, name: str = "x", *, what: str | None = None) -> torch.Tensor:
    """Refuse a tensor on the meta device: it has a shape but no values to compute with."""
    if x.device.type == "meta":
        raise ValueError(f"{_where(what)}{name} is on the meta device and holds no values; pass a real tensor "
                         f"(e.g. one loaded with its weights, not built under torch.device('meta')).")
    return x


def images(x: Any, name: str = "x", *, what: str | None = None, check_range: bool = True) -> torch.Tensor:
    """A non-empty batch of float images (B, C, H, W), finite, in [0, 1]; channels-last (B, H, W, C) is refused."""
    tensor(x, name, what=what)
    float_dtype(x, name, what=what)
    if x.dim() == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        raise ValueError(f"{_where(what)}{name} has shape {tuple(x.shape)}, which looks like channels-last images (B, H, W, C); "
                         f"course_lib takes (B, C, H, W): use {name}.permute(0, 3, 1, 2).")
    batch(x, name, dims=4, what=what, shape="of images (B, C, H, W)")
    not_meta(x, name, what=what)
    finite(x, name, what=what)
    if check_range:
        unit_range(x, name, what=what)
    return x


def eval_mode(model: Any, what: str | None = None, name: str = "model") -> Any:
    """Refuse a model in training mode: dropout and batch-norm would make every answer random."""
    if isinstance(model, nn.Module) and model.training:
        raise ValueError(
            f"{what or 'this method'} needs the {name} in evaluation mode, but {name}.training is True "
            f"(dropout and batch norm would change the outputs from call to call). Call {name}.eval() first."
        )
    return model


def module(model: Any, name: str = "model", *, what: str | None = None) -> nn.Module:
    """Refuse anything that is not a torch ``nn.Module``, a model on the meta device; then require eval mode."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{_where(what)}{name} must be a torch nn.Module; got {type(model).__name__} {_show(model)}")
    first = next(model.parameters(), None)
    if first is not None and first.device.type == "meta":
        raise ValueError(f"{_where(what)}{name} is on the meta device: it has shapes but no weights. Load its weights "
                         f"(e.g. load_model(...)) or build it outside torch.device('meta').")
    return eval_mode(model, what, name)


def same_device(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str, *, what: str | None = None) -> None:
    """Refuse two tensors that must be used together but live on different devices."""
    if a.device != b.device:
        raise ValueError(f"{_where(what)}{name_a} is on {a.device} but {name_b} is on {b.device}; "
                         f"move one of them, e.g. {name_b}.to({name_a}.device).")


def n_outputs(model: nn.Module, x: torch.Tensor, *, what: str | None = None) -> int:
    """The number of outputs K of a classifier, from one forward pass of ``x[:1]`` (which must be
    on the model's device); refuses a model that does not return (B, K) scores."""
    try:
        with torch.no_grad():
            out = model(x[:1])
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ValueError(f"{_where(what)}the model cannot run on x[:1] (x has shape {tuple(x.shape)}): {err}. "
                         "x must be a batch (B, ...) of what the model takes; for one input use x[None].") from err
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{_where(what)}this method needs a model that returns (B, K) scores; this one returns {shape}")
    return int(out.shape[1])


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def target(value: Any, k: int, name: str = "target", *, what: str | None = None, n: int | None = None,
           allow_many: bool = True) -> Any:
    """A class index (or one per input) checked against the model's ``k`` outputs.

    Accepts an int, a 0-d integer tensor, or (with ``allow_many``) a sequence or 1-d integer
    tensor of ``n`` indices (or one). Returns an ``int`` for one index, else a (m,) long tensor.
    Negative indices are refused, never wrapped: ``-1`` is not "the last class" here.
    """
    rng = f"0..{k - 1}"
    if value is None or isinstance(value, (bool, str, float)) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise (TypeError if value is not None else ValueError)(
            f"{_where(what)}{name} must be an integer class index in {rng}"
            + (" (or one per input)" if allow_many else "") + f"; got {_show(value)}")
    if _is_int(value):
        t = torch.tensor([int(value)])
        single = True
    else:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{_where(what)}{name} must be an integer class index in {rng}; got {_show(value)}") from err
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{_where(what)}{name} must hold integer class indices in {rng}; got dtype {t.dtype}. "
                            f"Use {name}.long() if the values are whole numbers.")
        single = t.dim() == 0
        if not single and not allow_many:
            raise ValueError(f"{_where(what)}{name} must be one class index in {rng}; got {_show(value)}")
        if t.dim() > 1:
            raise ValueError(f"{_where(what)}{name} must be one class index or a 1-d list of them; got shape {tuple(t.shape)}")
        t = t.flatten()
        if t.numel() == 0:
            raise ValueError(f"{_where(what)}{name} is empty; give at least one class index in {rng}")
        if n is not None and t.numel() not in (1, n):
            raise ValueError(f"{_where(what)}{name} must be one class or one per input ({n}); got {t.numel()} of them")
    bad = (t < 0) | (t >= k)
    if bool(bad.any()):
        v = int(t[bad][0])
        hint = " Negative indices are not counted from the end here." if v < 0 else ""
        raise ValueError(f"{_where(what)}{name} {v} is out of range: this model has {k} outputs, "
                         f"so {name} must lie in {rng}.{hint}")
    return int(t[0]) if single else t.long()


def positive_int(value: Any, name: str, *, what: str | None = None, minimum: int = 1) -> int:
    """An integer count >= ``minimum`` (default 1); refuses bools, floats and strings."""
    if not _is_int(value) and not (isinstance(value, torch.Tensor) and value.dim() == 0
                                   and not value.is_floating_point() and value.dtype != torch.bool):
        raise TypeError(f"{_where(what)}{name} must be an int >= {minimum}; got {type(value).__name__} {_show(value)}"
                        + (f". Use {name}={int(value)}." if isinstance(value, float) and float(value).is_integer() else ""))
    if int(value) < minimum:
        raise ValueError(f"{_where(what)}{name} must be an int >= {minimum}; got {int(value)}")
    return int(value)


def step_count(steps: Any, n_steps: Any, *, default: int, what: str) -> int:
    """A step count given as ``steps`` (the course's name) or ``n_steps`` (captum's, and older notebooks'): both at
    once must agree (``steps`` left at its ``default`` counts as not given); an int >= 1 either way."""
    if n_steps is None:
        return positive_int(steps, "steps", what=what)
    if steps != default and steps != n_steps:
        raise ValueError(f"{_where(what)}give steps or n_steps (the same count), not both; got {steps} and {n_steps}")
    return positive_int(n_steps, "n_steps", what=what)


def non_negative_int(value: Any, name: str, *, what: str | None = None) -> int:
    """An integer >= 0; refuses bools, floats and strings."""
    return positive_int(value, name, what=what, minimum=0)


def positive_number(value: Any, name: str, *, what: str | None = None, allow_zero: bool = False) -> float:
    """A finite real number > 0 (>= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{_where(what)}{name} must be a number; got {type(value).__name__} {_show(value)}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{_where(what)}{name} must be a finite number {'>=' if allow_zero else '>'} 0; got {value!r}")
    return v


def probability(value: Any, name: str, *, what: str | None = None, open_interval: bool = True) -> float:
    """A number in (0, 1) (or [0, 1] with ``open_interval=False``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{_where(what)}{name} must be a number in (0, 1); got {type(value).__name__} {_show(value)}")
    v = float(value)
    ok = (0 < v < 1) if open_interval else (0 <= v <= 1)
    if not ok:
        raise ValueError(f"{_where(what)}{name} must lie in {'(0, 1)' if open_interval else '[0, 1]'}; got {value!r}")
    return v


def choice(value: Any, choices: Iterable[Any], name: str, *, what: str | None = None) -> Any:
    """One of a fixed set of names (e.g. ``norm`` in ("linf", "l2"))."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{_where(what)}{name} must be one of {', '.join(map(repr, choices))}; got {_show(value)}")
    return value


def non_empty(seq: Any, name: str, *, what: str | None = None) -> Sequence:
    """A list (or tuple, or tensor) with at least one element."""
    if isinstance(seq, (str, bytes)) or seq is None:
        raise TypeError(f"{_where(what)}{name} must be a non-empty list; got {_show(seq)}")
    try:
        n = len(seq)
    except TypeError as err:
        raise TypeError(f"{_where(what)}{name} must be a non-empty list; got {type(seq).__name__}") from err
    if n == 0:
        raise ValueError(f"{_where(what)}{name} is empty; give at least one element")
    return seq


def layer_index(value: Any, n_layers: int, name: str = "layer", *, what: str | None = None) -> int:
    """A layer (block) index in 0..n_layers-1; negative indices are refused, never wrapped."""
    if not _is_int(value):
        raise TypeError(f"{_where(what)}{name} must be an int in 0..{n_layers - 1}; got {type(value).__name__} {_show(value)}")
    v = int(value)
    if not 0 <= v < n_layers:
        raise ValueError(f"{_where(what)}{name} {v} is out of range: the model has {n_layers} layers, "
                         f"so {name} must lie in 0..{n_layers - 1}."
                         + (" Negative indices are not counted from the end here." if v < 0 else ""))
    return v


def values(x: Any, name: str = "x", *, what: str | None = None, dims: int | tuple[int, ...] | None = None,
           shape: str = "(N, ...)") -> torch.Tensor:
    """A non-empty float tensor of finite values with real data (activations, scores, weights, logits).

    ``dims``: the number of axes it must have (or a tuple of allowed numbers), described by ``shape``."""
    tensor(x, name, what=what)
    if not x.is_floating_point():
        raise TypeError(f"{_where(what)}{name} must be a floating-point tensor {shape}; got dtype {x.dtype}. "
                        f"Convert it with {name}.float().")
    allowed = (dims,) if isinstance(dims, int) else dims
    if allowed is not None and x.dim() not in allowed:
        raise ValueError(f"{_where(what)}{name} must have shape {shape}; got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{_where(what)}{name} is empty (shape {tuple(x.shape)}); pass at least one value.")
    not_meta(x, name, what=what)
    return finite(x, name, what=what)


def integers(x: Any, name: str = "x", *, what: str | None = None, low: int = 0, high: int | None = None,
             dims: int | tuple[int, ...] | None = None, shape: str = "(N,)", kind: str = "index") -> torch.Tensor:
    """A non-empty integer tensor (token ids, labels, indices) with values in ``low..high - 1``.

    A list of ints is accepted and returned as a long tensor; floats and bools are refused."""
    if isinstance(x, (list, tuple)) and all(_is_int(v) for v in x):
        x = torch.tensor(list(x), dtype=torch.long)
    elif not isinstance(x, (torch.Tensor, str, bytes)) and hasattr(x, "__array__"):  # a numpy array
        x = torch.as_tensor(x)
    tensor(x, name, what=what)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{_where(what)}{name} must hold integers (each a {kind}); got dtype {x.dtype}. "
                        f"Use {name}.long() if the values are whole numbers.")
    allowed = (dims,) if isinstance(dims, int) else dims
    if allowed is not None and x.dim() not in allowed:
        raise ValueError(f"{_where(what)}{name} must have shape {shape}; got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{_where(what)}{name} is empty (shape {tuple(x.shape)}); pass at least one {kind}.")
    not_meta(x, name, what=what)
    lo, hi = int(x.min()), int(x.max())
    if lo < low or (high is not None and hi >= high):
        rng = f"{low}..{high - 1}" if high is not None else f">= {low}"
        bad = lo if lo < low else hi
        raise ValueError(f"{_where(what)}{name} holds the {kind} {bad}, out of range: it must lie in {rng}."
                         + (" Negative values are not counted from the end here." if bad < 0 else ""))
    return x


def real(value: Any, name: str, *, what: str | None = None) -> float:
    """A finite real number (any sign)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{_where(what)}{name} must be a number; got {type(value).__name__} {_show(value)}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{_where(what)}{name} must be a finite number; got {value!r}")
    return float(value)


def text(value: Any, name: str, *, what: str | None = None) -> str:
    """A non-empty string."""
    if not isinstance(value, str):
        raise TypeError(f"{_where(what)}{name} must be a string; got {type(value).__name__} {_show(value)}")
    if not value:
        raise ValueError(f"{_where(what)}{name} is an empty string; give some text.")
    return value


def texts(value: Any, name: str = "texts", *, what: str | None = None) -> list[str]:
    """A non-empty list of strings (one string is refused: it would be read letter by letter)."""
    if isinstance(value, str):
        raise TypeError(f"{_where(what)}{name} must be a list of strings; got one string. Use [{name}].")
    value = list(non_empty(value, name, what=what))
    bad = [t for t in value if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{_where(what)}{name} must hold strings; got {type(bad[0]).__name__} {_show(bad[0])}")
    return value
