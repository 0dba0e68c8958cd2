"""The lectures' slider widgets: each builds on tiny inputs, draws one picture at once, and draws
another (computed from the library, or picked from answers already there) when its slider moves.

Without a Jupyter front-end nothing is displayed, so ``plt.show`` is replaced by a recorder of
the drawn figure's titles."""
from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

pytest.importorskip("ipywidgets")
from course_lib import widgets  # noqa: E402


@pytest.fixture
def shown(monkeypatch):
    """Titles of every figure the widgets show, in order."""
    titles: list[str] = []

    def show(*_, **__):
        fig = plt.gcf()
        titles.append(" | ".join(ax.get_title() for ax in fig.axes))
        plt.close(fig)

    monkeypatch.setattr(plt, "show", show)
    return titles


def sliders(widget):
    """The widget's sliders, in display order."""
    import ipywidgets as W

    found, todo = [], [widget]
    while todo:
        w = todo.pop(0)
        if isinstance(w, (W.SelectionSlider, W.IntSlider)):
            found.append(w)
        todo[:0] = list(getattr(w, "children", ()))
    return found


def test_smoothgrad_explorer_recomputes_on_a_new_sigma(shown):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    x = torch.rand(3, 8, 8)
    w = widgets.smoothgrad_explorer(model, x, 1, noises=(0.0, 0.15), samples=(2, 4), known={(0.15, 4): torch.zeros(8, 8)})
    assert len(shown) == 1 and "σ=0.15, n=4" in shown[0]  # the first picture came from `known`
    sigma, n = sliders(w)
    sigma.value = 0.0
    n.value = 2
    assert len(shown) == 3 and "σ=0.0, n=2" in shown[-1]


def test_weight_explorer_renders_only_new_weights(shown):
    calls = []

    def make(wt):
        calls.append(wt)
        return torch.full((3, 4, 4), wt), f"logit {wt}"

    w = widgets.weight_explorer(make, (0.0, 0.5, 1.0), value=0.5, known={0.5: torch.rand(3, 4, 4)}, description="TV")
    assert calls == [] and "TV = 0.5" in shown[0]
    (s,) = sliders(w)
    s.value = 1.0
    s.value = 0.5
    s.value = 1.0
    assert calls == [1.0] and "logit 1.0" in shown[-1]


def test_lens_explorer_picks_the_layer(shown):
    lens = torch.zeros(3, 2, 5)
    lens[0, -1, 4] = lens[2, -1, 1] = 10.0  # layer 0 guesses token 4, the last layer token 1
    w = widgets.lens_explorer(lens, lambda t: f"tok{t}", k=2)
    (s,) = sliders(w)
    assert s.value == 2 and "layer 2 of 2" in shown[0]
    s.value = 0
    assert "layer 0 of 2" in shown[-1]


def test_tcav_layer_explorer_runs_new_layers_once(shown):
    calls = []

    def run(layer):
        calls.append(layer)
        return SimpleNamespace(scores=torch.rand(1, 4), random_scores=torch.rand(1, 4), p_values=torch.tensor([0.5]),
                               concept="square")

    known = {"conv3": SimpleNamespace(scores=torch.ones(1, 4), random_scores=torch.rand(1, 4),
                                      p_values=torch.tensor([1e-4]), concept="square")}
    w = widgets.tcav_layer_explorer(run, ["conv2", "conv3", "features"], value="conv3", known=known)
    assert calls == [] and "p = 0.0001" in shown[0]
    (s,) = sliders(w)
    s.value = "features"
    s.value = "conv3"
    assert calls == ["features"] and "layer conv3" in shown[-1]
