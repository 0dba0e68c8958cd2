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

WRONG = {
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
