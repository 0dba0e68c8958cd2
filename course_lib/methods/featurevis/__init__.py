"""Feature visualisation: optimise an *image* so that a unit of the network responds strongly.

Training moves the weights to lower a loss. Here the weights stay fixed and we move the
input to *raise* an objective: a class logit, the mean of a channel, one neuron, a direction
in a layer's activation space (Erhan et al. 2009; Simonyan et al. 2014; Olah, Mordvintsev &
Schubert, "Feature Visualization", Distill 2017). Plain gradient ascent on pixels finds
high-frequency patterns, the same kind of pattern an adversarial example uses; the tools
here keep the image closer to something natural:

- **objectives** form a small algebra: they add, subtract and scale (``channel(...) - 0.1 * tv()``),
  and penalties on the image (L1, L2, total variation, blur) are objectives too;
- **parameterisations** say what the optimiser moves: raw pixels, or a Fourier spectrum
  scaled by 1/frequency with decorrelated colour (Mordvintsev et al., "Differentiable Image
  Parameterizations", Distill 2018); both map to images in [0, 1] through a sigmoid;
- **transformations** (pad, jitter, scale, rotate) are applied at random before every
  step, so the image must work wherever it lands ("transformation robustness");
  :func:`render` does the default ones with the same draws as one bilinear resample
  (:func:`one_resample`);
- :func:`render` optimises many objectives at once as one batch; :func:`dataset_search`
  finds the natural images that score highest on the same objective.

Conventions:
- images are (B, 3, H, W) in [0, 1]; the zoo models normalise inside themselves;
- an objective reads activations by dotted module name through :mod:`course_lib.hooks`, with
  two reserved names: ``"input"`` (the image before the random transformations) and
  ``"logits"`` (the model's output); it returns one value per image, (B,), to be *maximised*;
- randomness comes from ``seed`` through a CPU ``torch.Generator`` (the same numbers on every
  device), never the global RNG; results come back on the caller's device.

The package reads in this order: ``objectives``, ``params``, ``transforms``, ``reading``
(activations), ``rendering`` (:func:`render`), ``search``; ``fast`` and ``plan`` hold the speed
machinery (custom backward passes, the CPU grid_sample, the objectives' sharing plan).
"""
from .objectives import (  # noqa: F401 (the reserved layer names, importable as before)
    INPUT,
    LOGITS,
    Objective,
    blur_penalty,
    channel,
    class_logit,
    direction,
    diversity,
    l1,
    l2,
    neuron,
    total_variation,
)
from .params import Fourier, Pixels, colour_basis, opponent_colours
from .reading import activations, evaluate
from .rendering import RenderResult, render
from .search import SearchResult, dataset_search, radial_spectrum
from .transforms import (
    COMPOSED,
    DEFAULT_TRANSFORMS,
    ONE_RESAMPLE,
    Transform,  # noqa: F401 (the type of a transformation)
    compose,
    default_transforms,
    jitter,
    one_resample,
    pad,
    rotate,
    scale,
)

__all__ = [
    "Objective",
    "channel",
    "neuron",
    "class_logit",
    "direction",
    "diversity",
    "l1",
    "l2",
    "total_variation",
    "blur_penalty",
    "Pixels",
    "Fourier",
    "opponent_colours",
    "colour_basis",
    "pad",
    "jitter",
    "scale",
    "rotate",
    "compose",
    "default_transforms",
    "one_resample",
    "DEFAULT_TRANSFORMS",
    "ONE_RESAMPLE",
    "COMPOSED",
    "render",
    "RenderResult",
    "activations",
    "evaluate",
    "dataset_search",
    "SearchResult",
    "radial_spectrum",
]

