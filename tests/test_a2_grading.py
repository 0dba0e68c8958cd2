"""a2_shapley's graded tests, with submissions written independently of the reference solution.

Correct code written differently gets full marks; each plausible mistake loses the points of its
own exercise only (exercise 5 accepts values that are right for the student's own functions);
calling course_lib's implementation loses the points; rebinding the check helpers does not help.
"""
import re
from pathlib import Path

import pytest

from gradeutil import cells, nbgrader_meta, run_graded, score

A2 = Path(__file__).resolve().parents[1] / "solutions" / "a2_shapley" / "a2_shapley.ipynb"
FULL = 19.0

# Correct, but written differently from the solution: all d! orders, Moebius coefficients,
# one coalition per game call, a loop for the interaction matrix.
ALT_SHAPLEY = '''
def shapley_values(game, d):
    phi = [0.0] * d
    orders = list(itertools.permutations(range(d)))
    for order in orders:
        present = [False] * d
        before = float(game(torch.tensor([present]))[0])
        for p in order:
            present[p] = True
            after = float(game(torch.tensor([present]))[0])
            phi[p] += (after - before) / len(orders)
            before = after
    return torch.tensor(phi, dtype=torch.float64)
'''
ALT_SII = '''
def shapley_interaction_index(game, d):
    subsets = [frozenset(c) for r in range(d + 1) for c in itertools.combinations(range(d), r)]
    def v(S):
        return float(game(torch.tensor([[k in S for k in range(d)]]))[0])
    m = {T: sum((-1) ** (len(T) - len(U)) * v(U) for U in subsets if U <= T) for T in subsets}
    out = torch.zeros(d, d, dtype=torch.float64)
    for T, mt in m.items():
        for i, j in itertools.permutations(sorted(T), 2):
            out[i, j] += mt / (len(T) - 1)
    return out
'''
ALT_SIV = '''
def shap_interaction_values(phi, sii):
    d = len(phi)
    out = torch.zeros(d, d, dtype=torch.float64)
    for i in range(d):
        for j in range(d):
            if i != j:
                out[i, j] = float(sii[i][j]) / 2
        out[i, i] = float(phi[i]) - sum(float(sii[i][j]) / 2 for j in range(d) if j != i)
    return out
'''
ALT_AXIOMS = '''
def efficiency_gap(game, d, phi):
    return float(sum(float(p) for p in phi)) - float(game(torch.ones(1, d, dtype=torch.bool))[0] - game(torch.zeros(1, d, dtype=torch.bool))[0])

def dummy_players(game, d, atol=1e-9):
    out = []
    for i in range(d):
        others = [k for k in range(d) if k != i]
        ok = True
        for r in range(d):
            for S in itertools.combinations(others, r):
                m = torch.zeros(2, d, dtype=torch.bool)
                m[:, list(S)] = True
                m[1, i] = True
                v = game(m)
                ok = ok and abs(float(v[1] - v[0])) <= atol
        if ok:
            out.append(i)
    return out
'''

# Plausible mistakes.
def _shapley_with(weight: str, sizes: str) -> str:
    return f'''
def shapley_values(game, d):
    phi = torch.zeros(d, dtype=torch.float64)
    for i in range(d):
        others = [k for k in range(d) if k != i]
        for r in {sizes}:
            for S in itertools.combinations(others, r):
                m = torch.zeros(2, d, dtype=torch.bool)
                m[:, list(S)] = True
                m[1, i] = True
                v = game(m)
                phi[i] += {weight} * float(v[1] - v[0])
    return phi
'''

RIGHT_WEIGHT = "math.factorial(r) * math.factorial(d - r - 1) / math.factorial(d)"
WRONG_SHAPLEY = {
    "off_by_one_weight": _shapley_with("math.factorial(r) * math.factorial(d - r) / math.factorial(d)", "range(d)"),
    "banzhaf_weight": _shapley_with("1 / 2 ** (d - 1)", "range(d)"),
    "forgot_empty_set": _shapley_with(RIGHT_WEIGHT, "range(1, d)"),
}
WRONG_SII_WEIGHT = ALT_SII.replace("mt / (len(T) - 1)", "mt / len(T)")
WRONG_SIV_NO_HALF = ALT_SIV.replace("float(sii[i][j]) / 2", "float(sii[i][j])")
WRONG_DUMMY_EMPTY_ONLY = ALT_AXIOMS.split("def dummy_players")[0] + '''
def dummy_players(game, d, atol=1e-9):
    out = []
    for i in range(d):
        m = torch.zeros(2, d, dtype=torch.bool)
        m[1, i] = True
        v = game(m)
        if abs(float(v[1] - v[0])) <= atol:
            out.append(i)
    return out
'''



FEVER_COUGH_REST = '''
fever_cough = load_dataset("fever-cough")
patient = torch.tensor([1.0, 1.0])
game_A = interventional_game(load_model("fever-cough-a"), patient, fever_cough["X"])
game_B = interventional_game(load_model("fever-cough-b"), patient, fever_cough["X"])
baseline_A = float(game_A(torch.zeros(1, 2, dtype=torch.bool))[0])
phi_A = shapley_values(game_A, 2)
Phi_A = shap_interaction_values(phi_A, shapley_interaction_index(game_A, 2))
phi_B = shapley_values(game_B, 2)
'''

WRONG_DUMMY_ZERO_VALUE = ALT_AXIOMS.split("def dummy_players")[0] + '''
def dummy_players(game, d, atol=1e-9):
    phi = shapley_values(game, d)
    return [i for i in range(d) if abs(float(phi[i])) <= atol]
'''
FORBIDDEN_SHAPLEY = '''
from course_lib.methods.shapley import exact_shapley
from course_lib.games import function_game
def shapley_values(game, d):
    return exact_shapley(function_game(lambda m: game(m), d)).values.double()
'''
WRONG_GAME_MEDIAN = '''
def interventional_game(model, x, background):
    x = torch.as_tensor(x, dtype=torch.float32)
    bg = torch.as_tensor(background, dtype=torch.float32)
    def game(masks):
        masks = torch.as_tensor(masks, dtype=torch.bool).reshape(-1, x.shape[0])
        rows = torch.where(masks, x, bg.mean(0))  # the mean row instead of the average over rows
        with torch.no_grad():
            return model(rows).double()
    return game
'''


@pytest.fixture(scope="module")
def reference():
    return run_graded(A2)


def test_reference_solution_gets_full_marks(reference):
    assert score(reference) == (FULL, FULL), {k: r.error for k, r in reference.items() if not r.passed}


def test_correct_but_different_code_gets_full_marks():
    res = run_graded(A2, {"shapley_values": ALT_SHAPLEY, "interaction_index": ALT_SII,
                          "shap_interaction_values": ALT_SIV, "axioms": ALT_AXIOMS})
    assert score(res) == (FULL, FULL), {k: r.error for k, r in res.items() if not r.passed}


def _only_failing(res, failing):
    assert not res[failing].passed, f"{failing} should fail"
    assert res[failing].error.startswith("AssertionError"), res[failing].error
    others = {k: r.error for k, r in res.items() if k != failing and not r.passed}
    assert not others, f"the mistake also cost the points of {others}: an upstream mistake must be counted once"


@pytest.mark.parametrize("mistake", sorted(WRONG_SHAPLEY))
def test_wrong_shapley_loses_the_points_of_exercise_1_only(mistake):
    _only_failing(run_graded(A2, {"shapley_values": WRONG_SHAPLEY[mistake]}), "test_shapley_values")


def test_wrong_interactions_lose_their_own_points_only():
    _only_failing(run_graded(A2, {"interaction_index": WRONG_SII_WEIGHT}), "test_interaction_index")
    _only_failing(run_graded(A2, {"shap_interaction_values": WRONG_SIV_NO_HALF}), "test_shap_interaction_values")


@pytest.mark.parametrize("code", [WRONG_DUMMY_EMPTY_ONLY, WRONG_DUMMY_ZERO_VALUE], ids=["empty-set-only", "zero-shapley-value"])
def test_wrong_dummy_checks_lose_points(code):
    _only_failing(run_graded(A2, {"axioms": code}), "test_axioms")


def test_a_wrong_game_loses_the_points_of_exercise_5():
    _only_failing(run_graded(A2, {"fever_cough": WRONG_GAME_MEDIAN + FEVER_COUGH_REST}), "test_fever_cough")


def test_calling_course_lib_loses_the_points():
    res = run_graded(A2, {"shapley_values": FORBIDDEN_SHAPLEY})
    assert not res["test_shapley_values"].passed and "write the method yourself" in res["test_shapley_values"].error


def test_rebinding_the_check_helpers_does_not_help():
    stub = "def shapley_values(game, d):\n    return torch.zeros(d, dtype=torch.float64)\ncheck = check_close = check_shape = lambda *a, **k: None\n"
    res = run_graded(A2, {"shapley_values": stub})
    assert not res["test_shapley_values"].passed


def test_release_is_zero_without_crashing():
    stub = "raise NotImplementedError()"
    overrides = {}
    for c in cells(A2):
        m = nbgrader_meta(c)
        if c.cell_type == "code" and m.get("solution"):
            overrides[m["grade_id"]] = re.sub(r"### BEGIN SOLUTION.*?### END SOLUTION", stub, c.source, flags=re.S)
    res = run_graded(A2, overrides)
    assert score(res)[0] == 0, {k: r.passed for k, r in res.items()}
