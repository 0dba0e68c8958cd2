"""TCAV and data attribution (course_lib.methods.concepts): planted toys, brute force, captum, sklearn."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.methods import concepts as C


class Planted(nn.Module):
    """Layer ``enc`` = the flattened pixels h (48,). logit 0 = 5 u.h + 2 |h - 0.5|^2 rises along the
    planted concept direction u for every image; logit 1 = |h - 0.5|^2 has no preferred direction."""

    def __init__(self, u: torch.Tensor):
        super().__init__()
        self.enc = nn.Flatten()
        self.register_buffer("u", u)

    def forward(self, x):
        h = self.enc(x)  # (B, 48)
        c = ((h - 0.5) ** 2).sum(1)
        return torch.stack([5 * h @ self.u + 2 * c, c], 1)


def planted(seed: int, n: int = 40, n_sets: int = 8):
    g = torch.Generator().manual_seed(seed)
    u = torch.zeros(48)
    u[:8] = 1
    u = u / u.norm()

    def imgs(shift=0.0):  # (n, 3, 4, 4) in [0, 1]
        return (0.5 + 0.1 * torch.randn(n, 3, 4, 4, generator=g) + shift * u.view(3, 4, 4)).clamp(0, 1)

    return Planted(u).eval(), imgs(), imgs(0.6), [imgs() for _ in range(n_sets)], imgs()


def test_tcav_recovers_a_planted_concept_and_not_a_random_one():
    sig_random, random_scores = 0, []
    for seed in range(6):
        model, x, concept, randoms, not_a_concept = planted(seed)
        r = C.tcav(model, x, concept, randoms, 0, layer="enc", seed=seed, progress=False)
        assert float(r.values[0]) >= 0.95 and bool(r.significant[0]), str(r)
        assert float(r.cav_accuracy.min()) >= 0.9
        q = C.tcav(model, x, not_a_concept, randoms, 0, layer="enc", seed=seed, progress=False)
        sig_random += bool(q.significant[0])
        random_scores.append(float(q.values[0]))
    # a random "concept" is significant only by chance (measured: 4 of 30 seeds at alpha = 0.05; 0 of these 6)
    assert sig_random <= 1, sig_random
    assert np.mean(random_scores) < 0.8, random_scores


def test_cavs_are_seeded_reproducible_and_match_sklearn():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 500, generator=g) + 0.3
    b = torch.randn(30, 500, generator=g)
    c1, c2, c3 = C.compute_cav(a, b, seed=1), C.compute_cav(a, b, seed=1), C.compute_cav(a, b, seed=2)
    assert torch.equal(c1.direction, c2.direction) and c1.accuracy == c2.accuracy
    assert not torch.equal(c1.direction, c3.direction)  # another held-out split, another fit
    assert abs(float(c1.direction.norm()) - 1) < 1e-5
    assert float((a @ c1.direction).mean()) > float((b @ c1.direction).mean())  # points towards the concept
    full = C.compute_cav(a, b, holdout=0.0)
    lr = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(
        torch.cat([a, b]).double().numpy(), np.r_[np.ones(30), np.zeros(30)]
    )
    w = torch.from_numpy(lr.coef_[0]).float()
    assert torch.nn.functional.cosine_similarity(full.direction, w, dim=0) > 0.9999


def _brute_force_derivatives(model, x, layer, V, target):
    """One image, one target at a time: d logit / d activations by a plain hook, dotted with each CAV."""
    out = torch.empty(x.shape[0], V.shape[0])
    for i in range(x.shape[0]):
        store = {}

        def hook(_m, _i, o):
            o = o.detach().clone().requires_grad_(True)
            store["a"] = o
            return o + 0

        h = dict(model.named_modules())[layer].register_forward_hook(hook)
        try:
            logit = model(x[i : i + 1])[0, target]
            (grad,) = torch.autograd.grad(logit, store["a"])
        finally:
            h.remove()
        out[i] = V @ grad.flatten()
    return out


def test_directional_derivatives_equal_brute_force_for_any_batch_size(scenes_cnn, scenes_test):
    x = scenes_test.images[:6]
    D = C.layer_activations(scenes_cnn, x[:1], "conv3").shape[1]
    V = torch.nn.functional.normalize(torch.randn(3, D, generator=torch.Generator().manual_seed(0)), dim=1)
    S = C.directional_derivatives(scenes_cnn, x, V, [0, 4], layer="conv3", batch_size=4)  # (2, 6, 3)
    assert S.shape == (2, 6, 3)
    for j, t in enumerate([0, 4]):
        ref = _brute_force_derivatives(scenes_cnn, x, "conv3", V, t)
        torch.testing.assert_close(S[j], ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        C.directional_derivatives(scenes_cnn, x, V, 4, layer="conv3", batch_size=1), S[1], rtol=1e-5, atol=1e-7
    )
    scores = C.tcav_scores(scenes_cnn, x, V, [0, 4], layer="conv3")
    torch.testing.assert_close(scores, (S > 0).float().mean(1))


def test_tcav_scores_equal_captum_tcav_with_the_same_cavs(tmp_path):
    from captum.concept import TCAV, Classifier, Concept

    model, x, concept, randoms, _ = planted(0, n_sets=2)

    class OurCAV(Classifier):  # captum's pipeline, our CAV: the scores must agree exactly
        def __init__(self):
            self.w, self.ids = None, None

        def train_and_eval(self, dataloader, **kwargs):
            xs, ys = zip(*dataloader)
            X, y = torch.cat(xs), torch.cat(ys)
            self.ids = sorted(set(y.tolist()))
            self.w = C.compute_cav(X[y == self.ids[0]], X[y == self.ids[1]], holdout=0.0).direction
            return {}

        def weights(self):
            return torch.stack([self.w, -self.w])

        def classes(self):
            return self.ids

    def loader(imgs):
        return iter(torch.utils.data.DataLoader(imgs, batch_size=16))

    c = Concept(0, "planted", loader(concept))
    r0, r1 = Concept(1, "random_0", loader(randoms[0])), Concept(2, "random_1", loader(randoms[1]))
    tc = TCAV(model, ["enc"], classifier=OurCAV(), save_path=str(tmp_path))
    out = tc.interpret(x, [[c, r0], [r1, r0]], target=0)
    acts = [C.layer_activations(model, a, "enc") for a in (concept, randoms[0], randoms[1])]
    cavs = [
        C.compute_cav(acts[0], acts[1], holdout=0.0),
        C.compute_cav(acts[2], acts[1], holdout=0.0),
    ]  # no held-out split: symmetric
    ours = C.tcav_scores(model, x, cavs, 0, layer="enc")
    theirs = torch.stack([out["0-1"]["enc"]["sign_count"][0], out["2-1"]["enc"]["sign_count"][0]])
    torch.testing.assert_close(ours, theirs)


def test_data_attribution_ranks_planted_duplicates_first(scenes_cnn, scenes_test):
    from course_lib.zoo.scenes import make_scenes

    train = make_scenes(60, split="train", seed=3).images
    x_test = scenes_test.images[:2]
    train = torch.cat([train[:17], x_test[1:2], train[17:40], x_test[0:1], train[40:]])  # duplicates at 17 and 41
    r = C.data_attribution(scenes_cnn, x_test, train)
    assert r.values.shape == (62, 2)
    assert r.top(1, output=0).tolist() == [41] and r.top(1, output=1).tolist() == [17]
    assert "train 41" in str(r) and "tensor(62, 2)" in repr(r)
    one = C.data_attribution(scenes_cnn, x_test[0], train)
    torch.testing.assert_close(one.values, r.values[:, 0])
    rep = C.data_attribution(scenes_cnn, x_test, train, torch.zeros(62, dtype=torch.long), method="representer", target=0)
    assert rep.values.shape == (62, 2) and torch.isfinite(rep.values).all()


def test_concept_sets_are_seeded_and_show_their_concept():
    from course_lib.zoo.scenes import CUE_SIZE, cue_slot

    cue = C.concept_images("cue", 6, cue_class=3, seed=1)
    assert torch.equal(cue, C.concept_images("cue", 6, cue_class=3, seed=1))
    r0, c0 = cue_slot(3)
    patch = cue[:, :, r0 : r0 + CUE_SIZE, c0 : c0 + CUE_SIZE]
    assert torch.allclose(patch, torch.tensor([1.0, 0.0, 1.0])[:, None, None].expand_as(patch))
    red = C.concept_images("colour", 4, colour="red")
    assert red.shape == (4, 3, 64, 64) and 0 <= float(red.min()) and float(red.max()) <= 1
    rs = C.random_sets(3, 4, seed=0)
    assert len(rs) == 3 and not torch.equal(rs[0], rs[1])
    assert not torch.equal(C.concept_images("shape", 4), C.concept_images("random", 4))


def test_inputs_are_checked(scenes_cnn, scenes_test):
    x = scenes_test.images[:4]
    model, px, concept, randoms, _ = planted(0, n_sets=2)
    model.train()
    with pytest.raises(ValueError, match="eval"):
        C.tcav(model, px, concept, randoms, 0, layer="enc", progress=False)
    model.eval()
    with pytest.raises(ValueError, match="at least 2 random sets"):
        C.tcav(model, px, concept, randoms[:1], 0, layer="enc", progress=False)
    with pytest.raises(ValueError, match="same layer"):
        C.compute_cav(torch.randn(5, 10), torch.randn(5, 11))
    with pytest.raises(ValueError, match="same layer"):
        C.directional_derivatives(scenes_cnn, x, torch.randn(2, 7), 0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        C.directional_derivatives(scenes_cnn, x[0], torch.randn(2, 7), 0)
    with pytest.raises(ValueError, match="out of range"):
        C.tcav_scores(scenes_cnn, x, torch.randn(2, 24576), 10)
    with pytest.raises(KeyError, match="no module"):
        C.layer_activations(scenes_cnn, x, "conv9")
    with pytest.raises(ValueError, match="kind"):
        C.concept_images("texture", 3)
