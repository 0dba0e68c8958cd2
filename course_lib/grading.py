"""Checks for nbgrader test cells, with messages a student can act on.

Every check raises ``AssertionError`` with a sentence that says what was expected and what
came back; none of them prints or warns (a test cell that writes to stderr scores zero).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=float)


def check(condition: bool, message: str) -> None:
    """Fail with ``message`` unless ``condition`` holds."""
    if not bool(condition):
        raise AssertionError(message)


def check_type(value: Any, types, name: str) -> None:
    if not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise AssertionError(f"{name} should be a {names}, but it is a {type(value).__name__}.")


def check_shape(value, shape: tuple, name: str) -> None:
    got = tuple(value.shape) if hasattr(value, "shape") else None
    if got != tuple(shape):
        raise AssertionError(f"{name} should have shape {tuple(shape)}, but it has shape {got}.")


def check_close(actual, expected, name: str, *, atol: float = 1e-6, rtol: float = 1e-5, hint: str = "") -> None:
    """``actual`` equals ``expected`` within tolerances; the message shows the worst entry."""
    a, e = _np(actual), _np(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{name} should have shape {e.shape}, but it has shape {a.shape}. {hint}".strip())
    if not np.all(np.isfinite(a)):
        raise AssertionError(f"{name} contains NaN or infinite values. {hint}".strip())
    bad = np.abs(a - e) > atol + rtol * np.abs(e)
    if bad.any():
        i = np.unravel_index(np.argmax(np.abs(a - e)), a.shape) if a.ndim else ()
        where = f" at index {tuple(int(k) for k in i)}" if a.ndim else ""
        raise AssertionError(
            f"{name} is off{where}: expected {e[i] if a.ndim else e.item():.6g}, got {a[i] if a.ndim else a.item():.6g} "
            f"({int(bad.sum())} of {bad.size} entries outside tolerance). {hint}".strip()
        )


def check_raises(fn: Callable, exc: type[BaseException], name: str, hint: str = "") -> None:
    try:
        fn()
    except exc:
        return
    except Exception as err:  # noqa: BLE001
        raise AssertionError(f"{name} should raise {exc.__name__}, but raised {type(err).__name__}: {err}. {hint}".strip())
    raise AssertionError(f"{name} should raise {exc.__name__}, but it returned normally. {hint}".strip())


class _Forbidden:
    """Stands in for a course_lib function while a student's own implementation is graded."""

    def __init__(self, qualname: str):
        self.qualname = qualname

    def __call__(self, *args, **kwargs):
        raise AssertionError(
            f"{self.qualname} was called, but this exercise asks you to write the method yourself: "
            f"do not call course_lib's implementation (or anything that calls it) in your answer."
        )

    def __getattr__(self, name):  # e.g. a result class's attribute: still not allowed
        raise AssertionError(f"{self.qualname}.{name} is not available in this exercise: write the method yourself.")


class forbid:
    """Make course_lib's own implementation of a method unavailable while a test calls the student's.

    ``with forbid(globals(), "course_lib.methods.lime"): lime_explain(...)`` replaces, for the
    duration of the block, every public function and class defined in the named modules by a
    stand-in that fails with a message; names the notebook imported from those modules (``from
    course_lib.methods.lime import lime``) and the module objects themselves are covered too. A
    package's re-exports count as its own (``forbid(globals(), "captum.concept")`` covers ``TCAV``,
    defined in ``captum.concept._core.tcav``, under both names).
    Everything is put back on exit, also after an error.
    """

    def __init__(self, namespace: dict, *modules: str):
        self.namespace, self.modules = namespace, modules
        self._undo: list = []

    def __enter__(self):
        import importlib
        import sys
        import types

        banned: dict[int, _Forbidden] = {}
        for name in self.modules:
            try:
                mod = importlib.import_module(name)
            except ImportError:  # not installed here (e.g. the lime package on a student's server): nothing to hide
                continue
            for attr, value in list(vars(mod).items()):
                home = getattr(value, "__module__", None) or ""
                # defined here, or re-exported by a package from one of its submodules (captum.concept.TCAV)
                if attr.startswith("_") or not (home == mod.__name__ or home.startswith(mod.__name__ + ".")):
                    continue
                if not isinstance(value, (types.FunctionType, type)):
                    continue
                stand_in = banned.setdefault(id(value), _Forbidden(f"{name}.{attr}"))
                self._undo.append((vars(mod), attr, value))
                setattr(mod, attr, stand_in)
                defining = sys.modules.get(home)
                if defining is not None and defining is not mod and getattr(defining, attr, None) is value:
                    self._undo.append((vars(defining), attr, value))
                    setattr(defining, attr, stand_in)
        for key, value in list(self.namespace.items()):
            if id(value) in banned:
                self._undo.append((self.namespace, key, value))
                self.namespace[key] = banned[id(value)]
        return self

    def __exit__(self, *exc):
        for table, key, value in reversed(self._undo):
            table[key] = value
        self._undo.clear()
        return False
