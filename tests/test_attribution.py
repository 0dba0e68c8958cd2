"""Attribution maps against closed forms, captum used directly, and their defining properties;
the ground-truth metrics on hand-made cases and on scenes."""
import math

import pytest
import torch
from torch import nn

from course_lib import metrics as M
from course_lib.games import function_game, grid_segments, image_game, segment_map
from course_lib.methods import attribution as A
from course_lib.methods.attribution import grad_cam, integrated_gradients, saliency


def _linear():
    torch.manual_seed(0)
    model = nn.Linear(6, 3).eval()
    model.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------- gradients: closed forms


def test_saliency_of_a_linear_model_is_its_weights():
    model = _linear()
    x = torch.randn(4, 6)
    out = saliency(model, x, target=2)
    torch.testing.assert_close(out, model.weight[2].abs().expand(4, -1))


def test_input_x_gradient_of_a_linear_model():
    model = _linear()
    x = torch.randn(4, 6)
    torch.testing.assert_close(A.input_x_gradient(model, x, target=[0, 1, 2, 0]), x * model.weight[[0, 1, 2, 0]])


def test_smoothgrad_of_a_linear_model_is_its_weights_for_any_noise():
    model = _linear()
    x = torch.randn(3, 6)
    torch.testing.assert_close(A.smoothgrad(model, x, 1, noise=0.5, n_samples=5), model.weight[1].abs().expand(3, -1))


def test_smoothgrad_with_zero_noise_is_saliency(scenes_cnn, scenes_test):
    x, y = scenes_test.images[:3], scenes_test.labels[:3]
    torch.testing.assert_close(
        A.smoothgrad(scenes_cnn, x, y, noise=0.0, n_samples=3), saliency(scenes_cnn, x, y), atol=1e-6, rtol=1e-5
    )


def test_smoothgrad_is_captum_noise_tunnel_and_deterministic(scenes_cnn, scenes_test):
    from captum.attr import NoiseTunnel, Saliency

    x, y = scenes_test.images[:2], scenes_test.labels[:2]
    ours = A.smoothgrad(scenes_cnn, x, y, noise=0.1, n_samples=4, seed=5, absolute=False)
    torch.testing.assert_close(ours, A.smoothgrad(scenes_cnn, x, y, noise=0.1, n_samples=4, seed=5, absolute=False))
    torch.manual_seed(5)
    ref = NoiseTunnel(Saliency(scenes_cnn)).attribute(
        x.clone().requires_grad_(True), nt_type="smoothgrad", nt_samples=4, stdevs=0.1, target=y, abs=False
    )
    torch.testing.assert_close(ours, ref.detach(), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(ours, A.smoothgrad(scenes_cnn, x, y, noise=0.1, n_samples=4, seed=6, absolute=False))
    chunked = A.smoothgrad(scenes_cnn, x, y, noise=0.1, n_samples=4, seed=5, absolute=False, batch_size=3)
    torch.testing.assert_close(chunked, ours, atol=1e-6, rtol=1e-5)  # the batch size only chunks


def test_integrated_gradients_of_a_linear_model_is_exact():
    model = _linear()
    x, b = torch.randn(5, 6), torch.randn(6)
    attr, delta = integrated_gradients(model, x, target=1, baseline=b, return_delta=True)
    torch.testing.assert_close(attr, (x - b) * model.weight[1], atol=1e-5, rtol=1e-5)
    assert delta.abs().max() < 1e-4


@pytest.mark.parametrize("baseline", [0.5, "blur"])
def test_integrated_gradients_completeness_on_the_cnn(scenes_cnn, scenes_test, baseline):
    """Completeness (Sundararajan et al., 2017): sum of attributions = f(x) - f(baseline), here to
    5 % of the largest gap with 128 Gauss-Legendre steps."""
    x = scenes_test.images[:2]
    target = scenes_test.labels[:2]
    attr = integrated_gradients(scenes_cnn, x, target=target, baseline=baseline, n_steps=128)
    base = A.blurred(x) if baseline == "blur" else torch.full_like(x, baseline)
    with torch.no_grad():
        gap = scenes_cnn(x).gather(1, target[:, None])[:, 0] - scenes_cnn(base).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(attr.sum((1, 2, 3)), gap, atol=0.05 * gap.abs().max().item(), rtol=0.0)


# ----------------------------------------------------------------------------- CAM and Grad-CAM


def test_grad_cam_equals_class_activation_mapping_for_a_gap_network(scenes_cnn, scenes_test):
    """With global average pooling and a linear head, d y_c / d A_k(i, j) = w_ck / (h w), so
    Grad-CAM = ReLU(sum_k w_ck A_k) / (h w): the CAM of Zhou et al. (2016)."""
    from course_lib.hooks import capture

    x = scenes_test.images[:3]
    target = 4
    with capture(scenes_cnn, "features") as acts:
        scenes_cnn(x)
    A_ = acts["features"]  # (B, K, h, w)
    cam = torch.einsum("k,bkhw->bhw", scenes_cnn.fc.weight[target], A_).relu() / (A_.shape[2] * A_.shape[3])
    torch.testing.assert_close(grad_cam(scenes_cnn, x, target, upsample=False), cam, atol=1e-5, rtol=1e-4)
    assert grad_cam(scenes_cnn, x, target).shape == (3, 64, 64)


def test_cam_is_grad_cam_before_the_relu_and_adds_up_to_the_logit(scenes_cnn, scenes_test):
    x, y = scenes_test.images[:4], scenes_test.labels[:4]
    c = A.cam(scenes_cnn, x, y, upsample=False)  # (4, 8, 8)
    torch.testing.assert_close(A.grad_cam(scenes_cnn, x, y, upsample=False), c.relu() / 64, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        logits = scenes_cnn(x).gather(1, y[:, None])[:, 0]
    torch.testing.assert_close(c.mean((1, 2)) + scenes_cnn.fc.bias[y], logits, atol=1e-4, rtol=1e-4)
    assert A.cam(scenes_cnn, x, y).shape == (4, 64, 64)


def test_cam_refuses_a_network_without_global_average_pooling():
    class MaxPooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.features(x).amax((2, 3)))

    torch.manual_seed(0)
    with pytest.raises(ValueError, match="global average pooling"):
        A.cam(MaxPooled().eval(), torch.rand(2, 3, 8, 8), 0)


# ----------------------------------------------------------------------------- occlusion = leave-one-out of a game


@pytest.mark.parametrize("patch,stride,baseline", [(8, 8, 0.0), (16, 8, 0.5), (6, 4, 0.3), (10, 7, 0.0)])
def test_occlusion_equals_captum(scenes_cnn, scenes_test, patch, stride, baseline):
    from captum.attr import Occlusion

    x, y = scenes_test.images[:2], scenes_test.labels[:2]
    ours = A.occlusion(scenes_cnn, x, y, patch=patch, stride=stride, baseline=baseline)
    ref = Occlusion(scenes_cnn).attribute(
        x,
        sliding_window_shapes=(3, patch, patch),
        strides=(3, stride, stride),
        baselines=baseline,
        target=y,
        perturbations_per_eval=64,
    )
    torch.testing.assert_close(ours, ref[:, 0], atol=1e-4, rtol=1e-4)


def test_occlusion_is_the_leave_one_out_value_of_the_patch_game(scenes_cnn, scenes_test):
    x, t = scenes_test.images[5], 3
    seg = grid_segments(64, 64, 16)
    game = image_game(scenes_cnn, x, seg, baseline=0.2, target=t)
    masks = torch.ones(17, 16, dtype=torch.bool)
    masks[torch.arange(1, 17), torch.arange(16)] = False
    with torch.no_grad():
        v = game(masks)
    loo = segment_map(v[0] - v[1:], seg)
    torch.testing.assert_close(A.occlusion(scenes_cnn, x[None], t, patch=16, baseline=0.2)[0], loo, atol=1e-5, rtol=1e-5)
    res = A.leave_one_out(game)
    assert res.budget == 17 and res.method == "leave-one-out" and "leave-one-out, budget 17" in str(res)
    assert "tensor(" in repr(res) and len(repr(res)) < 300, "big tensors stay out of the repr"


@pytest.mark.parametrize("patch,stride,baseline", [(8, 8, 0.0), (16, 8, 0.3), (16, 12, "mean")])
def test_occlusion_of_several_images_does_not_depend_on_the_batch_size_and_equals_one_image_at_a_time(
    scenes_cnn, scenes_test, patch, stride, baseline
):
    """All images' (image, window) pairs share one stream of model calls; chunking it differently,
    or running each image alone, must not change a single value."""
    x, y = scenes_test.images[:3], scenes_test.labels[:3]
    ref = A.occlusion(scenes_cnn, x, y, patch=patch, stride=stride, baseline=baseline)
    for bs in (7, 10_000):  # chunks that split images, and one chunk for everything
        torch.testing.assert_close(
            A.occlusion(scenes_cnn, x, y, patch=patch, stride=stride, baseline=baseline, batch_size=bs), ref, atol=1e-5, rtol=1e-5
        )
    one_by_one = torch.cat(
        [A.occlusion(scenes_cnn, x[i : i + 1], y[i : i + 1], patch=patch, stride=stride, baseline=baseline) for i in range(3)]
    )
    torch.testing.assert_close(ref, one_by_one, atol=1e-5, rtol=1e-5)


def test_occlusion_with_the_mean_baseline_is_leave_one_out_of_the_mean_image_game(scenes_cnn, scenes_test):
    x, y = scenes_test.images[:2], scenes_test.labels[:2]
    seg = grid_segments(64, 64, 16)
    for b in range(2):
        game = image_game(scenes_cnn, x[b], seg, baseline="mean", target=int(y[b]))
        loo = segment_map(A.leave_one_out(game).values, seg)
        torch.testing.assert_close(A.occlusion(scenes_cnn, x, y, patch=16, baseline="mean")[b], loo, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("patch,stride,bs", [(8, 8, 32), (8, 8, 100), (16, 8, 32)])
def test_occlusion_sends_all_images_through_one_stream_of_forward_passes(scenes_cnn, scenes_test, patch, stride, bs):
    """B images with P windows cost ceil(B (P + 1) / batch) forward passes (plus one to read the
    number of classes), not B ceil((P + 1) / batch): on a GPU one pass covers many images."""
    B = 5
    x, y = scenes_test.images[:B], scenes_test.labels[:B]
    n_win = ((64 - patch) // stride + 1) ** 2  # 64 / 8: 64 windows; 16 / 8: 49
    sizes = []
    handle = scenes_cnn.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    try:
        A.occlusion(scenes_cnn, x, y, patch=patch, stride=stride, batch_size=bs)
    finally:
        handle.remove()
    assert sizes[0] == 1  # the target check
    assert sum(sizes[1:]) == B * (n_win + 1), sizes
    assert len(sizes) - 1 == math.ceil(B * (n_win + 1) / bs), (len(sizes) - 1, sizes)
    assert all(s == bs for s in sizes[1:-1]), "every chunk but the last is full"


def test_leave_one_out_of_a_closed_form_game():
    # v(S) = 3 [0 in S] + 2 [0 in S and 1 in S] + [2 in S]: leave-one-out gives 5, 2, 1 (not Shapley's 4, 1, 1)
    game = function_game(lambda m: 3 * m[:, 0] + 2 * m[:, 0] * m[:, 1] + m[:, 2], 3)
    res = A.leave_one_out(game)
    torch.testing.assert_close(res.values, torch.tensor([5.0, 2.0, 1.0]))
    assert float(res.v_full) == 6.0
    part = A.leave_one_out(game, players=[1])
    torch.testing.assert_close(part.values, torch.tensor([0.0, 2.0, 0.0]))
    assert part.budget == 2


# ----------------------------------------------------------------------------- sanity checks


def test_cascading_randomization_leaves_the_original_model_unchanged(scenes_cnn):
    before = {k: v.clone() for k, v in scenes_cnn.state_dict().items()}
    copies = A.cascading_randomization(scenes_cnn, seed=1)
    assert [n for n, _ in copies] == ["fc", "features", "conv3", "conv2", "conv1"]
    for k, v in scenes_cnn.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} of the original changed"
    assert not scenes_cnn.training
    # the k-th copy has the top k+1 blocks randomised and the rest untouched; same random weights in every copy
    for k, (name, m) in enumerate(copies):
        assert not m.training
        for j, (other, _) in enumerate(copies):
            same = torch.equal(
                m.get_submodule(other).weight if other == "fc" else m.get_submodule(other)[0].weight,
                scenes_cnn.get_submodule(other).weight if other == "fc" else scenes_cnn.get_submodule(other)[0].weight,
            )
            assert same == (j > k), (name, other)
    torch.testing.assert_close(copies[0][1].fc.weight, copies[-1][1].fc.weight)
    again = A.randomize_layers(scenes_cnn, "fc", seed=1)
    torch.testing.assert_close(again.fc.weight, copies[0][1].fc.weight)


def test_randomising_the_head_changes_grad_cam(scenes_cnn, scenes_test):
    """Grad-CAM passes the model-randomisation test of Adebayo et al. (2018) at the top layer."""
    x, y = scenes_test.images[:4], scenes_test.labels[:4]
    rnd = A.randomize_layers(scenes_cnn, "fc", seed=0)
    gc = [M.spearman(a, b) for a, b in zip(A.grad_cam(scenes_cnn, x, y), A.grad_cam(rnd, x, y))]
    assert all(not (r > 0.9) for r in gc), gc


# ----------------------------------------------------------------------------- refusals


def _everything(model, x, target):
    return {
        "saliency": lambda: A.saliency(model, x, target),
        "input_x_gradient": lambda: A.input_x_gradient(model, x, target),
        "smoothgrad": lambda: A.smoothgrad(model, x, target, n_samples=2),
        "integrated_gradients": lambda: A.integrated_gradients(model, x, target, n_steps=2),
        "cam": lambda: A.cam(model, x, target),
        "grad_cam": lambda: A.grad_cam(model, x, target),
        "occlusion": lambda: A.occlusion(model, x, target, patch=32),
    }


def test_every_method_refuses_non_finite_inputs(scenes_cnn, scenes_test):
    for bad in (float("nan"), float("inf")):
        x = scenes_test.images[:2].clone()
        x[1, 0, 3, 3] = bad
        for _name, call in _everything(scenes_cnn, x, 0).items():
            with pytest.raises(ValueError, match="NaN or infinite"):
                call()
    with pytest.raises(ValueError, match="baseline"):
        A.integrated_gradients(scenes_cnn, scenes_test.images[:1], 0, baseline=float("nan"))


@pytest.mark.parametrize("target", [10, -1, [0, 12]])
def test_every_method_names_the_valid_target_range(scenes_cnn, scenes_test, target):
    x = scenes_test.images[:2]
    for _name, call in _everything(scenes_cnn, x, target).items():
        with pytest.raises(ValueError, match=r"0\.\.9"):
            call()


def test_attributions_refuse_a_model_in_train_mode(scenes_cnn, scenes_test):
    scenes_cnn.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            saliency(scenes_cnn, scenes_test.images[:1], 0)
    finally:
        scenes_cnn.eval()


# ----------------------------------------------------------------------------- ground-truth metrics


def test_pixel_precision_and_pointing_game_hand_cases():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True  # 4 object pixels, top left
    heat = torch.zeros(1, 4, 4)
    heat[0, 0, 0], heat[0, 0, 1], heat[0, 3, 3] = 3.0, 2.0, 2.5
    torch.testing.assert_close(M.pixel_precision_at_k(heat, mask, 2), torch.tensor([0.5]))  # (0,0) in, (3,3) out
    torch.testing.assert_close(M.pixel_precision_at_k(heat, mask, 1), torch.tensor([1.0]))
    assert M.pointing_game(heat, mask).tolist() == [True]
    heat[0, 3, 3] = 9.0
    assert M.pointing_game(heat, mask).tolist() == [False]
    assert M.pointing_game(heat, mask, tolerance=1).tolist() == [False]
    assert M.pointing_game(heat, mask, tolerance=2).tolist() == [True]
    with pytest.raises(ValueError):
        M.pixel_precision_at_k(heat, mask, 0)


def test_spearman_against_scipy():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a = torch.rand(8, 8, generator=g)
    b = (a + 0.3 * torch.rand(8, 8, generator=g)).relu().round(decimals=1)  # ties
    assert M.spearman(a, b) == pytest.approx(spearmanr(a.flatten(), b.flatten()).statistic)
    assert M.spearman(a, a) == pytest.approx(1.0)
    assert math.isnan(M.spearman(a, torch.zeros(8, 8)))


def test_deletion_and_insertion_prefer_the_object_mask_to_a_random_map(scenes_cnn, scenes_test):
    x, y, mask = scenes_test.images[:8], scenes_test.labels[:8], scenes_test.masks[:8]
    g = torch.Generator().manual_seed(0)
    oracle = mask.float() + 1e-3 * torch.rand(mask.shape, generator=g)
    random = torch.rand(mask.shape, generator=g)
    d_o, d_r = M.deletion_curve(scenes_cnn, x, oracle, y, steps=8), M.deletion_curve(scenes_cnn, x, random, y, steps=8)
    i_o, i_r = M.insertion_curve(scenes_cnn, x, oracle, y, steps=8), M.insertion_curve(scenes_cnn, x, random, y, steps=8)
    assert d_o.area.mean() < d_r.area.mean() - 0.1, (d_o.area.mean(), d_r.area.mean())
    assert i_o.area.mean() > i_r.area.mean() + 0.05, (i_o.area.mean(), i_r.area.mean())
    with torch.no_grad():
        p = scenes_cnn(x).softmax(1).gather(1, y[:, None])[:, 0]
    torch.testing.assert_close(d_o.scores[:, 0], p, atol=1e-5, rtol=1e-5)  # nothing removed yet
    torch.testing.assert_close(i_o.scores[:, -1], p, atol=1e-5, rtol=1e-5)  # everything back
    assert d_o.budget == 8 * 9 and d_o.fraction[-1] == 1.0


def test_curves_take_steps_and_the_older_n_steps(scenes_cnn, scenes_test):
    x, y = scenes_test.images[:2], scenes_test.labels[:2]
    heat = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(0))
    a = M.deletion_curve(scenes_cnn, x, heat, y, steps=4)
    b = M.deletion_curve(scenes_cnn, x, heat, y, n_steps=4)
    assert a.scores.shape == (2, 5) and torch.equal(a.scores, b.scores)
    with pytest.raises(ValueError, match="not both"):
        M.insertion_curve(scenes_cnn, x, heat, y, steps=4, n_steps=8)
    with pytest.raises(TypeError, match="steps must be an int"):
        M.deletion_curve(scenes_cnn, x, heat, y, steps=2.5)


def test_deletion_curve_does_not_depend_on_the_batch_size(scenes_cnn, scenes_test):
    x, y = scenes_test.images[:2], scenes_test.labels[:2]
    heat = A.grad_cam(scenes_cnn, x, y)
    a = M.deletion_curve(scenes_cnn, x, heat, y, steps=8, batch_size=2)
    b = M.deletion_curve(scenes_cnn, x, heat, y, steps=8, batch_size=100)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=1e-5)


def test_occlusion_of_a_model_that_flattens_with_view_equals_captum():
    # occlusion hands the model channels-last images on the CPU; a model that flattens with view cannot take them
    from captum.attr import Occlusion
    from modelutil import FlattenNet

    model = FlattenNet("view").eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ours = A.occlusion(model, x, torch.tensor([0, 2]), patch=4, stride=4, baseline=0.5)
    ref = Occlusion(model).attribute(
        x, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4), baselines=0.5, target=torch.tensor([0, 2])
    )
    torch.testing.assert_close(ours, ref[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("insert", [False, True])
def test_curves_equal_the_images_built_by_hand_and_go_to_the_model_in_one_stream(scenes_cnn, scenes_test, insert):
    x, y = scenes_test.images[:3], scenes_test.labels[:3]
    heat = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(4))
    S, H, W = 8, 64, 64
    calls = []
    h = scenes_cnn.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        fn = M.insertion_curve if insert else M.deletion_curve
        got = fn(scenes_cnn, x, heat, y, n_steps=S, baseline=0.5, batch_size=4)
    finally:
        h.remove()
    # by hand: at step t the t/S highest-ranked pixels are removed (deletion) or the only ones present (insertion)
    rank = heat.flatten(1).argsort(1, descending=True).argsort(1).view(3, H, W)  # no ties in rand
    want = torch.empty(3, S + 1)
    with torch.no_grad():
        for t in range(S + 1):
            top = rank < t * H * W // S  # (3, H, W)
            shown = top if insert else ~top
            xt = torch.where(shown[:, None], x, torch.full_like(x, 0.5))
            want[:, t] = scenes_cnn(xt).softmax(1).gather(1, y[:, None])[:, 0]
    torch.testing.assert_close(got.scores, want, atol=1e-5, rtol=1e-4)
    assert sum(calls) == 3 * (S + 1) and len(calls) == math.ceil(3 * (S + 1) / 4)  # 7 forwards, not 3 * ceil(9 / 4) = 9


def test_curves_refuse_a_target_the_model_does_not_have(scenes_cnn, scenes_test):
    x = scenes_test.images[:2]
    with pytest.raises(ValueError, match="out of range"):
        M.deletion_curve(scenes_cnn, x, torch.rand(2, 64, 64), 10, steps=4)
