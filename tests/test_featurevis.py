"""featurevis: objectives read the hooked activations, the algebra holds, parameterisations
are invertible maps into [0, 1], transforms are seeded and keep the range, render raises its
objective beyond natural images, batching does not change a result, dataset search is exact."""
import copy

import pytest
import torch
import torch.nn.functional as F

from course_lib import load_dataset
from course_lib.hooks import capture
from course_lib.methods import featurevis as fv


@pytest.fixture(scope="module")
def model(scenes_cnn):  # the session's model from conftest.py, loaded once
    return scenes_cnn


@pytest.fixture(scope="module")
def data():
    return load_dataset("scenes", split="test", n=200, seed=0)


def _acts(model, x, layers):
    with fv.activations(model, layers) as acts:
        logits = model(x)
    return {**acts, "logits": logits, "input": x}


# ----------------------------------------------------------------------------- objectives

def test_objectives_equal_the_hooked_activations(model, data):
    x = data.images[:12]
    with torch.no_grad(), capture(model, ["features", "conv2"]) as ref:
        logits = model(x)
    acts = _acts(model, x, ["features", "conv2"])
    torch.testing.assert_close(fv.channel("features", 5)(acts), ref["features"][:, 5].mean((1, 2)))
    torch.testing.assert_close(fv.neuron("conv2", 7, 3, 11)(acts), ref["conv2"][:, 7, 3, 11])
    torch.testing.assert_close(fv.neuron("features", 2)(acts), ref["features"][:, 2, 4, 4])  # centre of 8x8
    torch.testing.assert_close(fv.class_logit(4)(acts), logits[:, 4])
    e = torch.zeros(192)
    e[5] = 1
    torch.testing.assert_close(fv.direction("features", e)(acts), fv.channel("features", 5)(acts))
    v = torch.randn(192, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fv.direction("features", v)(acts), ref["features"].mean((2, 3)) @ v)


def test_a_layer_before_an_inplace_relu_is_read_before_the_relu(model, data):
    # features.1 is a batch norm followed by ReLU(inplace=True): a plain hook would see the ReLU's result.
    x = data.images[:6]
    acts = _acts(model, x, ["features.1"])
    with torch.no_grad(), capture(model, "features.0") as conv:
        model(x)
        pre_relu = model.features[1](conv["features.0"])
    torch.testing.assert_close(acts["features.1"], pre_relu)
    assert (acts["features.1"] < 0).any()
    with torch.no_grad():  # the network's output is unchanged by reading it
        torch.testing.assert_close(acts["logits"], model(x))


def test_objectives_add_and_scale(model, data):
    acts = _acts(model, data.images[:8], ["features", "conv3"])
    a, b, c = fv.channel("features", 1), fv.neuron("conv3", 2), fv.class_logit(0)
    torch.testing.assert_close((2 * a - b / 4 + 1.5)(acts), 2 * a(acts) - b(acts) / 4 + 1.5)
    torch.testing.assert_close(sum([a, b, c])(acts), a(acts) + b(acts) + c(acts))
    torch.testing.assert_close((-c)(acts), -c(acts))
    torch.testing.assert_close((0.3 * a + 0.7 * b)(acts), 0.3 * a(acts) + 0.7 * b(acts))
    torch.testing.assert_close((1 - a)(acts), 1 - a(acts))
    assert set((a + b + c).layers) == {"features", "conv3", "logits"}
    with pytest.raises(TypeError):
        a * b


def test_penalties_on_known_images():
    flat = torch.full((2, 3, 8, 8), 0.5)
    acts = {"input": flat}
    for pen in (fv.l1(), fv.l2(), fv.total_variation(), fv.total_variation(isotropic=True), fv.blur_penalty()):
        torch.testing.assert_close(pen(acts), torch.zeros(2), atol=1e-5, rtol=0)
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 3, 8, 8) / 10  # steps of 0.1 along x
    tv = fv.total_variation()({"input": ramp})
    torch.testing.assert_close(tv, torch.tensor([3 * 8 * 7 * 0.1 / 64]))
    checker = ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2).float().expand(1, 3, 8, 8)
    torch.testing.assert_close(fv.total_variation()({"input": checker}), torch.tensor([3 * 2 * 8 * 7 / 64]))
    torch.testing.assert_close(fv.l1()({"input": checker}), torch.tensor([0.5]))
    torch.testing.assert_close(fv.l2()({"input": checker}), torch.tensor([0.25]))
    assert fv.blur_penalty()({"input": checker}).item() > 0.1


def test_total_variation_has_the_gradient_of_the_plain_expression():
    # its own backward: against autograd through the plain formula, and torch.autograd.gradcheck (finite differences)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 7, 9, generator=g, dtype=torch.float64)
    x[0, 0, 2:5, 3] = x[0, 0, 1, 3]  # equal neighbours: the plain expression's abs has gradient 0 there
    w = torch.rand(3, generator=g, dtype=torch.float64)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    plain = ((a[:, :, 1:] - a[:, :, :-1]).abs().sum((1, 2, 3)) + (a[:, :, :, 1:] - a[:, :, :, :-1]).abs().sum((1, 2, 3))) / 63
    ours = fv.total_variation()({"input": b})
    torch.testing.assert_close(ours, plain, atol=1e-12, rtol=0)
    (plain * w).sum().backward()
    (ours * w).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, atol=1e-12, rtol=0)
    smooth = torch.rand(2, 3, 5, 6, generator=g, dtype=torch.float64).requires_grad_(True)  # no ties: differentiable
    assert torch.autograd.gradcheck(lambda t: fv.total_variation()({"input": t}), (smooth,))


def test_diversity_is_minus_the_mean_gram_similarity():
    a = torch.rand(1, 4, 5, 5)
    same = fv.diversity("l")({"l": a.expand(3, 4, 5, 5)})
    torch.testing.assert_close(same, -torch.ones(3))
    assert fv.diversity("l")({"l": a}).item() == 0
    b = torch.rand(2, 4, 5, 5)
    d = fv.diversity("l")({"l": b})
    gram = (b.flatten(2) @ b.flatten(2).transpose(1, 2)).flatten(1)
    torch.testing.assert_close(d, -F.cosine_similarity(gram[:1], gram[1:]).expand(2))


# ----------------------------------------------------------------------------- parameterisations

@pytest.mark.parametrize("decorrelate", [True, False])
def test_fourier_round_trips_an_image_and_maps_to_the_unit_range(data, decorrelate):
    par = fv.Fourier(64, decorrelate=decorrelate)
    x = data.images[:4].clamp(0.02, 0.98)
    torch.testing.assert_close(par(par.inverse(x)), x, atol=1e-5, rtol=0)
    p = par.init(3, torch.Generator().manual_seed(0)) * 1e4  # extreme parameters still give images
    img = par(p)
    assert img.shape == (3, 3, 64, 64) and img.min() >= 0 and img.max() <= 1
    pix = fv.Pixels(64)
    torch.testing.assert_close(pix(pix.inverse(x)), x, atol=1e-5, rtol=0)


def test_fourier_scales_each_frequency_by_one_over_its_frequency():
    par = fv.Fourier((16, 16), decorrelate=False)
    p = par.init(2, torch.Generator().manual_seed(1))
    spec = torch.fft.rfft2(par.signal(p), norm="ortho")  # (2, 3, 16, 9)
    fy, fx = torch.fft.fftfreq(16)[:, None], torch.fft.rfftfreq(16)[None]
    f = (fy**2 + fx**2).sqrt().clamp_min(1 / 16)
    expected = torch.view_as_complex(p) / f
    # bins whose conjugate is also stored (x = 0 and x = Nyquist columns) are symmetrised by irfft2
    inner = slice(1, 8)
    torch.testing.assert_close(spec[..., inner], expected[..., inner], atol=1e-4, rtol=1e-4)
    # a unit step on a low-frequency coefficient moves the image 8 times more than on the highest one
    assert torch.isclose(par.scale[1, 0] / par.scale[8, 8], torch.tensor(8 * 2**0.5 / 1), rtol=1e-4)


@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (6, 5)])
@pytest.mark.parametrize("decorrelate", [True, False])
def test_fourier_has_the_gradient_of_the_plain_expression(hw, decorrelate):
    # its own backward: against autograd through view_as_complex, the product, irfft2 and einsum, and gradcheck
    par = fv.Fourier(hw, decorrelate=decorrelate)
    g = torch.Generator().manual_seed(1)
    p = torch.randn(2, 3, hw[0], hw[1] // 2 + 1, 2, generator=g, dtype=torch.float64)
    w = torch.randn(2, 3, *hw, generator=g, dtype=torch.float64)
    a, b = p.clone().requires_grad_(True), p.clone().requires_grad_(True)
    colour = par.colour.double()
    plain = torch.einsum("ij,njhw->nihw", colour, torch.fft.irfft2(torch.view_as_complex(a) * par.scale.double(), s=hw, norm="ortho"))
    ours = par.signal(b)
    torch.testing.assert_close(ours, plain, atol=1e-12, rtol=0)
    (plain * w).sum().backward()
    (ours * w).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda t: par(t), (p.clone().requires_grad_(True),))


def test_colour_basis_decorrelates_the_data(data):
    basis = fv.colour_basis(data.images)
    px = data.images.permute(1, 0, 2, 3).reshape(3, -1)
    white = torch.linalg.solve(basis, px - px.mean(1, keepdim=True))
    cov = torch.cov(white)
    torch.testing.assert_close(cov - torch.diag(cov.diagonal()), torch.zeros(3, 3), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- transforms

@pytest.mark.parametrize("name", ["pad", "jitter", "scale", "rotate", "default"])
def test_transforms_are_seeded_and_keep_the_range(data, name):
    t = {"pad": fv.pad(4), "jitter": fv.jitter(6), "scale": fv.scale((0.8, 1.2)), "rotate": fv.rotate(30),
         "default": fv.default_transforms()}[name]
    x = data.images[:5]
    a = t(x, torch.Generator().manual_seed(3))
    b = t(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert a.min() >= x.min() - 1e-6 and a.max() <= x.max() + 1e-6
    if name != "pad":
        c = t(x, torch.Generator().manual_seed(4))
        assert not torch.allclose(a, c)


def test_jitter_crops_without_wrapping_around():
    x = torch.arange(2 * 1 * 10 * 10, dtype=torch.float32).view(2, 1, 10, 10)
    y = fv.jitter(3)(x, torch.Generator().manual_seed(0))
    assert y.shape == (2, 1, 7, 7)
    for i in range(2):
        oy, ox = divmod(int(y[i, 0, 0, 0] - x[i, 0, 0, 0]), 10)
        assert 0 <= oy <= 3 and 0 <= ox <= 3
        torch.testing.assert_close(y[i], x[i, :, oy : oy + 7, ox : ox + 7])
    assert fv.pad(2, value=0.5)(x, None)[:, :, 0].eq(0.5).all()
    # identity settings of the affine transforms leave the image alone
    torch.testing.assert_close(fv.scale((1.0, 1.0))(x, torch.Generator()), x, atol=1e-4, rtol=0)
    torch.testing.assert_close(fv.rotate(0)(x, torch.Generator()), x, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- render

def test_render_raises_each_class_logit_above_every_natural_image_of_the_class(model, data):
    objs = [fv.class_logit(c) for c in range(10)]
    res = fv.render(model, objs, steps=24, seed=0, progress=False)
    assert res.images.shape == (10, 3, 64, 64) and res.images.min() >= 0 and res.images.max() <= 1
    with torch.no_grad():
        nat = model(data.images)  # (N, 10)
        mine = model(res.images)  # (10, 10)
    for c in range(10):
        best = nat[data.labels == c, c].max()
        assert mine[c, c] > 1.5 * best, (c, mine[c, c].item(), best.item())  # measured: >= 2.5x for seeds 0-2
        torch.testing.assert_close(res.values[c], mine[c, c], atol=1e-4, rtol=1e-4)
    # the optimiser's objective rises: the last steps beat the first by a wide margin
    assert (res.history[-8:].mean(0) > res.history[:8].mean(0) + 5).all()


def test_a_channel_image_activates_its_channel_more_than_any_test_image_and_random_noise(model, data):
    # before the ReLU (features.1 is the batch norm): a channel that is 0 on the grey start image would
    # have no gradient after the ReLU
    chans = [0, 84, 144]
    objs = [fv.channel("features.1", c) for c in chans]
    res = fv.render(model, objs, steps=24, seed=1, progress=False)
    noise = torch.rand(32, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for k, c in enumerate(chans):
        nat = fv.evaluate(model, objs[k], data.images)
        rand = fv.evaluate(model, objs[k], noise)
        got = fv.evaluate(model, objs[k], res.images[k : k + 1])
        assert got > nat.max() and got > rand.max() + 1.0, (c, got.item(), nat.max().item(), rand.max().item())


@pytest.mark.parametrize("transforms", ["default", "composed"])
def test_batched_render_equals_one_by_one(model, transforms):
    # in float64: a convolution rounds differently for batches of different sizes (~1e-7 in float32), and a
    # max-pool near-tie can turn that into a different path; what is tested here is that render gives every
    # objective its own images, start and draws, whatever else shares the batch
    model64 = copy.deepcopy(model).double()
    objs = [fv.channel("conv3", 3), fv.class_logit(2) - 0.5 * fv.total_variation(), fv.neuron("features", 9)]
    kw = dict(steps=12, seed=5, progress=False, n=2, transforms=transforms)
    together = fv.render(model64, objs, **kw)
    assert together.images.dtype == torch.float64
    for k, o in enumerate(objs):
        alone = fv.render(model64, o, **kw)
        torch.testing.assert_close(together.images[2 * k : 2 * k + 2], alone.images, atol=1e-9, rtol=0)
        torch.testing.assert_close(together.history[:, 2 * k : 2 * k + 2], alone.history, atol=1e-5, rtol=1e-6)


def test_render_is_seeded_and_the_two_images_of_an_objective_differ(model):
    a = fv.render(model, fv.class_logit(1), steps=4, n=2, seed=3, param="pixels", progress=False)
    b = fv.render(model, fv.class_logit(1), steps=4, n=2, seed=3, param="pixels", progress=False)
    c = fv.render(model, fv.class_logit(1), steps=4, n=2, seed=4, param="pixels", progress=False)
    torch.testing.assert_close(a.images, b.images)
    assert not torch.allclose(a.images, c.images)
    assert not torch.allclose(a.images[0], a.images[1])


def test_render_refuses_bad_input(model):
    with pytest.raises(TypeError):
        fv.render(model, "features", steps=1, progress=False)
    with pytest.raises(ValueError, match="composed"):
        fv.render(model, fv.class_logit(0), steps=1, progress=False, transforms="defualt")
    with pytest.raises(KeyError, match="Did you mean"):
        fv.render(model, fv.channel("featurs", 0), steps=1, progress=False)
    model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            fv.render(model, fv.class_logit(0), steps=1, progress=False)
    finally:
        model.eval()


# ----------------------------------------------------------------------------- dataset search

def test_dataset_search_returns_the_brute_force_top_k(model, data):
    obj = fv.channel("features", 17)
    images = data.images[:80]
    with torch.no_grad():  # one image at a time, read with a plain hook
        brute = []
        for i in range(len(images)):
            with capture(model, "features") as acts:
                model(images[i : i + 1])
            brute.append(acts["features"][0, 17].mean())
        brute = torch.stack(brute)
    want = sorted(range(len(images)), key=lambda i: -brute[i].item())[:7]
    for bs in (13, 80):
        res = fv.dataset_search(model, obj, images, k=7, batch_size=bs)
        assert res.indices.tolist() == want
        torch.testing.assert_close(res.values, brute[want], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(res.images, images[want])
    low = fv.dataset_search(model, obj, images, k=3, largest=False)
    assert low.indices.tolist() == sorted(range(len(images)), key=lambda i: brute[i].item())[:3]


def test_dataset_search_regions_sit_on_the_strongest_position(model, data):
    res = fv.dataset_search(model, fv.channel("conv3", 4), data.images, k=4, region=("conv3", 4), patch_size=16)
    assert res.patches.shape == (4, 3, 16, 16) and res.boxes.shape == (4, 4)
    with torch.no_grad(), capture(model, "conv3") as acts:
        model(res.images)
    a = acts["conv3"][:, 4]  # (4, 16, 16): each position covers 4x4 pixels
    assert a.shape == (4, 16, 16)
    for i in range(4):
        y, x = divmod(int(a[i].argmax()), 16)
        t, l, b, r = res.boxes[i].tolist()
        assert b - t == 16 and r - l == 16 and t <= 4 * y + 2 <= b and l <= 4 * x + 2 <= r
        torch.testing.assert_close(res.patches[i], res.images[i, :, t:b, l:r])


def test_radial_spectrum_is_flat_for_white_noise_and_keeps_the_energy():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(16, 3, 32, 32, generator=g)
    freq, power = fv.radial_spectrum(noise, n_bins=8)
    assert freq.shape == power.shape == (8,) and (freq.diff() > 0).all()
    assert (power[1:] / power[1:].mean() - 1).abs().max() < 0.15  # white noise: the same power at every frequency
    smooth = fv.objectives._box_blur(fv.objectives._box_blur(noise.clamp(-2, 2)))
    _, ps = fv.radial_spectrum(smooth, n_bins=8)
    assert ps[-1] < 0.05 * ps[1]  # blurring removes the high frequencies


# ----------------------------------------------------------------------------- the fast paths of render

@pytest.mark.parametrize("factors, degrees", [((1.0, 1.0), 10.0), ((0.8, 1.2), 0.0), ((1.0, 1.0), 0.0)])
def test_one_resample_equals_the_composition_where_that_is_affine_exact(data, factors, degrees):
    # at most one of the composition's two resamples moves pixels off the grid: one resample is then the same map
    x = data.images[:6]
    slow = fv.compose(fv.pad(4), fv.jitter(4), fv.scale(factors), fv.rotate(degrees), fv.jitter(2))(
        x, torch.Generator().manual_seed(2)
    )
    fast = fv.one_resample(4, 4, factors, degrees, 2)(x, torch.Generator().manual_seed(2))
    assert fast.shape == slow.shape == (6, 3, 66, 66)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=0)


def test_one_resample_is_seeded_keeps_the_range_and_stays_close_to_the_composition(data):
    x = data.images[:6]
    t = fv.one_resample()
    a, b, c = (t(x, torch.Generator().manual_seed(s)) for s in (3, 3, 4))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert a.min() >= x.min() - 1e-6 and a.max() <= x.max() + 1e-6
    slow = fv.default_transforms()(x, torch.Generator().manual_seed(3))  # the same draws, one blur fewer
    assert (a - slow).abs().mean() < 0.02  # measured: 0.007 on these images (sharp synthetic edges)


@pytest.mark.parametrize("n, c, per", [(1, 48, 3), (1, 3, 1), (2, 30, 3), (3, 8, 3), (2, 7, 3), (4, 6, 1)])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_grid_sample_by_groups_of_channels_equals_grid_sample(n, c, per, padding_mode):
    # the channels are cut into images of their own, each with its image's grid: values and gradients must not change
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, c, 20, 24, generator=g, dtype=torch.float64)
    grid = torch.rand(n, 18, 22, 2, generator=g, dtype=torch.float64) * 2.4 - 1.2  # some positions outside
    weights = torch.rand(n, c, 18, 22, generator=g, dtype=torch.float64)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    want = F.grid_sample(a, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    got = fv.fast._grid_sample(b, grid, padding_mode, channels=per)
    (want * weights).sum().backward()
    (got * weights).sum().backward()
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(b.grad, a.grad, atol=1e-12, rtol=0)


def test_shared_terms_are_evaluated_once_and_give_each_objective_its_own_value():
    g = torch.Generator().manual_seed(0)
    acts = {"input": torch.rand(8, 3, 8, 8, generator=g), "logits": torch.randn(8, 4, generator=g),
            "l": torch.rand(8, 5, 4, 4, generator=g)}
    tv = fv.total_variation()
    objs = [fv.class_logit(0) - 10 * fv.total_variation() - 5 * fv.l1() + 2,  # tv and l1 shared through their keys
            fv.class_logit(1) - 10 * tv - 0.5 * tv,  # the same leaf twice
            2.0 * fv.channel("l", 3) - 3 * fv.l1() + 1.5 * fv.diversity("l"),  # diversity is never shared (not row-wise)
            0 * fv.l1() + 1.0]
    got = fv.plan._plan(objs, 2)(acts)  # 2 images per objective
    want = torch.cat([o({k: v[2 * i : 2 * i + 2] for k, v in acts.items()}) for i, o in enumerate(objs)])
    torch.testing.assert_close(got, want)
    # families: channel c (or logit c) of one layer for every objective, read at each image's own index at once
    fam = [fv.class_logit(3), 2 * fv.class_logit(1) + fv.channel("l", 1), fv.channel("l", 4) - fv.l1(),
           fv.class_logit(0) + fv.class_logit(2)]  # the last uses two members: evaluated on its own
    want = torch.cat([o({k: v[2 * i : 2 * i + 2] for k, v in acts.items()}) for i, o in enumerate(fam)])
    torch.testing.assert_close(fv.plan._plan(fam, 2)(acts), want)
    half = -0.5 * objs[0]
    assert [w for w, _ in half.terms] == [-0.5, 5.0, 2.5] and half.const == -1.0
    torch.testing.assert_close(half(acts), -0.5 * objs[0](acts))


def test_render_with_one_resample_raises_the_objective_and_gives_every_objective_the_same_draws(model, data):
    # the folded batch (objectives in the channel axis) sees exactly what each objective alone would see, and
    # the gradients agree too (a whole render is not compared: the convolutions round differently for batches
    # of different sizes (~1e-7), and a max-pool near-tie can turn that into a different trajectory)
    x = data.images[:4].clone().requires_grad_(True)  # 4 objectives, n = 1
    w = torch.randn(4, 3, 66, 66, generator=torch.Generator().manual_seed(0))
    together = fv.rendering._same_draws(fv.one_resample(), x, 4, torch.Generator().manual_seed(7))
    (together * w).sum().backward()
    for k in range(4):
        xk = data.images[k : k + 1].clone().requires_grad_(True)
        alone = fv.one_resample()(xk, torch.Generator().manual_seed(7))
        (alone * w[k : k + 1]).sum().backward()
        torch.testing.assert_close(together[k : k + 1], alone, atol=0, rtol=0)
        torch.testing.assert_close(x.grad[k : k + 1], xk.grad, atol=1e-6, rtol=0)
    res = fv.render(model, [fv.class_logit(2) - 0.5 * fv.total_variation(), fv.channel("conv3", 3)], steps=12, seed=2,
                    progress=False, transforms=fv.ONE_RESAMPLE)
    assert res.images.shape == (2, 3, 64, 64) and res.images.min() >= 0 and res.images.max() <= 1
    assert (res.history[-3:].mean(0) > res.history[:3].mean(0)).all()


def test_render_hands_the_model_channels_last_images_on_the_cpu(model):
    seen = []
    h = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    try:
        res = fv.render(model, [fv.channel("conv3", 1), fv.class_logit(4)], steps=3, seed=0, progress=False)
    finally:
        h.remove()
    assert seen[:3] == [True] * 3  # the three optimisation steps (the final evaluation may use either layout)
    assert res.images.is_contiguous() and res.images.shape == (2, 3, 64, 64)


def test_render_works_for_a_model_that_flattens_with_view():
    # render hands the model channels-last images on the CPU; h.view(B, -1) of such features raises, so
    # that model gets contiguous images: the same objective values as a model with the same weights that reshapes
    from modelutil import FlattenNet

    view, reshape = FlattenNet("view").eval(), FlattenNet("reshape").eval()
    kw = dict(size=16, steps=3, seed=1, transforms=None, progress=False)
    a, b = fv.render(view, fv.class_logit(1), **kw), fv.render(reshape, fv.class_logit(1), **kw)
    torch.testing.assert_close(a.history, b.history, atol=1e-5, rtol=1e-5)
