"""The games engine: equal to a naive one-mask-at-a-time loop, independent of batch size."""
import pytest
import torch
from torch import nn

from modelutil import FlattenNet

from course_lib.games import ImageGames, function_game, grid_segments, image_game, segment_map, tabular_game, token_game


def _random_masks(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g) < 0.5


def test_image_game_matches_naive_loop(scenes_cnn, scenes_test):
    x = scenes_test.images[0]
    seg = grid_segments(64, 64, 16)  # 16 patches
    game = image_game(scenes_cnn, x, seg, baseline=0.5, batch_size=7)
    masks = _random_masks(40, 16)
    fast = game(masks)
    naive = []
    for m in masks:
        pix = m[seg]  # (H, W)
        xin = torch.where(pix[None], x, torch.full_like(x, 0.5))
        with torch.no_grad():
            naive.append(scenes_cnn(xin[None])[0])
    torch.testing.assert_close(fast, torch.stack(naive), atol=1e-4, rtol=1e-4)
    assert game.n_calls == 40


@pytest.mark.parametrize("bs", [1, 3, 64, 1000])
def test_image_game_independent_of_batch_size(scenes_cnn, scenes_test, bs):
    x = scenes_test.images[1]
    seg = grid_segments(64, 64, 8)
    masks = _random_masks(50, 64, seed=1)
    ref = image_game(scenes_cnn, x, seg, target=3, batch_size=50)(masks)
    out = image_game(scenes_cnn, x, seg, target=3, batch_size=bs)(masks)
    assert out.shape == (50,)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_image_game_full_and_empty_masks(scenes_cnn, scenes_test):
    x = scenes_test.images[2]
    seg = grid_segments(64, 64, 32)
    game = image_game(scenes_cnn, x, seg, baseline=0.0, output="prob")
    out = game(torch.tensor([[True] * 4, [False] * 4]))
    with torch.no_grad():
        full = torch.softmax(scenes_cnn(x[None]), -1)[0]
        empty = torch.softmax(scenes_cnn(torch.zeros_like(x)[None]), -1)[0]
    torch.testing.assert_close(out[0], full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], empty, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.sum(1), torch.ones(2))


def test_image_game_mean_baseline_fills_each_segment_with_its_mean(scenes_cnn, scenes_test):
    x = scenes_test.images[3]
    seg = grid_segments(64, 64, 32)
    game = image_game(scenes_cnn, x, seg, baseline="mean")
    img = game.inputs(torch.zeros(1, 4, dtype=torch.bool))[0]
    patch = x[:, :32, :32]
    torch.testing.assert_close(img[:, 5, 5], patch.mean((1, 2)))


def test_image_game_rejects_bad_input(scenes_cnn, scenes_test):
    x = scenes_test.images[0]
    seg = grid_segments(64, 64, 16)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        image_game(scenes_cnn, (x - 0.5) / 0.25, seg)
    with pytest.raises(ValueError, match="spatial shape"):
        image_game(scenes_cnn, x, seg[:32])
    game = image_game(scenes_cnn, x, seg)
    with pytest.raises(ValueError, match=r"\(n_masks, 16\)"):
        game(torch.ones(3, 15, dtype=torch.bool))
    scenes_cnn.train()
    try:
        with pytest.raises(ValueError, match="model.eval"):
            image_game(scenes_cnn, x, seg)
    finally:
        scenes_cnn.eval()


def test_image_games_reject_what_image_game_rejects(scenes_cnn, scenes_test):
    x = scenes_test.images[:2]
    seg = grid_segments(64, 64, 16)[None]
    t = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ImageGames(scenes_cnn, (x - 0.5) / 0.25, seg, torch.tensor(0.0), t)
    with pytest.raises(ValueError, match="finite"):
        ImageGames(scenes_cnn, torch.where(x > 0.9, float("nan"), x), seg, torch.tensor(0.0), t)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ImageGames(scenes_cnn, x[0], seg, torch.tensor(0.0), t)
    scenes_cnn.train()
    try:
        with pytest.raises(ValueError, match="model.eval"):
            ImageGames(scenes_cnn, x, seg, torch.tensor(0.0), t)
    finally:
        scenes_cnn.eval()


def test_mean_baseline_keeps_the_image_dtype(scenes_test):
    # a float64 image with the "mean" baseline: each superpixel its own mean colour, in float64
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 4)).double().eval()
    x = scenes_test.images[0].double()
    seg = grid_segments(64, 64, 32)
    game = image_game(model, x, seg, baseline="mean")
    img = game.inputs(torch.zeros(1, 4, dtype=torch.bool))[0]
    assert img.dtype == torch.float64
    torch.testing.assert_close(img[:, 40, 40], x[:, 32:, 32:].mean((1, 2)), atol=1e-12, rtol=0)


def test_tabular_game_is_mean_over_background():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).eval()
    x = torch.randn(5)
    bg = torch.randn(9, 5)
    masks = _random_masks(20, 5, seed=3)
    f = lambda z: model(z)[:, 0]  # noqa: E731
    out = tabular_game(lambda z: f(z), x, bg, batch_size=10)(masks)
    naive = torch.stack([torch.stack([f(torch.where(m, x, b)[None])[0] for b in bg]).mean() for m in masks])
    torch.testing.assert_close(out, naive.detach(), atol=1e-5, rtol=1e-5)
    out2 = tabular_game(lambda z: f(z), x, bg, batch_size=1000)(masks)
    torch.testing.assert_close(out, out2, atol=1e-6, rtol=1e-6)


def test_tabular_game_on_the_fever_cough_model_gives_the_lecture_values():
    from course_lib.zoo import load_dataset, load_model

    model = load_model("fever-cough-a", device="cpu")
    bg = load_dataset("fever-cough")["X"]
    game = tabular_game(model, torch.tensor([1.0, 1.0]), bg)
    v = game(torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]]))
    # E[f] = 20; fixing one symptom: 80 * P(other) = 40; both: 80.
    torch.testing.assert_close(v, torch.tensor([20.0, 40.0, 40.0, 80.0]))


def test_token_game_removes_and_replaces_words():
    seen = []

    def score(texts):
        seen.extend(texts)
        return torch.tensor([float(len(t.split())) for t in texts])

    words = ["not", "a", "good", "film"]
    game = token_game(score, words, batch_size=2)
    out = game(torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0]]))
    assert seen[:2] == ["not good film", ""]
    torch.testing.assert_close(out, torch.tensor([3.0, 0.0]))
    game = token_game(score, words, mode="replace", replacement="_")
    game(torch.tensor([[1, 0, 1, 0]]))
    assert seen[-1] == "not _ good _"


def test_function_game_and_segment_map():
    game = function_game(lambda m: m.sum(1), 3, batch_size=2)
    torch.testing.assert_close(game(torch.eye(3, dtype=torch.bool)), torch.ones(3))
    seg = torch.tensor([[5, 5], [9, 2]])  # relabelled in sorted order: 2->0, 5->1, 9->2
    painted = segment_map(torch.tensor([10.0, 20.0, 30.0]), seg)
    torch.testing.assert_close(painted, torch.tensor([[20.0, 20.0], [30.0, 10.0]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_image_game_runs_on_cuda(scenes_test):
    from course_lib.zoo import load_model

    model = load_model("scenes-cnn", device="cuda")
    game = image_game(model, scenes_test.images[0], grid_segments(64, 64, 16))
    out = game(_random_masks(10, 16))
    assert out.device.type == "cuda"


def test_progress_bar_shows_but_is_silent_under_nbgrader(monkeypatch, capfd):
    monkeypatch.delenv("COURSE_LIB_NO_PROGRESS", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    game = function_game(lambda m: m.sum(1), 4, batch_size=2)
    masks = torch.ones(10, 4, dtype=torch.bool)
    game(masks, progress=True)
    assert "game" in capfd.readouterr().err, "a long game evaluation should show a progress bar"
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    game(masks, progress=True)
    assert capfd.readouterr().err == "", "under nbgrader nothing may reach stderr (the test cell would score zero)"


def test_chunk_size_follows_the_memory_budget(monkeypatch, scenes_cnn, scenes_test):
    x = scenes_test.images[0]
    seg = grid_segments(64, 64, 16)
    monkeypatch.setenv("COURSE_LIB_MEMORY_MB", "256")
    big = image_game(scenes_cnn, x, seg).chunk
    monkeypatch.setenv("COURSE_LIB_MEMORY_MB", "16")
    small = image_game(scenes_cnn, x, seg).chunk
    assert small < big and small * 16 <= big + 16
    # one input is 3*64*64 float32 = 48 KiB; with the activation factor 16, 16 MB holds ~21 inputs
    assert 10 <= small <= 30


def test_default_chunks_without_a_set_budget(monkeypatch):
    """No budget set: at most 16 inputs per chunk on the CPU (and fewer for big inputs), more on a GPU."""
    from course_lib.games import default_batch_size

    monkeypatch.delenv("COURSE_LIB_MEMORY_MB", raising=False)
    small_img, big_img = 3 * 64 * 64 * 4, 3 * 512 * 512 * 4
    assert default_batch_size(small_img) == 16
    assert default_batch_size(big_img) == 128 * 2**20 // (big_img * 16)  # 48 MB of activations per 3 MB input: the memory budget wins
    assert default_batch_size(small_img, device="cuda") == 1024 * 2**20 // (small_img * 16)



def test_tabular_game_with_a_single_output_model():
    """A model with one output per row, (B,) or (B, 1): reported as is; probabilities and
    targets other than 0 are refused with a message (a softmax over one output would be 1)."""
    torch.manual_seed(0)
    x, bg = torch.randn(3), torch.randn(8, 3)
    w = torch.tensor([1.0, -2.0, 0.5])
    masks = torch.tensor([[0, 0, 0], [1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    truth = torch.stack([torch.where(m, x, bg) @ w for m in masks]).mean(1)  # (3,)
    for f in (lambda r: r @ w, lambda r: (r @ w)[:, None]):
        for kw in ({}, {"output": "logit"}, {"target": 0}):
            out = tabular_game(f, x, bg, **kw)(masks)
            torch.testing.assert_close(out, truth)
        for out_kind in ("prob", "logprob"):
            with pytest.raises(ValueError, match="one output per class"):
                tabular_game(f, x, bg, output=out_kind)(masks)
    with pytest.raises(ValueError, match="one number per row"):
        tabular_game(lambda r: r @ w, x, bg, target=1)(masks)


def test_tabular_game_classifier_probabilities_and_target_range():
    torch.manual_seed(0)
    W = torch.randn(3, 4)
    x, bg = torch.randn(3), torch.randn(8, 3)
    masks = torch.tensor([[0, 1, 0], [1, 1, 1]], dtype=torch.bool)
    p = tabular_game(lambda r: r @ W, x, bg, output="prob", target=2)(masks)
    ref = torch.stack([torch.softmax(torch.where(m, x, bg) @ W, -1)[:, 2].mean() for m in masks])
    torch.testing.assert_close(p, ref)
    with pytest.raises(ValueError, match=r"0\.\.3"):
        tabular_game(lambda r: r @ W, x, bg, output="prob", target=4)(masks)
    with pytest.raises(ValueError, match="output must be one of"):
        tabular_game(lambda r: r @ W, x, bg, output="probability")


def test_a_model_that_flattens_with_view_gets_contiguous_images_and_the_same_outputs():
    # the games compose images channels-last on the CPU; h.view(B, -1) of a channels-last feature map raises
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    seg, masks = grid_segments(16, 16, 4), _random_masks(20, 16)
    view, reshape = FlattenNet("view").eval(), FlattenNet("reshape").eval()
    with pytest.raises(RuntimeError, match="view size"):  # what the model does on channels-last input by itself
        view(x[None].contiguous(memory_format=torch.channels_last))
    got = image_game(view, x, seg, baseline=0.5, batch_size=6)(masks)
    want = image_game(reshape, x, seg, baseline=0.5, batch_size=6)(masks)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # a model that fails on any layout: its own error, alone
    with pytest.raises(RuntimeError, match="broken whatever the layout") as err:
        image_game(FlattenNet("broken").eval(), x, seg)(masks)
    assert err.value.__context__ is None
