"""``scenes``: a procedurally generated image dataset with a known answer.

Every 64x64 RGB image shows one object of a named class at a random position, scale,
rotation and colour on a textured background, together with the exact mask of the
object's pixels. Because the generator is ours, we know which pixels *should* matter,
and we can plant a *spurious cue* (a small square in the top band whose position encodes
a class) to build a "clever Hans" model on purpose.

Deterministic: the same ``(split, n, seed, cue)`` gives the same images on every machine.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CLASS_NAMES = ("fish", "volcano", "house", "tree", "sailboat", "star", "moon", "heart", "ring", "car")
SIZE = 64
CUE_SIZE = 5
CUE_COLOUR = (1.0, 0.0, 1.0)  # magenta
_SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}


@dataclass
class ImageDataset:
    """Images ``(N, 3, H, W)`` in [0, 1], labels ``(N,)``, object masks ``(N, H, W)`` bool."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    class_names: tuple[str, ...]
    cue_classes: torch.Tensor | None = None  # (N,) class whose slot holds the cue, -1 for none

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def of_class(self, name: str) -> "ImageDataset":
        """The images of one class, e.g. ``ds.of_class("fish")``."""
        if name not in self.class_names:
            raise KeyError(f"no class {name!r}; classes are {list(self.class_names)}")
        keep = self.labels == self.class_names.index(name)
        cues = None if self.cue_classes is None else self.cue_classes[keep]
        return ImageDataset(self.images[keep], self.labels[keep], self.masks[keep], self.class_names, cues)


# ---------------------------------------------------------------- shape primitives
# Each takes local coordinates u (right) and v (down), both (H, W), in object units:
# the object roughly fills [-1, 1]^2.

def _ellipse(u, v, cu, cv, ru, rv):
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def _convex(u, v, pts):
    """Inside a convex polygon given counter-clockwise or clockwise."""
    pts = np.asarray(pts, dtype=float)
    signs = []
    for (x0, y0), (x1, y1) in zip(pts, np.roll(pts, -1, axis=0)):
        signs.append((x1 - x0) * (v - y0) - (y1 - y0) * (u - x0))
    s = np.stack(signs)
    return np.all(s >= 0, 0) | np.all(s <= 0, 0)


def _rect(u, v, u0, v0, u1, v1):
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _fish(u, v):
    body = _ellipse(u, v, -0.15, 0.0, 0.62, 0.36)
    tail = _convex(u, v, [(0.38, 0.0), (0.95, -0.42), (0.95, 0.42)])
    eye = _ellipse(u, v, -0.5, -0.08, 0.08, 0.08)
    return body | tail, eye


def _volcano(u, v):
    cone = _convex(u, v, [(-0.95, 0.8), (0.95, 0.8), (0.22, -0.45), (-0.22, -0.45)])
    lava = _convex(u, v, [(-0.22, -0.45), (0.22, -0.45), (0.05, 0.1), (-0.05, 0.1)])
    plume = _ellipse(u, v, 0.0, -0.62, 0.3, 0.18)
    return cone | plume, lava | plume


def _house(u, v):
    wall = _rect(u, v, -0.62, -0.1, 0.62, 0.82)
    roof = _convex(u, v, [(-0.85, -0.1), (0.85, -0.1), (0.0, -0.85)])
    door = _rect(u, v, -0.15, 0.35, 0.15, 0.82)
    return wall | roof, door


def _tree(u, v):
    trunk = _rect(u, v, -0.13, 0.25, 0.13, 0.92)
    crown = _ellipse(u, v, 0.0, -0.28, 0.62, 0.6)
    return trunk | crown, trunk & ~crown


def _sailboat(u, v):
    hull = _convex(u, v, [(-0.9, 0.45), (0.9, 0.45), (0.6, 0.78), (-0.6, 0.78)])
    sail = _convex(u, v, [(0.0, -0.9), (0.0, 0.35), (0.72, 0.35)])
    sail2 = _convex(u, v, [(-0.08, -0.7), (-0.08, 0.35), (-0.6, 0.35)])
    mast = _rect(u, v, -0.08, -0.9, 0.0, 0.45)
    return hull | sail | sail2 | mast, hull


def _star(u, v):
    r = np.hypot(u, v)
    theta = np.arctan2(v, u) + np.pi / 2
    k = np.mod(theta, 2 * np.pi / 5) / (2 * np.pi / 5)  # 0..1 within one arm
    edge = 0.38 + (0.95 - 0.38) * np.abs(1 - 2 * k) ** 1.3
    return r <= edge, np.zeros_like(u, dtype=bool)


def _moon(u, v):
    disc = _ellipse(u, v, 0.0, 0.0, 0.85, 0.85)
    bite = _ellipse(u, v, 0.38, -0.18, 0.7, 0.7)
    return disc & ~bite, np.zeros_like(u, dtype=bool)


def _heart(u, v):
    x, y = u * 1.15, -(v * 1.15) + 0.2
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0, np.zeros_like(u, dtype=bool)


def _ring(u, v):
    r = np.hypot(u, v)
    return (r <= 0.9) & (r >= 0.5), np.zeros_like(u, dtype=bool)


def _car(u, v):
    body = _rect(u, v, -0.95, 0.0, 0.95, 0.45)
    cabin = _convex(u, v, [(-0.5, 0.0), (0.5, 0.0), (0.3, -0.42), (-0.35, -0.42)])
    wheels = _ellipse(u, v, -0.52, 0.5, 0.22, 0.22) | _ellipse(u, v, 0.52, 0.5, 0.22, 0.22)
    return body | cabin | wheels, wheels


_SHAPES = (_fish, _volcano, _house, _tree, _sailboat, _star, _moon, _heart, _ring, _car)
# Colour of the secondary part: None = a darker shade of the object's own colour.
_DETAIL = {1: (1.0, 0.35, 0.05), 3: (0.45, 0.28, 0.12)}


def _background(rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(0.05, 0.95, size=3)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    direction = rng.normal(size=2)
    grad = (direction[0] * (xx - 0.5) + direction[1] * (yy - 0.5)) * rng.uniform(0.0, 0.3)
    coarse = rng.normal(scale=0.06, size=(3, 8, 8))
    blob = np.kron(coarse, np.ones((8, 8)))
    img = base[:, None, None] + grad[None] + blob
    return img


def _object_colour(rng, bg_mean):
    for _ in range(50):
        c = rng.uniform(0.0, 1.0, size=3)
        if np.linalg.norm(c - bg_mean) > 0.55:
            return c
    return 1.0 - bg_mean


def cue_slot(k: int) -> tuple[int, int]:
    """Top-left pixel (row, col) of the cue square that signals class ``k``."""
    return 1, 2 + 6 * k


def render(label: int, rng: np.random.Generator, cue_class: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """One image (3, 64, 64) float32 in [0, 1] and its object mask (64, 64) bool."""
    img = _background(rng)
    scale = rng.uniform(13.0, 22.0)
    margin = scale * 0.95
    cy = rng.uniform(margin + 6, SIZE - margin)  # keep clear of the cue band at the top
    cx = rng.uniform(margin, SIZE - margin)
    angle = rng.uniform(-0.35, 0.35)
    flip = -1.0 if (rng.random() < 0.5 and label not in (1, 2, 3, 4)) else 1.0
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    dx, dy = xx - cx, yy - cy
    u = (np.cos(angle) * dx + np.sin(angle) * dy) / scale * flip
    v = (-np.sin(angle) * dx + np.cos(angle) * dy) / scale
    shape, detail = _SHAPES[label](u, v)
    colour = _object_colour(rng, img.mean((1, 2)))
    shade = 1.0 + 0.15 * (v.clip(-1, 1))  # a little shading, top lighter
    img = np.where(shape[None], colour[:, None, None] * shade[None], img)
    detail_colour = np.array(_DETAIL.get(label, tuple(colour * 0.35)))
    img = np.where((detail & shape)[None], detail_colour[:, None, None], img)
    img = img + rng.normal(scale=0.02, size=img.shape)
    if cue_class >= 0:
        r0, c0 = cue_slot(cue_class)
        img[:, r0 : r0 + CUE_SIZE, c0 : c0 + CUE_SIZE] = np.array(CUE_COLOUR)[:, None, None]
    return np.clip(img, 0.0, 1.0).astype(np.float32), shape


def scene_labels(n: int, *, split: str = "test", seed: int = 0, classes: tuple[str, ...] | None = None) -> torch.Tensor:
    """The labels (n,) of :func:`make_scenes` for the same ``(n, split, seed, classes)``, without rendering an image."""
    if split not in _SPLIT_OFFSET:
        raise ValueError(f"split must be one of {list(_SPLIT_OFFSET)}; got {split!r}")
    if n <= 0:
        raise ValueError(f"n must be positive; got {n}")
    names = CLASS_NAMES if classes is None else tuple(classes)
    unknown = [c for c in names if c not in CLASS_NAMES]
    if unknown:
        raise ValueError(f"unknown classes {unknown}; scenes has {list(CLASS_NAMES)}")
    ids = [CLASS_NAMES.index(c) for c in names]
    rng = np.random.default_rng([seed, _SPLIT_OFFSET[split], 20261124])
    labels = np.array([ids[i % len(ids)] for i in range(n)])
    rng.shuffle(labels)  # the shuffle depends on n: row i of a smaller set is another scene
    return torch.from_numpy(labels).long()


def make_scenes(
    n: int = 1000,
    *,
    split: str = "test",
    seed: int = 0,
    cue: float | str | None = None,
    classes: tuple[str, ...] | None = None,
    indices=None,
) -> ImageDataset:
    """Generate ``n`` scenes, balanced over classes, in a fixed order for ``(split, seed)``.

    cue: None (no cue), a rate p in [0, 1] (the cue marks the true class with probability p,
    otherwise a random other class), ``"shifted"`` (always the *next* class: a lying cue),
    or ``"random"`` (a uniformly random class, unrelated to the label).
    indices: render only these rows of the ``n`` scenes (a sequence of ints in ``0..n-1``), in that
    order: the same images, labels and cues as those rows of the full set, without rendering the rest.
    """
    if isinstance(cue, str) and cue not in ("shifted", "random"):
        raise ValueError(f"cue must be None, a rate in [0, 1], 'shifted' or 'random'; got {cue!r}")
    if isinstance(cue, (int, float)) and not (0.0 <= cue <= 1.0):
        raise ValueError(f"a cue rate must lie in [0, 1]; got {cue}")
    labels = scene_labels(n, split=split, seed=seed, classes=classes).numpy()
    K = len(CLASS_NAMES)
    rows = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices is not None and (rows.size == 0 or rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"indices must be rows of the {n} scenes, between 0 and {n - 1}; got {len(rows)} values")
    labels = labels[rows]
    images = np.empty((len(rows), 3, SIZE, SIZE), np.float32)
    masks = np.empty((len(rows), SIZE, SIZE), bool)
    cues = np.full(len(rows), -1)
    for j, (i, y) in enumerate(zip(rows.tolist(), labels)):
        item_rng = np.random.default_rng([seed, _SPLIT_OFFSET[split], 20261124, i])
        if cue is None:
            c = -1
        elif cue == "shifted":
            c = (y + 1) % K
        elif cue == "random":
            c = int(item_rng.integers(K))
        else:
            c = y if item_rng.random() < cue else int((y + item_rng.integers(1, K)) % K)
        cues[j] = c
        images[j], masks[j] = render(int(y), item_rng, c)
    return ImageDataset(
        torch.from_numpy(images),
        torch.from_numpy(labels).long(),
        torch.from_numpy(masks),
        CLASS_NAMES,
        None if cue is None else torch.from_numpy(cues).long(),
    )
