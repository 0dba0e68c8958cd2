"""One contract for every public function of course_lib.methods (CONTRIBUTING.md, "One API across methods").

Three parts: the game methods and attacks on the real scenes CNN (below); every public function
against a table of bad inputs ("bad inputs, every public function"); the same table's good calls
for the promises on good inputs ("promises for good inputs").

For each game method and attack, on every device this machine has:
- the result comes back on the device of the input (the game's device, or x's device);
- the same ``seed`` gives the same answer, and (for a random method) another seed another one;
- the answer does not depend on ``batch_size`` (chunking only);
- perturbation results share one family: ``values``, ``budget``, ``method``, ``player_names``,
  a short ``str`` naming the top players, big tensors kept out of the ``repr``.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import math
import pkgutil
import traceback
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

import course_lib.methods as methods_pkg

from course_lib.games import function_game, grid_segments, image_game, tabular_game
from course_lib.methods.adversarial import fgsm, pgd
from course_lib.methods.lime import lime
from course_lib.methods.results import PerturbationResult
from course_lib.methods.shapley import exact_interactions, exact_shapley, kernel_shap, permutation_shapley

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# name -> (method(game, seed) -> result, is it random?)
GAME_METHODS = {
    "lime": (lambda g, seed: lime(g, 120, seed=seed), True),
    "lime-bernoulli": (lambda g, seed: lime(g, 120, seed=seed, sampler="bernoulli"), True),
    "exact_shapley": (lambda g, seed: exact_shapley(g), False),
    "exact_interactions": (lambda g, seed: exact_interactions(g), False),
    "kernel_shap": (lambda g, seed: kernel_shap(g, 100, seed=seed), True),
    "permutation_shapley": (lambda g, seed: permutation_shapley(g, 100, seed=seed), True),
}


def _close(a: torch.Tensor, b: torch.Tensor, device: str) -> bool:
    # TF32 convolutions on a GPU: chunks of different sizes may round differently (DESIGN.md)
    tol = dict(rtol=1e-4, atol=1e-5) if device == "cpu" else dict(rtol=7e-3, atol=1e-3)
    return torch.allclose(a.double().cpu(), b.double().cpu(), **tol)


def _image_game(model, x, device, batch_size):
    # 3 x 3 patches: 9 players, so that exact enumeration costs 512 forward passes
    return image_game(model.to(device), x.to(device), grid_segments(64, 64, 22), baseline="mean", target=2, batch_size=batch_size)


def _tabular_game(device, batch_size):
    torch.manual_seed(0)
    # 8 features: 256 coalitions, more than the samplers' budget of 100 (so they really sample)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).eval().to(device)
    x, bg = torch.randn(8, device=device), torch.randn(20, 8, device=device)
    return tabular_game(net, x, bg, target=1, output="logit", batch_size=batch_size, feature_names=list("abcdefgh"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["image", "tabular"])
@pytest.mark.parametrize("name", list(GAME_METHODS))
def test_game_methods(name, kind, device, scenes_cnn, scenes_test):
    method, random = GAME_METHODS[name]

    def game(bs):
        return _image_game(scenes_cnn, scenes_test.images[0], device, bs) if kind == "image" else _tabular_game(device, bs)

    a = method(game(7), 0)
    b = method(game(1000), 0)
    c = method(game(7), 0)
    # device
    assert a.values.device.type == device, f"{name} returned values on {a.values.device}, the game is on {device}"
    # batch-size independence and determinism
    assert _close(a.values, b.values, device), f"{name}: the answer changed with batch_size"
    assert torch.equal(a.values, c.values), f"{name}: the same seed gave a different answer"
    if random:
        d = method(game(7), 1)
        assert not torch.equal(a.values, d.values), f"{name}: another seed gave the very same answer"
    # one result family
    assert isinstance(a, PerturbationResult)
    assert a.budget > 0 and isinstance(a.method, str) and a.method
    assert a.values.shape[0] == (9 if kind == "image" else 8)
    text = str(a)
    assert "budget" in text and len(text) < 400
    assert "masks" not in repr(a) and "outputs" not in repr(a) and "moebius" not in repr(a)
    if kind == "tabular":
        assert a.player_names == list("abcdefgh")
        assert a.name(int(a.top(1))) in text, "str(result) should name the top player"


ATTACKS = {
    "fgsm": lambda m, x, y, seed, bs: fgsm(m, x, y, eps=4 / 255, batch_size=bs),
    "pgd": lambda m, x, y, seed, bs: pgd(m, x, y, eps=4 / 255, steps=3, seed=seed, batch_size=bs),
    "pgd-l2": lambda m, x, y, seed, bs: pgd(m, x, y, eps=0.5, steps=3, norm="l2", seed=seed, batch_size=bs),
    "pgd-targeted": lambda m, x, y, seed, bs: pgd(m, x, eps=4 / 255, steps=3, target=(y + 1) % 10, seed=seed, batch_size=bs),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks(name, device, scenes_cnn, scenes_test):
    attack = ATTACKS[name]
    model = scenes_cnn.to(device)
    x, y = scenes_test.images[:6].to(device), scenes_test.labels[:6].to(device)
    a = attack(model, x, y, 0, 2)
    b = attack(model, x, y, 0, None)
    c = attack(model, x, y, 0, 2)
    assert a.device.type == device
    diff = (a - b).abs()
    if device == "cpu":
        # oneDNN picks its convolution kernels by batch size, so the gradients of a batch of 2 and of 6 differ by
        # rounding (~1e-7); where a gradient is that close to 0, sign(g) flips and that pixel moves one step
        # (alpha = 2.5 * eps / steps) the other way. Measured: pgd-targeted, 1 element of 73 728 by exactly
        # alpha = 0.01307 (the 0.013 that failed). Anything more than such isolated flips is a real dependence.
        moved = diff > 1e-6
        assert int(moved.sum()) <= max(1, diff.numel() // 10_000), f"{name}: {int(moved.sum())} values changed with batch_size"
        bound = 1e-6 if name == "pgd-l2" else 2 * 4 / 255 + 1e-6  # an L2 step has no sign to flip; Linf within the ball
        assert diff.max() <= bound, f"{name}: the answer changed with batch_size by {float(diff.max()):.3g}"
    else:
        assert diff.max() <= 0.06, f"{name}: the answer changed with batch_size"  # sign steps flip where gradients are ~0 (TF32)
    assert torch.equal(a, c), f"{name}: the same seed gave a different answer"
    if name != "fgsm":
        assert not torch.equal(a, attack(model, x, y, 1, 2)), f"{name}: another seed gave the very same answer"


def test_bad_inputs_are_refused_with_a_clear_message(scenes_cnn, scenes_test):
    x = scenes_test.images[0].clone()
    x[0, 0, 0] = float("nan")
    seg = grid_segments(64, 64, 16)
    with pytest.raises(ValueError, match="NaN"):
        image_game(scenes_cnn, x, seg)
    with pytest.raises(ValueError, match="NaN"):
        pgd(scenes_cnn, x[None], eps=0.01)
    with pytest.raises(ValueError, match="NaN"):
        fgsm(scenes_cnn, x[None], eps=0.01)
    with pytest.raises(ValueError, match="NaN"):
        tabular_game(lambda r: r.sum(1), torch.tensor([1.0, float("inf")]), torch.zeros(3, 2))
    good = scenes_test.images[0]
    with pytest.raises(ValueError, match=r"0\.\.9"):
        image_game(scenes_cnn, good, seg, target=10)(torch.ones(1, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"0\.\.9"):
        pgd(scenes_cnn, good[None], eps=0.01, target=12)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        fgsm(scenes_cnn, good[None], torch.tensor([-1]), eps=0.01)


# ============================================================================= bad inputs, every public function
# Every public function of course_lib.methods.* against a table of bad inputs (issue 26).
#
# The functions are *discovered*: every function defined in a module of ``course_lib.methods``
# whose name does not start with ``_``. Each must either have a row in ``SPECS`` (a good call and
# the role of each argument) or be listed in ``EXEMPT`` with a reason, so a new function is
# covered or consciously left out. Each role has a fixed list of bad values (``BAD``): NaN, inf,
# no batch axis, channels-last (B, H, W, C), uint8 0..255, float64, an empty batch, a string and a
# meta-device tensor for images; out of range, negative and float targets; a model in train mode;
# counts <= 0, bools and floats; empty lists; unknown layer and option names; ...
#
# A bad call must raise ValueError or TypeError from course_lib itself (the traceback's last frame
# is in course_lib, not deep inside torch, captum or transformers) with a message naming the
# argument (or, for a name, the name given). The kinds in ``RIGHT`` may instead return the right
# answer: the good call's (a float64 image gives the float32 answer, up to rounding).
# Everything runs on tiny models (a 4-channel scenes CNN on 16 x 16 images, a 2-block GPT-2 with
# a character tokenizer), so the table costs seconds.

# ----------------------------------------------------------------------------- discovery


def _public_functions() -> dict[str, Callable]:
    found = {}
    for info in pkgutil.iter_modules(methods_pkg.__path__):
        if info.name.startswith("_"):  # private helpers (methods/_checks.py)
            continue
        mod = importlib.import_module(f"course_lib.methods.{info.name}")
        for name, obj in vars(mod).items():
            # a module's own functions, or (a package such as featurevis) those of its submodules it re-exports
            own = obj.__module__ == mod.__name__ or obj.__module__.startswith(mod.__name__ + ".") if inspect.isfunction(obj) else False
            if own and not name.startswith("_"):
                found[f"{info.name}.{name}"] = obj
    return found


FUNCTIONS = _public_functions()


# ----------------------------------------------------------------------------- tiny models and inputs

VOCAB = 61


class _Chars:
    """A character tokenizer with the slice of the Hugging Face interface the methods use: ids 1..60 for
    the characters from ' ' on, 0 for padding (the only special token)."""

    pad_token_id = eos_token_id = 0
    all_special_ids = [0]
    padding_side = "right"

    def __len__(self):
        return VOCAB

    def _ids(self, text: str) -> list[int]:
        return [1 + (ord(ch) - 32) % (VOCAB - 1) for ch in text]

    def __call__(self, texts, return_tensors=None, padding=False, truncation=False, max_length=None, add_special_tokens=True):
        rows = [self._ids(t)[: max_length if truncation else None] for t in ([texts] if isinstance(texts, str) else texts)]
        if isinstance(texts, str):
            return {"input_ids": rows[0]}
        width = max(map(len, rows))
        return {"input_ids": torch.tensor([r + [0] * (width - len(r)) for r in rows]),
                "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])}

    def decode(self, ids, skip_special_tokens=False) -> str:
        return "".join(chr(31 + int(i)) for i in ids if int(i) > 0)

    def batch_decode(self, rows, skip_special_tokens=False) -> list[str]:
        return [self.decode(r) for r in rows]


@dataclass
class Ctx:
    model: torch.nn.Module  # a scenes CNN of width 4, random weights, eval mode
    x: torch.Tensor  # (2, 3, 16, 16) in [0, 1]
    y: torch.Tensor  # (2,)
    game: object  # a 9-player image game
    lm: torch.nn.Module  # a 2-block GPT-2, vocabulary 61
    tok: _Chars
    ids: torch.Tensor  # (2, 8) token ids
    acts: torch.Tensor  # (24, 8) activations
    labels: torch.Tensor  # (24,) in 0..2
    cav: torch.Tensor  # (D,) at the CNN's conv3
    patterns: torch.Tensor  # (L, H, T, T) attention of the LM on ids[0]


@pytest.fixture(scope="module")
def ctx():
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    from course_lib.methods.concepts import layer_activations
    from course_lib.methods.lm_lenses import attention_patterns
    from course_lib.zoo.vision import SceneCNN

    logging.set_verbosity_error()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SceneCNN(width=4).eval()
        lm = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=64,
                                        bos_token_id=0, eos_token_id=0)).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    game = image_game(model, x[0], grid_segments(16, 16, 6), target=1)
    tok = _Chars()
    ids = torch.tensor([tok._ids("the cat"), tok._ids("a b c d")])[:, :7]
    acts = torch.randn(24, 8, generator=g)
    labels = torch.arange(24) % 3
    cav = torch.randn(layer_activations(model, x[:1]).shape[1], generator=g)
    return Ctx(model, x, torch.tensor([1, 2]), game, lm, tok, ids, acts, labels, cav, attention_patterns(lm, ids[0]))


# ----------------------------------------------------------------------------- the bad values of each role

NAN = float("nan")


def _bad_tensor(good: torch.Tensor) -> dict:
    nan, inf = good.clone().float(), good.clone().float()
    nan.view(-1)[0] = NAN
    inf.view(-1)[-1] = float("inf")
    return {"nan": nan, "inf": inf, "empty": good[:0], "string": "values.pt", "meta": good.to("meta")}


def _bad_values(role: str, good, c: Ctx) -> dict:
    if role == "image":
        return {**_bad_tensor(good), "no-batch-axis": good[0], "channels-last": good.permute(0, 2, 3, 1).contiguous(),
                "uint8": (good * 255).round().to(torch.uint8), "float64": good.double(), "empty": good[:0],
                "bool": good > 0.5, "list": good.tolist()}
    if role == "tensor":  # activations, scores, weights: finite numbers
        return {**_bad_tensor(good), "bool": good > 0}
    if role == "mask":  # (n, d) bool coalitions
        return {"string": "masks", "empty": good[:0], "no-batch-axis": good[0], "no-players": good[:, :0]}
    if role == "ids":  # (B, T) token ids
        return {"string": "the cat", "float": good.float(), "negative": good - 100, "out-of-vocabulary": good + VOCAB,
                "empty": good[:0], "meta": good.to("meta"), "bool": good > 5}
    if role == "target":  # a class index of the CNN (10 classes)
        return {"out-of-range": 10, "negative": -1, "float": 1.5, "string": "house", "bool": True}
    if role == "labels":  # class indices, one per input
        return {"out-of-range": torch.full_like(good, 10), "negative": good - 5, "float": good.float() + 0.5,
                "string": "labels", "wrong-length": good.reshape(-1)[:1].repeat(len(good) + 3)}
    if role == "classes":  # a list of class indices
        return {"out-of-range": [10], "negative": [-1], "float": [1.5], "empty": []}
    if role == "index":  # a channel or class index, checked later against the layer
        return {"negative": -1, "float": 1.5, "bool": True}
    if role == "lm-layer":  # a block index of the LM (2 blocks)
        return {"out-of-range": 99, "negative": -1, "float": 1.5}
    if role == "count":  # an int >= 1
        return {"zero": 0, "negative": -1, "bool": True, "float": 2.5, "string": "3"}
    if role == "count0":  # an int >= 0
        return {"negative": -1, "bool": True, "float": 2.5}
    if role == "number":  # a finite number > 0
        return {"negative": -0.5, "nan": NAN, "inf": float("inf"), "string": "0.1", "bool": True}
    if role == "real":  # any finite number
        return {"nan": NAN, "inf": float("inf"), "string": "0.5"}
    if role == "prob":  # a number in (0, 1)
        return {"zero": 0.0, "above-one": 1.5, "nan": NAN, "string": "0.05"}
    if role == "seq":
        return {"empty": []}
    if role == "texts":
        return {"empty": [], "one-string": "a single text", "not-strings": [1, 2], "none": None}
    if role == "string":  # a non-empty text (a target, a prompt)
        return {"empty": "", "not-a-string": 3}
    if role == "name":  # a module (layer) name
        return {"unknown": "no_such_layer", "not-a-string": 3}
    if role == "option":  # one of a few names
        return {"unknown": "no_such_option"}
    if role == "game":
        return {"not-a-game": "game", "a-function": lambda masks: masks.float().sum(1)}
    if role == "lm":
        return {"string": "gpt2", "not-a-language-model": c.model if c is not None else None}
    if role == "module":
        return {"string": "model"}
    if role == "indices":  # integer indices with a known range
        return {"out-of-range": torch.full_like(good, 99), "negative": good - 99, "float": good.float() + 0.5,
                "string": "indices", "empty": good[:0]}
    if role == "tokens":  # integer token ids without a known vocabulary
        return {"string": "the cat", "float": good.float(), "empty": good[:0], "meta": good.to("meta")}
    if role == "model":  # the model itself: in train mode, or (a copy) on the meta device
        return {"train-mode": "TRAIN", "meta": "META"}
    if role == "callable":
        return {"not-callable": "reconstruct"}
    raise AssertionError(role)


# kinds for which a right answer (the good call's) is as good as a clear error
RIGHT = {"float64"}


# ----------------------------------------------------------------------------- the table


@dataclass
class Spec:
    kwargs: Callable[[Ctx], dict]  # a good call, by keyword
    roles: dict[str, str] = field(default_factory=dict)  # argument -> role (its bad values: _bad_values)
    call: Callable | None = None  # how to call it, if not f(**kwargs) (a context manager is entered)
    ok: dict[str, dict[str, str]] = field(default_factory=dict)  # argument -> {kind: why an answer is right for it}


def _enter(f, **kw):
    with f(**kw) as got:
        return dict(got)


def _fv():
    from course_lib.methods import featurevis

    return featurevis


def _img(c: Ctx, **kw) -> dict:
    return dict(model=c.model, x=c.x, **kw)


IMG = {"x": "image", "target": "target", "model": "model"}
ZERO_ONE = {"bool": "True/False values are the numbers 1/0 here (binary activations, scores, outcomes)"}
LM_IDS = lambda c, **kw: dict(model=c.lm, input_ids=c.ids, **kw)  # noqa: E731

SPECS: dict[str, Spec] = {
    # attribution
    "attribution.saliency": Spec(lambda c: _img(c, target=1), IMG),
    "attribution.input_x_gradient": Spec(lambda c: _img(c, target=1), IMG),
    "attribution.smoothgrad": Spec(lambda c: _img(c, target=1, n_samples=2), {**IMG, "n_samples": "count", "noise": "number"}),
    "attribution.integrated_gradients": Spec(lambda c: _img(c, target=1, steps=2),
                                             {**IMG, "steps": "count", "n_steps": "count", "baseline": "real", "batch_size": "count"}),
    "attribution.cam": Spec(lambda c: _img(c, target=1), {**IMG, "layer": "name"}),
    "attribution.grad_cam": Spec(lambda c: _img(c, target=1), {**IMG, "layer": "name"}),
    "attribution.occlusion": Spec(lambda c: _img(c, target=1, patch=8), {**IMG, "patch": "count", "output": "option", "stride": "count",
                                                                        "baseline": "real", "batch_size": "count"}),
    "attribution.blurred": Spec(lambda c: dict(x=c.x, sigma=1.0), {"x": "image", "sigma": "number"},
                               ok={"x": {"no-batch-axis": "blurred takes one image (C, H, W) as well as a batch"}}),
    "attribution.leave_one_out": Spec(lambda c: dict(game=c.game, players=[0, 3]), {"game": "game", "players": "classes"}),
    "attribution.randomize_layers": Spec(lambda c: dict(model=c.model, names=["fc"]), {"names": "name", "seed": "count0"}),
    "attribution.cascading_randomization": Spec(lambda c: dict(model=c.model, layers=["fc", "features"]),
                                                {"layers": "seq", "model": "module"}),
    # adversarial
    "adversarial.fgsm": Spec(lambda c: _img(c, y=c.y, eps=0.01), {"x": "image", "y": "labels", "model": "model", "eps": "number"}),
    "adversarial.pgd": Spec(lambda c: _img(c, target=1, eps=0.01, steps=1),
                            {**IMG, "steps": "count", "eps": "number", "norm": "option", "alpha": "number", "loss": "option",
                             "batch_size": "count"}),
    "adversarial.predict": Spec(lambda c: _img(c), {"x": "image", "model": "model", "batch_size": "count"}),
    "adversarial.accuracy_under_attack": Spec(lambda c: _img(c, y=c.y, eps_values=[0.01], attack="fgsm", progress=False),
                                              {"x": "image", "y": "labels", "model": "model", "eps_values": "seq",
                                               "attack": "option"}),
    "adversarial.attack_loss": Spec(lambda c: dict(logits=c.model(c.x).detach(), labels=c.y, targeted=False),
                                    {"logits": "tensor", "labels": "labels", "loss": "option"}),
    "adversarial.project_to_ball": Spec(lambda c: dict(x_adv=c.x.flip(0), x=c.x, eps=0.1),
                                        {"x_adv": "image", "x": "image", "eps": "number", "norm": "option"}),
    # lime
    "lime.lime": Spec(lambda c: dict(game=c.game, n_samples=20), {"game": "game", "n_samples": "count", "kernel_width": "number",
                                                                               "n_features": "count", "sampler": "option"}),
    "lime.lime_sweep": Spec(lambda c: dict(game=c.game, sample_sizes=[20], seeds=[0]),
                            {"game": "game", "sample_sizes": "seq", "seeds": "seq"}),
    "lime.sample_masks": Spec(lambda c: dict(n_players=4, n_samples=5), {"n_players": "count", "n_samples": "count",
                                                                          "sampler": "option"}),
    "lime.cosine_distance": Spec(lambda c: dict(masks=torch.rand(6, 4) > 0.5), {"masks": "mask"}),
    "lime.exp_kernel": Spec(lambda c: dict(distance=torch.rand(6), kernel_width=0.25), {"distance": "tensor", "kernel_width": "number"}),
    "lime.weighted_ridge": Spec(lambda c: dict(Z=(c.acts > 0).double(), y=c.acts[:, :2], w=c.acts[:, 0].abs()),
                                {"Z": "tensor", "y": "tensor", "w": "tensor", "alpha": "number"},
                                ok={"Z": ZERO_ONE, "y": ZERO_ONE, "w": ZERO_ONE}),
    "lime.fit_surrogate": Spec(lambda c: dict(masks=c.acts > 0, outputs=c.acts[:, 0]),
                               {"masks": "mask", "outputs": "tensor", "kernel_width": "number", "n_features": "count"},
                               ok={"outputs": ZERO_ONE}),
    # shapley
    "shapley.all_masks": Spec(lambda c: dict(d=3), {"d": "count"}),
    "shapley.exact_values": Spec(lambda c: dict(game=c.game), {"game": "game"}),
    "shapley.exact_shapley": Spec(lambda c: dict(game=c.game), {"game": "game"}),
    "shapley.exact_interactions": Spec(lambda c: dict(game=c.game), {"game": "game"}),
    "shapley.moebius": Spec(lambda c: dict(values=c.acts[:8, 0]), {"values": "tensor"}),
    "shapley.shapley_from_moebius": Spec(lambda c: dict(m=c.acts[:8, 0]), {"m": "tensor"}),
    "shapley.sii_from_moebius": Spec(lambda c: dict(m=c.acts[:8, 0]), {"m": "tensor"}),
    "shapley.shapley_kernel_weights": Spec(lambda c: dict(d=4, sizes=torch.tensor([1, 2, 3])), {"d": "count", "sizes": "indices"}),
    "shapley.kernel_shap": Spec(lambda c: dict(game=c.game, budget=20), {"game": "game", "budget": "count"}),
    "shapley.permutation_shapley": Spec(lambda c: dict(game=c.game, budget=20), {"game": "game", "budget": "count"}),
    # concepts
    "concepts.layer_activations": Spec(lambda c: _img(c), {"x": "image", "model": "model", "layer": "name", "batch_size": "count"}),
    "concepts.penultimate_features": Spec(lambda c: _img(c), {"x": "image", "model": "model", "layer": "name",
                                                             "batch_size": "count"}),
    "concepts.compute_cav": Spec(lambda c: dict(concept_acts=c.acts[:12] + 1, random_acts=c.acts[12:]),
                                 {"concept_acts": "tensor", "random_acts": "tensor", "C": "number"},
                                 ok={"concept_acts": ZERO_ONE, "random_acts": ZERO_ONE}),
    "concepts.directional_derivatives": Spec(lambda c: _img(c, cavs=c.cav, target=1),
                                             {**IMG, "cavs": "tensor", "layer": "name", "batch_size": "count"}),
    "concepts.tcav_scores": Spec(lambda c: _img(c, cavs=c.cav, target=1), {**IMG, "cavs": "tensor", "layer": "name"}),
    "concepts.tcav": Spec(lambda c: _img(c, concept=c.x.flip(0), randoms=[c.x.flip(2), c.x.flip(3)], target=1, progress=False),
                          {**IMG, "concept": "image", "randoms": "seq", "alpha": "prob", "layer": "name"}),
    "concepts.tcav_significance": Spec(lambda c: dict(concept_scores=torch.tensor([0.9, 0.8, 0.7]),
                                                      random_scores=torch.tensor([0.5, 0.4, 0.6])),
                                       {"concept_scores": "tensor", "random_scores": "tensor", "alpha": "prob"},
                                       ok={"concept_scores": ZERO_ONE, "random_scores": ZERO_ONE}),
    "concepts.data_attribution": Spec(lambda c: dict(model=c.model, x_test=c.x, train_x=c.x.flip(0), train_y=c.y,
                                                     method="representer"),
                                      {"model": "model", "x_test": "image", "train_x": "image", "train_y": "labels",
                                       "method": "option", "layer": "name", "target": "target", "batch_size": "count"},
                                      ok={"x_test": {"no-batch-axis": "one test image (3, H, W) gives values (N_train,)"}}),
    # feature visualisation
    "featurevis.class_logit": Spec(lambda c: dict(c=1), {"c": "index"}),
    "featurevis.channel": Spec(lambda c: dict(layer="features", c=1), {"c": "index"}),
    "featurevis.neuron": Spec(lambda c: dict(layer="features", c=1), {"c": "index", "y": "index", "x": "index"}),
    "featurevis.direction": Spec(lambda c: dict(layer="features", v=torch.ones(32)), {"v": "tensor"}),
    "featurevis.l1": Spec(lambda c: dict(centre=0.5), {"centre": "real"}),
    "featurevis.l2": Spec(lambda c: dict(centre=0.5), {"centre": "real"}),
    "featurevis.blur_penalty": Spec(lambda c: dict(k=3), {"k": "count"}),
    "featurevis.render": Spec(lambda c: dict(model=c.model, objectives=_fv().channel("features", 1), size=16, steps=1, progress=False),
                              {"model": "model", "steps": "count", "n": "count", "size": "count", "lr": "number",
                               "param": "option", "transforms": "option"}),
    "featurevis.evaluate": Spec(lambda c: dict(model=c.model, objective=_fv().channel("features", 1), images=c.x),
                                {"model": "model", "images": "image", "batch_size": "count"}),
    "featurevis.dataset_search": Spec(lambda c: dict(model=c.model, objective=_fv().channel("features", 1), images=c.x, k=1),
                                      {"model": "model", "images": "image", "k": "count",
                                                                                         "batch_size": "count", "patch_size": "count"}),
    "featurevis.activations": Spec(lambda c: dict(model=c.model, layers=["conv1"]), {"layers": "seq"}, call=_enter),
    "featurevis.colour_basis": Spec(lambda c: dict(images=c.x), {"images": "image"}),
    "featurevis.opponent_colours": Spec(lambda c: dict(scales=[1.0, 0.5, 0.25]), {"scales": "seq"}),
    "featurevis.radial_spectrum": Spec(lambda c: dict(images=c.x, n_bins=4), {"images": "image", "n_bins": "count"}),
    "featurevis.pad": Spec(lambda c: dict(p=2), {"p": "count0", "value": "real"}),
    "featurevis.jitter": Spec(lambda c: dict(d=2), {"d": "count0"}),
    "featurevis.rotate": Spec(lambda c: dict(degrees=5.0), {"degrees": "real"}),
    "featurevis.one_resample": Spec(lambda c: dict(p=2), {"p": "count0", "d1": "count0", "d2": "count0", "degrees": "real"}),
    # prototypes
    "prototypes.prototypes": Spec(lambda c: dict(model=c.model, classes=[1], steps=1, size=16, progress=False),
                                  {"model": "model", "steps": "count", "n": "count", "classes": "classes",
                                   "tv": "real", "l1": "real"}),
    "prototypes.pooled_activations": Spec(lambda c: dict(model=c.model, images=c.x),
                                          {"model": "model", "images": "image", "layers": "seq", "batch_size": "count"}),
    "prototypes.spearman": Spec(lambda c: dict(a=c.acts[0], b=c.acts[1]), {"a": "tensor", "b": "tensor"},
                                ok={"a": ZERO_ONE, "b": ZERO_ONE}),
    "prototypes.spearman_score": Spec(lambda c: dict(model=c.model, images=c.x, class_images=c.x.flip(0)),
                                      {"model": "model", "images": "image", "class_images": "image", "layers": "seq"}),
    "prototypes.entanglement": Spec(lambda c: dict(model=c.model, images=c.x, labels=c.y),
                                    {"model": "model", "images": "image", "labels": "labels"}),
    "prototypes.confusion_matrix": Spec(lambda c: dict(model=c.model, images=c.x, labels=c.y),
                                        {"model": "model", "images": "image", "labels": "labels", "batch_size": "count"}),
    "prototypes.class_weight_similarity": Spec(lambda c: dict(linear=c.model.fc), {"linear": "module"}),
    "prototypes.isolate": Spec(lambda c: _img(c, a=1, b=2, patch=4), {"x": "image", "model": "model", "a": "target",
                                                                     "b": "target", "patch": "count"}),
    # lm_lenses
    "lm_lenses.find_layers": Spec(lambda c: dict(model=c.lm), {"model": "lm"}),
    "lm_lenses.residual_stream": Spec(lambda c: LM_IDS(c), {"model": "lm", "input_ids": "ids", "up_to": "count0"}),
    "lm_lenses.logit_lens": Spec(lambda c: LM_IDS(c, positions=[0, -1]), {"model": "lm", "input_ids": "ids", "positions": "seq"}),
    "lm_lenses.attention_patterns": Spec(lambda c: LM_IDS(c), {"model": "lm", "input_ids": "ids"}),
    "lm_lenses.capture_activations": Spec(lambda c: dict(model=c.lm, tokenizer=c.tok, texts=["the cat", "a dog"], layers=[1],
                                                         progress=False),
                                          {"model": "lm", "texts": "texts", "layers": "seq", "max_length": "count",
                                           "batch_size": "count"}),
    "lm_lenses.previous_token_scores": Spec(lambda c: dict(patterns=c.patterns), {"patterns": "tensor"}),
    "lm_lenses.induction_scores": Spec(lambda c: dict(patterns=c.patterns, period=3), {"patterns": "tensor", "period": "count"}),
    "lm_lenses.split_indices": Spec(lambda c: dict(n=10), {"n": "count", "test_fraction": "prob"}),
    "lm_lenses.train_probe": Spec(lambda c: dict(x=c.acts, y=c.labels, steps=3),
                                  {"x": "tensor", "y": "labels", "steps": "count", "l2": "number"}),
    "lm_lenses.control_labels": Spec(lambda c: dict(token_ids=c.labels * 7, labels=c.labels), {"token_ids": "tokens", "labels": "labels"},
                                     ok={"labels": {"out-of-range": "any labels >= 0 are classes: all 10 gives the one-class "
                                                                    "control task, all 10"}}),
    "lm_lenses.probe_layers": Spec(lambda c: dict(acts={1: c.acts}, y=c.labels, steps=3), {"acts": "seq", "y": "labels"}),
    "lm_lenses.sae_loss": Spec(lambda c: dict(x=c.acts, x_hat=c.acts.flip(0), f=c.acts.relu(), l1=0.1),
                               {"x": "tensor", "x_hat": "tensor", "f": "tensor", "l1": "number"}),
    "lm_lenses.train_sae": Spec(lambda c: dict(x=c.acts, n_latents=4, l1=0.1, steps=2, minibatch=8, progress=False),
                                {"x": "tensor", "n_latents": "count", "l1": "number", "steps": "count", "minibatch": "count",
                                 "batch_size": "count"}),
    "lm_lenses.sae_report": Spec(lambda c: dict(sae=_sae(c), x=c.acts), {"x": "tensor", "dense_threshold": "prob"}),
    "lm_lenses.lm_loss": Spec(lambda c: dict(model=c.lm, tokenizer=c.tok, texts=["the cat", "a dog"], layer=1, replace=lambda h: h),
                              {"model": "lm", "texts": "texts", "layer": "lm-layer", "replace": "callable",
                               "max_length": "count", "batch_size": "count"}),
    "lm_lenses.top_contexts": Spec(lambda c: dict(values=torch.tensor([0.1, 0.9, 0.5]), doc=torch.tensor([0, 0, 1]),
                                                  pos=torch.tensor([0, 1, 0]), token_ids=torch.tensor([5, 6, 7]),
                                                  tokenizer=c.tok, texts=["ab", "c"], k=2),
                                   {"values": "tensor", "texts": "texts", "k": "count", "window": "count0"}),
    "lm_lenses.sae_texts": Spec(lambda c: dict(corpus=["a", "b", "c"]), {"corpus": "texts"}),
    # prompts
    "prompts.encode_target": Spec(lambda c: dict(tokenizer=c.tok, target=" the"), {"target": "string"}),
    "prompts.token_embeddings": Spec(lambda c: dict(model=c.lm), {"model": "lm"}),
    "prompts.allowed_tokens": Spec(lambda c: dict(tokenizer=c.tok), {"vocab_size": "count"}),
    "prompts.project_to_tokens": Spec(lambda c: dict(embeds=c.acts[:3, :4], E=c.acts[:, :4]), {"embeds": "tensor", "E": "tensor",
                                                                                             "k": "count"}),
    "prompts.nearest_token_distance": Spec(lambda c: dict(embeds=c.acts[:3, :4], E=c.acts[:, :4]), {"embeds": "tensor", "E": "tensor"}),
    "prompts.target_loss": Spec(lambda c: dict(model=c.lm, prompt_embeds=c.lm.transformer.wte.weight[c.ids].detach(),
                                               target_ids=c.ids[0, :2]),
                                {"model": "lm", "prompt_embeds": "tensor", "target_ids": "ids"}),
    "prompts.score_prompts": Spec(lambda c: dict(model=c.lm, ids=c.ids, target_ids=c.ids[0, :2]),
                                  {"model": "lm", "ids": "ids", "target_ids": "ids", "batch_size": "count"}),
    "prompts.p_target": Spec(lambda c: dict(model=c.lm, tokenizer=c.tok, prompt="the", target=" cat"),
                             {"model": "lm", "prompt": "string", "target": "string"}),
    "prompts.next_token_distribution": Spec(lambda c: dict(model=c.lm, tokenizer=c.tok, prompt="the", k=3),
                                            {"model": "lm", "prompt": "string", "k": "count"}),
    "prompts.greedy_continuation": Spec(lambda c: dict(model=c.lm, tokenizer=c.tok, ids=c.ids, max_new_tokens=2),
                                        {"model": "lm", "ids": "ids", "max_new_tokens": "count"}),
    "prompts.roundtrip_ok": Spec(lambda c: dict(tokenizer=c.tok, ids=c.ids), {"ids": "ids"}),
    "prompts.soft_prompt": Spec(lambda c: dict(model=c.lm, tokenizer=c.tok, target=" the", n_tokens=2, n_restarts=1, steps=1,
                                               eval_every=1, progress=False),
                                {"model": "model", "target": "string", "n_tokens": "count", "n_restarts": "count",
                                 "steps": "count", "lr": "number", "eval_every": "count", "seed": "count0"}),
    "prompts.pez": Spec(lambda c: dict(model=c.lm, tokenizer=c.tok, target=" the", n_tokens=2, n_restarts=1, steps=1, progress=False),
                        {"model": "model", "target": "string", "n_tokens": "count", "n_restarts": "count", "steps": "count",
                         "lr": "number"}),
    "prompts.gcg": Spec(lambda c: dict(model=c.lm, tokenizer=c.tok, target=" the", n_tokens=2, steps=1, search_width=4, topk=4,
                                       progress=False),
                        {"model": "model", "target": "string", "n_tokens": "count", "n_restarts": "count", "steps": "count",
                         "search_width": "count", "topk": "count", "batch_size": "count", "n_replace": "count"}),
    "prompts.sample_candidates": Spec(lambda c: dict(ids=c.ids[0], grad=c.acts[:7, :VOCAB // 8].repeat(1, 8), search_width=4,
                                                     topk=3),
                                      {"ids": "ids", "grad": "tensor", "search_width": "count", "topk": "count",
                                       "n_replace": "count"}),
    "prompts.token_counts": Spec(lambda c: dict(tokenizer=c.tok, results=[_inversion(c)]), {"results": "seq", "threshold": "prob"},
                                 ok={"threshold": {"zero": "threshold 0 counts every prompt"}}),
    # training lens
    "training_lens.repeated_tokens": Spec(lambda c: dict(batch=2, period=3, vocab=10), {"batch": "count", "period": "count",
                                                                                        "vocab": "count"}),
    "training_lens.periodic_tokens": Spec(lambda c: dict(batch=2, seq_len=8, vocab=10, min_period=2, max_period=3,
                                                         generator=torch.Generator().manual_seed(0)),
                                          {"batch": "count", "seq_len": "count", "vocab": "count", "min_period": "count",
                                           "max_period": "count"}),
    "training_lens.induction_score": Spec(lambda c: dict(patterns=c.patterns[:, None], tokens=c.ids[:1]),
                                          {"patterns": "tensor", "tokens": "tokens"}),
    "training_lens.previous_token_score": Spec(lambda c: dict(patterns=c.patterns[:, None]), {"patterns": "tensor"}),
    "training_lens.in_context_loss": Spec(lambda c: dict(model=_attn_only(), tokens=torch.tensor([[1, 2, 3, 1, 2, 3]])),
                                          {"model": "model", "tokens": "ids"}),
    "training_lens.train_induction": Spec(lambda c: dict(config=_train_config(), progress=False), {"seed": "count0"}),
}


def _sae(c: Ctx):
    from course_lib.methods.lm_lenses import SparseAutoencoder

    return SparseAutoencoder(c.acts.shape[1], 4, seed=0).eval()


def _attn_only():
    from course_lib.methods.training_lens import AttnOnlyTransformer

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return AttnOnlyTransformer(8, 8, 1, 2, 8).eval()


def _train_config():
    from course_lib.methods.training_lens import TrainConfig

    return TrainConfig(vocab=8, d_model=8, n_layers=1, n_heads=2, seq_len=8, min_period=2, max_period=3, batch=2, steps=2,
                       checkpoint_every=1, eval_period=3, eval_batch=2)


def _inversion(c: Ctx):
    from course_lib.methods.prompts import pez

    return pez(c.lm, c.tok, " the", n_tokens=2, n_restarts=1, steps=1, progress=False)


EXEMPT: dict[str, str] = {
    "featurevis.default_transforms": "takes no arguments",
    "prompts.blocked_words": "takes no arguments",
    "featurevis.total_variation": "takes one bool flag (isotropic), nothing that can be out of range",
    "featurevis.diversity": "takes only a layer name, checked when the objective is evaluated (render, evaluate: an unknown "
                            "layer is refused there, with the names the model has)",
    "featurevis.scale": "takes a (low, high) pair of zoom factors; the pair is checked by its own test "
                        "(test_transform_constructors_refuse_bad_settings)",
    "featurevis.compose": "takes transformations t(x, g) as *args; a non-callable is refused "
                          "(test_transform_constructors_refuse_bad_settings)",
    "lm_lenses.pretrained_sae": "trains or loads an SAE of a real LM's residual stream (minutes); it passes its arguments to "
                                "capture_activations, train_sae and sae_texts, whose rows are in SPECS",
    "training_lens.load_or_train": "train_induction with a cache; its arguments are train_induction's (row in SPECS)",
}


def test_every_public_function_is_covered_or_exempt():
    missing = sorted(set(FUNCTIONS) - set(SPECS) - set(EXEMPT))
    assert not missing, f"public functions with no row in SPECS and no reason in EXEMPT: {missing}"
    stale = sorted((set(SPECS) | set(EXEMPT)) - set(FUNCTIONS))
    assert not stale, f"rows for functions that no longer exist: {stale}"
    both = sorted(set(SPECS) & set(EXEMPT))
    assert not both, f"in SPECS and EXEMPT at once: {both}"
    for fn, spec in SPECS.items():
        params = inspect.signature(FUNCTIONS[fn]).parameters
        unknown = set(spec.roles) - set(params)
        assert not unknown, f"{fn}: the table names arguments it does not have: {sorted(unknown)}"


# ----------------------------------------------------------------------------- running the table

# (function, argument, kind) still answered badly, each with the reason it is not fixed yet; the test
# of such a case is expected to fail (strict: when it is fixed, remove it here)
KNOWN: dict[tuple[str, str, str], str] = {}

CASES = [(fn, arg, role, kind) for fn, spec in SPECS.items() for arg, role in spec.roles.items()
         for kind in _bad_values(role, torch.zeros(2, 2, 2, 2), None)]
_GOOD: dict[str, object] = {}


def _call(fn: str, kwargs: dict):
    spec = SPECS[fn]
    return spec.call(FUNCTIONS[fn], **kwargs) if spec.call else FUNCTIONS[fn](**kwargs)


def _good(fn: str, c: Ctx):
    if fn not in _GOOD:
        _GOOD[fn] = _call(fn, SPECS[fn].kwargs(c))
    return _GOOD[fn]


def _same(a, b) -> bool:
    """The same answer, up to float32 rounding: tensors, numbers, sequences, dicts and results with ``values``."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and (a.dtype == b.dtype if not a.is_floating_point() else b.is_floating_point()) and \
            torch.allclose(a.detach().double().cpu(), b.detach().double().cpu(), rtol=1e-4, atol=1e-5)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.nn.Module) and isinstance(b, torch.nn.Module):
        return _same(list(a.parameters()), list(b.parameters()))
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
                                           if not f.name.startswith("seconds") and f.name != "build_seconds")
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)
    return a == b


def _in_course_lib(err: BaseException) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and "course_lib" in frames[-1].filename.replace("\\", "/").split("/")


def _case_id(fn, arg, kind):
    return f"{fn}-{arg}-{kind}"


@pytest.mark.parametrize("fn", sorted(SPECS))
def test_good_call_works(fn, ctx):
    _good(fn, ctx)


@pytest.mark.parametrize("fn,arg,role,kind", [
    pytest.param(*case, marks=pytest.mark.xfail(strict=True, reason=KNOWN[(case[0], case[1], case[3])]))
    if (case[0], case[1], case[3]) in KNOWN else case for case in CASES], ids=[_case_id(f, a, k) for f, a, _, k in CASES])
def test_bad_input_gets_a_clear_error_or_the_right_answer(fn, arg, role, kind, ctx):
    spec = SPECS[fn]
    kwargs = spec.kwargs(ctx)
    good = _good(fn, ctx)
    model = None
    if role == "model" and kind == "train-mode":
        model = kwargs[arg]
        model.train()
    elif role == "model":
        kwargs[arg] = copy.deepcopy(kwargs[arg]).to("meta")
    else:
        kwargs[arg] = _bad_values(role, kwargs.get(arg), ctx)[kind]
    clear = (ValueError, TypeError, KeyError) if role == "name" else (ValueError, TypeError)  # hooks: KeyError for a module name
    try:
        got = _call(fn, kwargs)
    except clear as err:
        msg = str(err)
        words = [arg] + (["no_such_layer", "no_such_option"] if role in ("name", "option") else [])
        assert any(w in msg for w in words), f"{fn}({arg}={kind}): the message names neither of {words}: {msg}"
        assert _in_course_lib(err), (
            f"{fn}({arg}={kind}): raised deep inside {traceback.extract_tb(err.__traceback__)[-1].filename}, "
            f"not by course_lib's own check: {type(err).__name__}: {msg}")
    except Exception as err:  # noqa: BLE001 (what a student would see instead of a clear message)
        frame = traceback.extract_tb(err.__traceback__)[-1]
        pytest.fail(f"{fn}({arg}={kind}): crashed with {type(err).__name__} in {frame.filename}:{frame.lineno}: {err}")
    else:
        if kind in RIGHT:  # the same answer as the good call's (a float64 image: the float32 answer, up to rounding)
            assert _same(got, good), f"{fn}({arg}={kind}): returned a different answer than the good call's"
        else:
            assert kind in spec.ok.get(arg, {}), f"{fn}({arg}={kind}): returned without a word (a silent wrong answer): {str(got)[:200]}"
    finally:
        if model is not None:
            model.eval()


# ----------------------------------------------------------------------------- the named silent wrong results


def test_named_silent_wrong_results_are_refused():
    from course_lib.methods.concepts import tcav_significance
    from course_lib.methods.featurevis import class_logit
    from course_lib.methods.lime import lime
    from course_lib.methods.prototypes import spearman

    with pytest.raises(ValueError, match="c"):
        class_logit(-1)
    with pytest.raises(ValueError, match="NaN"):
        spearman(torch.tensor([1.0, float("nan"), 3.0]), torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="concept_scores"):
        tcav_significance([0.5, float("nan"), 0.7], [0.4, 0.5, 0.6])
    game = function_game(lambda m: m @ torch.tensor([3.0, -1.0, 0.5]), 3)
    with pytest.raises(ValueError, match="at least 4"):
        lime(game, 1)
    assert lime(game, 4).values.shape == (3,)  # the minimum itself is accepted


def test_transform_constructors_refuse_bad_settings():
    """scale and compose are EXEMPT from the table (a pair, *args); their settings are refused here, when given."""
    from course_lib.methods.featurevis import compose, jitter, pad, scale

    for bad in [(0.0, 1.1), (1.2, 0.9), (0.9,), "0.9, 1.1", (float("nan"), 1.0)]:
        with pytest.raises((ValueError, TypeError), match="factors"):
            scale(bad)
    with pytest.raises(TypeError, match="transformation 1"):
        compose(pad(2), "jitter")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8)
    assert compose(pad(2), jitter(2))(x, g).shape == (2, 3, 10, 10)  # good settings still work
    assert scale((1.0, 1.0))(x, g).shape == x.shape


# ============================================================================= promises for good inputs, every function
# The same table's good calls, for the promises of CONTRIBUTING ("One API across methods"): the answer
# comes back on the input's device, the same seed gives the same answer without touching the global
# random generator, batch_size only chunks, and a float64 model takes float32 inputs.

def _params(fn: str) -> set[str]:
    return set(inspect.signature(FUNCTIONS[fn]).parameters)


def _tensors(out) -> list[torch.Tensor]:
    """The tensors of an answer (a tensor, a tuple, a dict, a result dataclass)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    values = getattr(out, "values", None)
    return [values] if isinstance(values, torch.Tensor) else []


SEEDED = sorted(f for f in SPECS if "seed" in _params(f))
# seeded functions whose answer on the table's tiny inputs visibly depends on the seed (the others draw, but e.g.
# compute_cav keeps no held-out split for 12 rows, and L-BFGS finds the same probe from any start)
RANDOM = {"attribution.smoothgrad", "attribution.randomize_layers", "attribution.cascading_randomization", "adversarial.pgd",
          "lime.lime", "lime.sample_masks", "shapley.kernel_shap", "shapley.permutation_shapley", "featurevis.render",
          "prototypes.prototypes", "lm_lenses.split_indices", "lm_lenses.control_labels", "lm_lenses.train_sae",
          "training_lens.repeated_tokens", "training_lens.train_induction"}
CHUNKED = sorted(f for f in SPECS if "batch_size" in _params(f) and f not in {"lm_lenses.train_sae"})
# train_sae's batch_size is the older name of its SGD minibatch, kept for old notebooks: it changes the answer by design


def _model_of(answer):
    return answer if isinstance(answer, torch.nn.Module) else answer[0][1] if isinstance(answer, list) else None


@pytest.mark.parametrize("fn", SEEDED)
def test_same_seed_same_answer_and_the_global_generator_untouched(fn, ctx):
    kwargs = SPECS[fn].kwargs(ctx)
    before = torch.random.get_rng_state()
    a = _call(fn, {**kwargs, "seed": 0})
    assert torch.equal(torch.random.get_rng_state(), before), f"{fn} drew from (or seeded) torch's global generator"
    b = _call(fn, {**kwargs, "seed": 0})
    if _model_of(a) is not None:  # randomize_layers, cascading_randomization: compare the weights
        a, b = [p for p in _model_of(a).parameters()], [p for p in _model_of(b).parameters()]
    assert _same(a, b), f"{fn}: the same seed gave another answer"
    if fn in RANDOM:
        c = _call(fn, {**kwargs, "seed": 1})
        c = [p for p in _model_of(c).parameters()] if _model_of(c) is not None else c
        assert not _same(a, c), f"{fn}: seed 1 gave the very answer of seed 0"


@pytest.mark.parametrize("fn", CHUNKED)
def test_batch_size_only_chunks(fn, ctx):
    kwargs = SPECS[fn].kwargs(ctx)
    one, default = _call(fn, {**kwargs, "batch_size": 1}), _good(fn, ctx)
    assert _same(one, default), f"{fn}: batch_size=1 changed the answer"


@pytest.mark.parametrize("fn", sorted(f for f in SPECS if "image" in (SPECS[f].roles.get("x"), SPECS[f].roles.get("images"))))
def test_answer_on_the_input_device(fn, ctx):
    """On this machine the input is on the CPU; with the model on another device (a GPU, where there is one)
    the answer must still come back on the input's device."""
    kwargs = SPECS[fn].kwargs(ctx)
    name = "x" if SPECS[fn].roles.get("x") == "image" else "images"
    dev = kwargs[name].device
    for t in _tensors(_good(fn, ctx)):
        assert t.device == dev, f"{fn}: the answer is on {t.device}, the input on {dev}"
    if torch.cuda.is_available() and "model" in kwargs and kwargs["model"] is ctx.model:
        got = _call(fn, {**kwargs, "model": copy.deepcopy(ctx.model).cuda()})
        for t in _tensors(got):
            assert t.device == dev, f"{fn}: with the model on cuda the answer is on {t.device}, the input on {dev}"


# methods whose answer is a sign or an argmax of gradients: float64 rounding may flip it where the gradient is ~0
_SIGN = {"adversarial.fgsm", "adversarial.pgd", "adversarial.accuracy_under_attack", "featurevis.render", "prototypes.prototypes"}


@pytest.mark.parametrize("fn", sorted(f for f, s in SPECS.items() if s.roles.get("model") == "model"
                                      and not f.startswith(("prompts.", "training_lens."))))  # the CNN's functions
def test_float64_model_takes_float32_input(fn, ctx):
    kwargs = SPECS[fn].kwargs(ctx)
    assert kwargs["model"] is ctx.model
    got = _call(fn, {**kwargs, "model": copy.deepcopy(ctx.model).double()})
    good = _good(fn, ctx)
    if fn in _SIGN:
        assert len(_tensors(got)) == len(_tensors(good))
        for a, b in zip(_tensors(got), _tensors(good)):
            assert a.shape == b.shape and torch.isfinite(a.double()).all()
    else:
        for a, b in zip(_tensors(got), _tensors(good)):
            assert a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=1e-3, atol=1e-4), \
                f"{fn}: a float64 model gave another answer (max diff {float((a.double() - b.double()).abs().max()):.3g})"


def test_old_names_of_counts_still_give_the_same_answer(ctx):
    """One name per count (CONTRIBUTING, house style 7): integrated_gradients' steps (captum's n_steps) and
    train_sae's minibatch (it was batch_size, which now means chunking only); the old keywords still work."""
    from course_lib.methods.attribution import integrated_gradients
    from course_lib.methods.lm_lenses import train_sae

    assert torch.equal(integrated_gradients(ctx.model, ctx.x, 1, steps=4), integrated_gradients(ctx.model, ctx.x, 1, n_steps=4))
    with pytest.raises(ValueError, match="not both"):
        integrated_gradients(ctx.model, ctx.x, 1, steps=4, n_steps=8)
    new = train_sae(ctx.acts, n_latents=4, l1=0.1, steps=3, minibatch=5, progress=False)
    old = train_sae(ctx.acts, n_latents=4, l1=0.1, steps=3, batch_size=5, progress=False)
    assert new[1] == old[1] and _same(new[0], old[0])
