"""One result family (CONTRIBUTING, "One API across methods"): every result class of course_lib.methods derives
from :class:`course_lib.methods.results.Result`, is built by keyword only, has ``values``, and keeps its ``repr``
short whatever the size of its tensors.

The classes are found by introspection: every dataclass and NamedTuple defined in a module of course_lib.methods
is a result, unless NOT_RESULTS says why not, so a new method's result cannot be forgotten here.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import typing

import pytest
import torch

import course_lib.methods
from course_lib.methods.results import PerturbationResult, Result

# dataclasses of course_lib.methods that are not a method's result, each with the reason
NOT_RESULTS: dict[str, str] = {
    "course_lib.methods.training_lens.TrainConfig": "a training recipe (frozen; its hash names the cache file)",
    "course_lib.methods.lm_lenses.sae.SAEConfig": "a training recipe (frozen; part of cached SAEs' fingerprints)",
    "course_lib.methods.lm_lenses.lenses.LayerNames": "the names of a model's modules, not an output of a method",
    "course_lib.methods.lm_lenses.sae.PretrainedSAE": "a trained model with what it needs to be used (scale, cutoff, texts); "
    "what the SAE explains comes out of top_contexts and sae_report",
    "course_lib.methods.training_lens.TrainingRun": "a replayable record of a training run (checkpoints, models_at); "
    "built positionally by its cache loader and by tests/test_cache_integrity.py",
}


def _modules():
    mods = [course_lib.methods]
    for info in pkgutil.walk_packages(course_lib.methods.__path__, "course_lib.methods."):
        mods.append(importlib.import_module(info.name))
    return mods


def _record_classes() -> dict[str, type]:
    """Every dataclass and NamedTuple defined in course_lib.methods, by qualified name."""
    out = {}
    for mod in _modules():
        for obj in vars(mod).values():
            if not inspect.isclass(obj) or obj.__module__ != mod.__name__:
                continue
            if dataclasses.is_dataclass(obj) or (issubclass(obj, tuple) and hasattr(obj, "_fields")):
                out[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return out


RECORDS = _record_classes()
RESULTS = {name: cls for name, cls in RECORDS.items() if name not in NOT_RESULTS}


def test_discovery_finds_the_known_results():
    names = {cls.__name__ for cls in RESULTS.values()}
    assert {
        "PerturbationResult",
        "ShapleyResult",
        "LimeResult",
        "RenderResult",
        "SearchResult",
        "ProbeResult",
        "CAV",
        "PromptInversion",
        "TCAVResult",
    } <= names, sorted(names)
    stale = sorted(set(NOT_RESULTS) - set(RECORDS))
    assert not stale, f"NOT_RESULTS names classes that no longer exist: {stale}"


def test_every_public_function_returning_a_record_returns_a_result():
    """A public method annotated to return a dataclass of course_lib.methods (also inside a dict, list or tuple)
    returns a Result, or a class NOT_RESULTS gives a reason for."""
    bad = []
    for mod in _modules():
        for name, fn in vars(mod).items():
            if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != mod.__name__:
                continue
            ret = typing.get_type_hints(fn).get("return")
            stack = [ret]
            while stack:
                t = stack.pop()
                stack.extend(typing.get_args(t))
                if inspect.isclass(t) and dataclasses.is_dataclass(t) and t.__module__.startswith("course_lib.methods."):
                    qual = f"{t.__module__}.{t.__qualname__}"
                    if not issubclass(t, Result) and qual not in NOT_RESULTS:
                        bad.append(f"{mod.__name__}.{name} -> {qual}")
    assert not bad, f"methods returning a record outside the Result family: {bad}"


def _dummy(tp, big: torch.Tensor):
    """A value of annotation ``tp`` for a field; tensors are ``big``."""
    if tp is torch.Tensor:
        return big
    args = typing.get_args(tp)
    if args and type(None) in args:  # X | None
        return _dummy(next(a for a in args if a is not type(None)), big)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return [_dummy(args[0], big) for _ in range(3)] if args and args[0] in (str, int, float) else []
    if origin is dict:
        return {}
    return {int: 3, float: 0.5, str: "name", bool: True}.get(tp)


def _instance(cls, big: torch.Tensor):
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: _dummy(hints[f.name], big) for f in dataclasses.fields(cls) if f.init}
    return cls(**kwargs), kwargs


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_result_is_one_of_the_family(name):
    cls = RESULTS[name]
    assert issubclass(cls, Result), (
        f"{name} should derive from course_lib.methods.results.Result (or go in NOT_RESULTS with a reason)"
    )
    assert dataclasses.is_dataclass(cls)
    params = inspect.signature(cls).parameters.values()
    positional = [p.name for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert not positional, f"{name}: build it by keyword only (dataclass(kw_only=True)); positional: {positional}"

    big = torch.zeros(1000, 1000)
    res, kwargs = _instance(cls, big)
    with pytest.raises(TypeError):
        cls(*kwargs.values())
    assert isinstance(res.values, torch.Tensor), f"{name}: values should be a tensor"
    text = repr(res)
    assert len(text) < 300, f"{name}: repr is {len(text)} characters: {text[:400]}"
    assert text.startswith(type(res).__name__ + "(") and "tensor([" not in text, f"{name}: a tensor's numbers in the repr: {text}"


def test_short_repr_shows_shape_and_dtype_and_small_values():
    res = Result(values=torch.zeros(1000, 1000, dtype=torch.float64))
    assert repr(res) == "Result(values=tensor(1000, 1000, float64))"
    assert repr(Result(values=torch.tensor([0.5, -1.0]))) == "Result(values=[0.5, -1.0])"
    assert "[12 names]" in repr(
        PerturbationResult(values=torch.zeros(12), budget=4, method="m", player_names=list("abcdefghijkl"))
    )


def test_results_with_an_older_name_for_their_main_output():
    from course_lib.methods.concepts import CAV
    from course_lib.methods.lm_lenses import ProbeResult

    d = torch.tensor([0.6, 0.8])
    assert CAV(direction=d, accuracy=0.9, intercept=0.0, seed=0).values is d
    p = ProbeResult(
        train_acc=1.0, test_acc=0.75, weight=torch.zeros(2, 3), bias=torch.zeros(2), mean=torch.zeros(3), std=torch.ones(3)
    )
    assert p.values.tolist() == [1.0, 0.75] and "train_acc=1" in repr(p) and "test_acc=0.75" in repr(p)
