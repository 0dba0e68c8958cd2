"""a0_setup's graded tests: a correct solution written differently passes, plausible wrong ones lose points."""
from pathlib import Path

import pytest

from gradeutil import assert_loses_points, run_graded, score

NB = Path(__file__).resolve().parents[1] / "solutions" / "a0_setup" / "a0_setup.ipynb"

DIFFERENT_BUT_RIGHT = """
def class_probabilities(model, images):
    model_device = next(iter(model.parameters())).device
    with torch.no_grad():
        z = model(images.to(model_device)).double()
    z = z - z.max(dim=-1, keepdim=True).values
    e = z.exp()
    return (e / e.sum(-1, keepdim=True)).float().to("cpu")
"""

# Correct and differently written again (issue 24): one image at a time (other batch sizes round differently), the
# softmax in float64 from a log-softmax, a float64 result.
ONE_AT_A_TIME_FLOAT64 = """
def class_probabilities(model, images):
    dev = next(model.parameters()).device
    rows = []
    for img in images:
        with torch.no_grad():
            rows.append(torch.log_softmax(model(img[None].to(dev)).double(), dim=-1).exp()[0].cpu())
    return torch.stack(rows)
"""

WRONG = {
    "log-softmax instead of softmax": """
def class_probabilities(model, images):
    with torch.no_grad():
        return torch.log_softmax(model(images), dim=1)
""",
    "softmax over the batch": """
def class_probabilities(model, images):
    with torch.no_grad():
        return torch.softmax(model(images), dim=0)
""",
    "returns logits": """
def class_probabilities(model, images):
    with torch.no_grad():
        return model(images)
""",
    "sigmoid instead of softmax": """
def class_probabilities(model, images):
    with torch.no_grad():
        return torch.sigmoid(model(images))
""",
    "keeps the gradient graph": """
def class_probabilities(model, images):
    x = images.clone().requires_grad_(True)
    return torch.softmax(model(x), dim=1)
""",
}


def test_reference_solution_gets_full_marks():
    got, full = score(run_graded(NB))
    assert got == full > 0


def test_a_different_correct_solution_gets_full_marks():
    res = run_graded(NB, {"class_probabilities": DIFFERENT_BUT_RIGHT})
    got, full = score(res)
    assert got == full, {k: r.error for k, r in res.items() if not r.passed}


@pytest.mark.parametrize("mistake", list(WRONG))
def test_plausible_mistakes_lose_points(mistake):
    assert_loses_points(NB, {"class_probabilities": WRONG[mistake]}, mistake)


def test_an_answer_that_only_fits_the_visible_checks_loses_the_visible_cells_points_too():
    # uniform rows pass every visible check of test_probabilities_visible (shape, CPU, no graph, rows sum to 1);
    # its hidden part (other images, another model) must take the point
    fake = "def class_probabilities(model, images):\n    return torch.full((len(images), 10), 0.1)\n"
    res = run_graded(NB, {"class_probabilities": fake})
    assert not res["test_probabilities_visible"].passed
    assert res["test_probabilities_visible"].error.startswith("AssertionError"), res["test_probabilities_visible"].error


def test_a_correct_solution_one_image_at_a_time_in_float64_gets_full_marks():
    res = run_graded(NB, {"class_probabilities": ONE_AT_A_TIME_FLOAT64})
    got, full = score(res)
    assert got == full, {k: r.error for k, r in res.items() if not r.passed}


def test_the_margins_written_beside_the_checks():
    # The test cells' comments: on the images they use, the two largest logits are >= 0.06 apart and no probability is
    # below 5e-4, while other batch sizes, channels-last and float64 move a logit by <= 2e-6 and a probability by
    # <= 2e-7: the argmax and the 1e-5 / 1e-3 tolerances cannot reject a correct answer written differently.
    import torch

    from course_lib import load_dataset, load_model

    cnn, spurious = load_model("scenes-cnn", device="cpu"), load_model("scenes-cnn-spurious", device="cpu")
    vis = load_dataset("scenes", split="test", n=20, seed=0).images
    hid9 = load_dataset("scenes", split="val", n=9, seed=44).images
    hid11 = load_dataset("scenes", split="test", n=11, seed=321).images
    for net, x, margin in [(cnn, vis[:7], 4.0), (spurious, hid9, 0.12), (cnn, hid11, 3.0), (spurious, hid11, 0.06)]:
        with torch.no_grad():
            logits = net(x)
            others = [torch.cat([net(x[i:i + 1]) for i in range(len(x))]), net(x.contiguous(memory_format=torch.channels_last)),
                      net.double()(x.double()).float()]
            net.float()
        top2 = logits.topk(2, dim=1).values
        assert float((top2[:, 0] - top2[:, 1]).min()) >= margin
        assert float(torch.softmax(logits, 1).min()) >= 4e-4
        for other in others:
            assert float((other - logits).abs().max()) <= 2e-5  # 10x the 2e-6 measured, still far below the margins
            assert float((torch.softmax(other, 1) - torch.softmax(logits, 1)).abs().max()) <= 1e-6
