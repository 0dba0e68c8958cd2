"""Interactive demos for the lectures (ipywidgets). Never used in graded notebooks.

Every explorer is cheap to create: it shows a first picture from answers it already has (or
one small game call) and asks the game for more only when a slider moves to a seed it has
not seen. Without a Jupyter front-end the widgets are created and displayed as text; nothing
blocks.
"""
from __future__ import annotations

from typing import Callable

import torch

from .methods.adversarial import pgd
from .methods.lime import fit_surrogate, sample_masks
from .plot import attack_panel

__all__ = ["lime_explorer", "attack_explorer"]


def lime_explorer(
    game,
    draw: Callable,
    *,
    max_samples: int = 1000,
    n_seeds: int = 10,
    runs: dict | None = None,
    kernel_widths: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
):
    """Sliders for LIME's number of samples, kernel width and seed.

    ``draw(result, ax)`` draws one :class:`~course_lib.methods.lime.LimeResult` on a matplotlib
    axis (e.g. a heat map of ``segment_map(result.weights, segments)``). For each seed the game
    is asked once for ``max_samples`` masks; smaller sample sizes use the first n of them and
    every kernel width reuses the same answers. ``runs``: the output of
    :func:`~course_lib.methods.lime.lime_sweep` on the same game, to start from answers
    already computed (its largest sample size per seed is reused when it is >= max_samples).
    Returns the widget (display it, or let a notebook cell show it).
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt

    answers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for (seed, n, _w), res in (runs or {}).items():
        if n >= max_samples and (seed not in answers or answers[seed][0].shape[0] < n):
            answers[seed] = (res.masks, res.outputs)

    def answer(seed: int):
        if seed not in answers:
            masks = sample_masks(game.n_players, max_samples, seed=seed, device=game.device)
            answers[seed] = (masks, game(masks))
        return answers[seed]

    steps = sorted({max(2, int(max_samples * f)) for f in (0.05, 0.1, 0.25, 0.5, 1.0)})
    n_slider = W.SelectionSlider(options=steps, value=steps[-1], description="samples")
    w_slider = W.SelectionSlider(
        options=list(kernel_widths), value=0.25 if 0.25 in kernel_widths else kernel_widths[0], description="kernel σ"
    )
    s_slider = W.IntSlider(min=0, max=n_seeds - 1, value=0, description="seed")
    out = W.Output()

    def update(*_):
        masks, outputs = answer(s_slider.value)
        n = n_slider.value
        res = fit_surrogate(masks[:n], outputs[:n], kernel_width=w_slider.value, alpha=1.0)
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(4, 3.2))
            draw(res, ax)
            ax.set_title(f"n={n}, σ={w_slider.value}, seed={s_slider.value}, R²={float(res.fidelity.flatten()[0]):.2f}", fontsize=9)
            plt.show()

    for s in (n_slider, w_slider, s_slider):
        s.observe(update, names="value")
    update()
    return W.VBox([W.HBox([n_slider, w_slider, s_slider]), out])


def attack_explorer(
    model,
    x: torch.Tensor,
    class_names,
    *,
    target: int | None = None,
    eps_values: tuple[float, ...] = (0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255),
    steps_values: tuple[int, ...] = (1, 2, 5, 10, 20),
    seed: int = 0,
):
    """Sliders for the budget eps and the number of PGD steps on one image ``x`` (3, H, W).

    ``target=None`` attacks the model's own answer (untargeted), else pushes towards ``target``.
    Each slider position runs one small PGD attack (alpha = 2.5 eps / steps), remembered so that
    going back is free. Returns the widget.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt

    x = x[None] if x.dim() == 3 else x
    with torch.no_grad():
        p_clean = model(x).softmax(1)[0]
    done: dict[tuple[float, int], torch.Tensor] = {}

    def attack(eps: float, steps: int) -> torch.Tensor:
        if (eps, steps) not in done:
            kw = {"target": target} if target is not None else {}
            done[eps, steps] = pgd(model, x, eps=eps, steps=steps, seed=seed, **kw)
        return done[eps, steps]

    e_slider = W.SelectionSlider(
        options=[(f"{e * 255:g}/255", e) for e in eps_values], value=eps_values[min(3, len(eps_values) - 1)], description="eps"
    )
    s_slider = W.SelectionSlider(options=list(steps_values), value=steps_values[min(3, len(steps_values) - 1)], description="steps")
    out = W.Output()

    def update(*_):
        x_adv = attack(e_slider.value, s_slider.value)
        with torch.no_grad():
            p_adv = model(x_adv).softmax(1)[0]
        with out:
            out.clear_output(wait=True)
            attack_panel(x[0], x_adv[0], p_clean, p_adv, class_names)
            plt.show()

    for s in (e_slider, s_slider):
        s.observe(update, names="value")
    update()
    return W.VBox([W.HBox([e_slider, s_slider]), out])
