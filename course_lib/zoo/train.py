"""``course-lib train-zoo``: retrain the shipped models and rewrite their weights and checksums."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..cache import sha256
from .scenes import ImageDataset, make_scenes, scene_labels
from .tabular import train_diabetes_mlp
from .vision import accuracy, train_scene_cnn

SPURIOUS_RATE = 1.0
# The training scenes of each shipped scenes model: make_scenes(N_TRAIN, split="train", seed=TRAIN_SEED, cue=...).
N_TRAIN, TRAIN_SEED = 12000, 0
TRAINING_CUES = {"scenes-cnn": None, "scenes-cnn-spurious": SPURIOUS_RATE}


def training_scenes(name: str, indices=None) -> ImageDataset:
    """The scenes that the shipped model ``name`` was trained on (before the brightness jitter of
    training), or only their rows ``indices`` (ints in ``0..N_TRAIN-1``), rendered without the rest."""
    if name not in TRAINING_CUES:
        raise KeyError(f"no training scenes for {name!r}; models trained on scenes: {list(TRAINING_CUES)}")
    return make_scenes(N_TRAIN, split="train", seed=TRAIN_SEED, cue=TRAINING_CUES[name], indices=indices)


def training_labels():
    """The labels (N_TRAIN,) of the training scenes (the same for every shipped scenes model), without rendering them."""
    return scene_labels(N_TRAIN, split="train", seed=TRAIN_SEED)


def train_zoo(out: Path, *, only: list[str] | None = None, log=print) -> dict:
    """Train the shipped models into ``out`` and update ``out/manifest.json``; returns the manifest."""
    from safetensors.torch import save_model

    out.mkdir(parents=True, exist_ok=True)
    mpath = out / "manifest.json"
    manifest = json.loads(mpath.read_text()) if mpath.is_file() else {}
    test = make_scenes(1000, split="test", seed=1)
    jobs = {
        "scenes-cnn": lambda: train_scene_cnn(cue=TRAINING_CUES["scenes-cnn"], n_train=N_TRAIN, seed=TRAIN_SEED, log=log),
        "scenes-cnn-spurious": lambda: train_scene_cnn(cue=TRAINING_CUES["scenes-cnn-spurious"], n_train=N_TRAIN,
                                                       seed=TRAIN_SEED, log=log),
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

