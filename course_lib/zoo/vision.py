"""The course's vision models: a small CNN for ``scenes`` and how to train it.

The network normalises its input itself, so every method in course_lib works on
pixels in [0, 1]. Global average pooling before the classifier makes class
activation maps (CAM) exact for this architecture.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ..device import model_device, require_eval, seeded_cpu_rng
from ..progress import progress_bar
from .scenes import CLASS_NAMES, make_scenes

# Per-channel statistics of the scenes training split (rounded); fixed, so they are part of the model.
SCENES_MEAN = (0.5, 0.5, 0.5)
SCENES_STD = (0.25, 0.25, 0.25)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SceneCNN(nn.Module):
    """Four conv blocks (64 -> 32 -> 16 -> 8 pixels), global average pooling, a linear head.

    Input: (B, 3, 64, 64) in [0, 1]. Output: logits (B, n_classes).
    ``features`` is the last convolutional block (for Grad-CAM and feature visualisation).
    """

    def __init__(self, n_classes: int = len(CLASS_NAMES), width: int = 24):
        super().__init__()
        w = width
        self.register_buffer("mean", torch.tensor(SCENES_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(SCENES_STD).view(1, 3, 1, 1))
        self.conv1 = _block(3, w)
        self.conv2 = _block(w, 2 * w)
        self.conv3 = _block(2 * w, 4 * w)
        self.features = _block(4 * w, 8 * w)
        self.fc = nn.Linear(8 * w, n_classes)
        self.class_names = CLASS_NAMES[:n_classes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"SceneCNN takes images (B, 3, H, W) in [0, 1]; got shape {tuple(x.shape)}")
        h = (x - self.mean) / self.std
        h = F.max_pool2d(self.conv1(h), 2)  # (B, w, 32, 32)
        h = F.max_pool2d(self.conv2(h), 2)  # (B, 2w, 16, 16)
        h = F.max_pool2d(self.conv3(h), 2)  # (B, 4w, 8, 8)
        h = self.features(h)  # (B, 8w, 8, 8)
        return self.fc(h.mean((2, 3)))  # (B, n_classes)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random brightness/contrast jitter; shapes stay put so the ground-truth masks still hold."""
    b = x.shape[0]
    gain = 1 + 0.2 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)
    shift = 0.1 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)
    return (x * gain + shift).clamp(0, 1)


def train_scene_cnn(
    *,
    cue: float | None = None,
    n_train: int = 12000,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
    log=print,
) -> SceneCNN:
    """Train :class:`SceneCNN` on freshly generated scenes (a few minutes on 2 CPU cores).

    ``cue`` plants the spurious mark (a square in the top band whose column encodes the class) at that rate (for ``scenes-cnn-spurious``).
    Deterministic for a seed on a given machine and torch version.
    """
    with seeded_cpu_rng(seed):  # the global generator draws the initial weights; the caller's state is put back
        g = torch.Generator().manual_seed(seed)
        t0 = time.time()
        data = make_scenes(n_train, split="train", seed=seed, cue=cue)
        log(f"generated {n_train} training scenes in {time.time() - t0:.1f}s")
        model = SceneCNN()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        steps = epochs * (n_train // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        model.train()
        for epoch in progress_bar(range(epochs), total=epochs, desc="epochs", enabled=progress):
            order = torch.randperm(n_train, generator=g)
            total, correct, loss_sum = 0, 0, 0.0
            for s in range(0, n_train - batch_size + 1, batch_size):
                idx = order[s : s + batch_size]
                x, y = _augment(data.images[idx], g), data.labels[idx]
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=0.05)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.item() * len(idx)
                correct += (logits.argmax(1) == y).sum().item()
                total += len(idx)
            log(f"epoch {epoch + 1}/{epochs}: loss {loss_sum / total:.3f}, train accuracy {correct / total:.3f} ({time.time() - t0:.0f}s)")
        return model.eval()


@torch.inference_mode()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``images`` (N, 3, H, W) in [0, 1]."""
    require_eval(model, "accuracy")
    dev = model_device(model)
    hits = 0
    for s in range(0, len(images), batch_size):
        hits += (model(images[s : s + batch_size].to(dev)).argmax(1).cpu() == labels[s : s + batch_size]).sum().item()
    return hits / len(images)
