"""``course-lib train-zoo``: retrain the shipped models and rewrite their weights and checksums."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..cache import sha256
from . import load_dataset, load_model
from .scenes import make_scenes
from .tabular import train_diabetes_mlp
from .vision import accuracy, train_scene_cnn

SPURIOUS_RATE = 1.0


def train_zoo(out: Path, *, only: list[str] | None = None, log=print) -> dict:
    """Train the shipped models into ``out`` and update ``out/manifest.json``; returns the manifest."""
    from safetensors.torch import save_model

    out.mkdir(parents=True, exist_ok=True)
    mpath = out / "manifest.json"
    manifest = json.loads(mpath.read_text()) if mpath.is_file() else {}
    test = make_scenes(1000, split="test", seed=1)
    jobs = {
        "scenes-cnn": lambda: train_scene_cnn(cue=None, log=log),
        "scenes-cnn-spurious": lambda: train_scene_cnn(cue=SPURIOUS_RATE, log=log),
        "diabetes-mlp": lambda: train_diabetes_mlp(log=log),
    }
    for name, job in jobs.items():
        if only and name not in only:
            continue
        t0 = time.time()
        log(f"training {name}...")
        model = job()
        path = out / f"{name}.safetensors"
        save_model(model, str(path), metadata={"format": "pt"})
        path.chmod(0o644)
        info = {"sha256": sha256(path), "train_seconds": round(time.time() - t0, 1)}
        if name.startswith("scenes"):
            info["test_accuracy"] = accuracy(model, test.images, test.labels)
        manifest[name] = info
        log(f"{name}: {info}")
    mpath.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def train_lecture_sae(*, cache_dir: Path | None = None, force: bool = False, log=print) -> Path:
    """Prebuild lecture 08's sparse autoencoder (``lm_lenses.SAEConfig()`` on smollm2-135m over the
    Shakespeare corpus) in the course cache, so no student trains it; returns the weights file.

    The method lives in ``course_lib.methods.lm_lenses``; this only loads the model and the corpus for it.
    ``force`` trains it again even when a valid file of this recipe is cached (and replaces that file).
    """
    # an upward import (zoo -> methods), to go: the prebuild moves to cli (issue 26), see tests/test_layering.py
    from ..methods import lm_lenses

    model, tok = load_model("smollm2-135m")
    corpus = load_dataset("shakespeare", split="train")["texts"]
    config = lm_lenses.SAEConfig()
    got = lm_lenses.pretrained_sae(model, tok, corpus, config, cache_dir=cache_dir, log=log)
    if force and not got.trained:
        got.path.unlink()
        got.path.with_suffix(".json").unlink()
        got = lm_lenses.pretrained_sae(model, tok, corpus, config, cache_dir=cache_dir, log=log)
    log(f"lecture 08's SAE ({'trained' if got.trained else 'already cached'}): {got.path}; "
        f"{len(got.curve)} steps, final loss {got.curve[-1]:.3f}, built (capture + training) in {got.build_seconds:.0f} s")
    return got.path
