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
from .methods.attribution import smoothgrad
from .methods.lime import fit_surrogate, sample_masks
from .plot import _img, attack_panel, bar

__all__ = ["lime_explorer", "attack_explorer", "smoothgrad_explorer", "weight_explorer", "lens_explorer", "tcav_layer_explorer"]


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


def _cached(compute: Callable, known: dict | None = None) -> Callable:
    """``compute(key)`` remembered per key, starting from ``known`` (answers the lecture already has),
    so that a slider moved back, or left at a value the lecture computed, costs nothing."""
    done = dict(known or {})

    def get(key):
        if key not in done:
            done[key] = compute(key)
        return done[key]

    return get


def smoothgrad_explorer(
    model,
    x: torch.Tensor,
    target: int,
    *,
    noises: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.3, 0.5),
    samples: tuple[int, ...] = (1, 4, 16, 32, 64),
    seed: int = 0,
    known: dict | None = None,
):
    """Sliders for SmoothGrad's noise sigma and number of samples on one image ``x`` (3, H, W).

    Shows why both knobs matter: sigma = 0 is the plain gradient, too little noise leaves the
    speckle, too much washes the object out, and few samples give a noisy average of noisy maps.
    Each slider position computes one small :func:`~course_lib.methods.attribution.smoothgrad`
    (at most ``max(samples)`` gradients of one image), remembered. ``known``: ``{(sigma, n): map}``
    maps (H, W) the lecture already has. Returns the widget.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt

    x = x[None] if x.dim() == 3 else x
    get = _cached(lambda key: smoothgrad(model, x, target, noise=key[0], n_samples=key[1], seed=seed)[0].sum(0).detach().cpu(), known)
    s_slider = W.SelectionSlider(options=list(noises), value=0.15 if 0.15 in noises else noises[0], description="noise σ")
    n_slider = W.SelectionSlider(options=list(samples), value=32 if 32 in samples else samples[-1], description="samples")
    out = W.Output()

    def update(*_):
        heat = get((s_slider.value, n_slider.value))
        with out:
            out.clear_output(wait=True)
            fig, axes = plt.subplots(1, 2, figsize=(5, 2.6))
            axes[0].imshow(_img(x[0]).clip(0, 1))
            axes[1].imshow(_img(heat), cmap="inferno")
            axes[1].set_title(f"SmoothGrad σ={s_slider.value}, n={n_slider.value}", fontsize=9)
            for ax in axes:
                ax.axis("off")
            plt.show()

    for s in (s_slider, n_slider):
        s.observe(update, names="value")
    update()
    return W.VBox([W.HBox([s_slider, n_slider]), out])


def weight_explorer(
    make: Callable,
    weights: tuple[float, ...],
    *,
    value: float | None = None,
    known: dict | None = None,
    description: str = "weight",
):
    """One slider over a weight (a regulariser's, a transformation's strength) and the image it gives.

    ``make(w)`` returns an image (3, H, W), or ``(image, caption)``; it runs once per new slider
    position (e.g. one small feature-visualisation render) and is remembered. ``known``:
    ``{w: image or (image, caption)}`` the lecture already rendered, so that the first picture is
    free when ``value`` is among them. Returns the widget.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt


    get = _cached(make, known)
    slider = W.SelectionSlider(options=list(weights), value=weights[0] if value is None else value, description=description)
    out = W.Output()

    def update(*_):
        got = get(slider.value)
        image, caption = got if isinstance(got, tuple) else (got, "")
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(2.6, 2.8))
            ax.imshow(_img(image).clip(0, 1))
            ax.set_title(f"{description} = {slider.value}" + (f"\n{caption}" if caption else ""), fontsize=9)
            ax.axis("off")
            plt.show()

    slider.observe(update, names="value")
    update()
    return W.VBox([slider, out])


def lens_explorer(lens: torch.Tensor, decode: Callable, *, position: int = -1, k: int = 10, layer: int | None = None):
    """A slider over the layers of a logit lens already computed, ``lens`` (L+1, T, V) or (L+1, V):
    the top ``k`` next-token probabilities at ``position`` after that layer.

    Nothing is computed but a softmax of one row: moving the slider shows how the guess sharpens
    from the embedding (layer 0) to the model's own answer (layer L). ``decode(token_id)`` gives the
    token's text (e.g. ``tok.decode``). Returns the widget.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt


    rows = lens[:, position] if lens.dim() == 3 else lens  # (L+1, V)
    n = rows.shape[0] - 1
    slider = W.IntSlider(min=0, max=n, value=n if layer is None else layer, description="layer")
    out = W.Output()

    def update(*_):
        p, i = rows[slider.value].detach().float().softmax(-1).topk(k)
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(4.5, 0.28 * k + 1))
            bar(p.flip(0), [repr(decode(int(t))) for t in i.flip(0)], ax=ax, xlabel="probability",
                title=f"logit lens after layer {slider.value} of {n}")
            plt.show()

    slider.observe(update, names="value")
    update()
    return W.VBox([slider, out])


def tcav_layer_explorer(run: Callable, layers: tuple[str, ...] | list[str], *, value: str | None = None, known: dict | None = None):
    """A slider over the layer at which a CAV is trained: the concept's TCAV scores next to the
    random CAVs' scores, and the p-value, at that layer.

    ``run(layer)`` returns a :class:`~course_lib.methods.concepts.TCAVResult` (one target); it runs
    once per new layer and is remembered. ``known``: ``{layer: result}`` the lecture already has,
    so that the first picture is free when ``value`` is among them. The point: the same concept
    can be significant at one layer and not at another, and random CAVs can score 0 or 1 too.
    Returns the widget.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt

    get = _cached(run, known)
    layers = list(layers)
    slider = W.SelectionSlider(options=layers, value=layers[0] if value is None else value, description="layer")
    out = W.Output()

    def update(*_):
        r = get(slider.value)
        sc, sr = r.scores[0].cpu().numpy(), r.random_scores[0].cpu().numpy()
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(4.5, 2.2))
            ax.plot(sr, 0 * sr, "o", color="grey", alpha=0.7, label="random CAVs")
            ax.plot(sc, 0 * sc + 1, "o", color="tab:red", alpha=0.7, label=r.concept)
            ax.set(xlim=(-0.05, 1.05), ylim=(-0.6, 1.6), yticks=[0, 1], yticklabels=["random", "concept"], xlabel="TCAV score")
            ax.set_title(f"layer {slider.value}: p = {float(r.p_values[0]):.2g}", fontsize=9)
            fig.tight_layout()
            plt.show()

    slider.observe(update, names="value")
    update()
    return W.VBox([slider, out])
